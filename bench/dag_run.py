"""One training DAG run via ``dag.test()`` in a fresh process; prints one JSON line with the
wall time of the process and the task span (first task start → last task end). ``--dag-folder``
and ``--dag-id`` run another DAG (bench/dags/noop_chain.py: Airflow's own cost).

The Airflow environment (AIRFLOW_HOME with a migrated DB, Connections as AIRFLOW_CONN_*) comes
from the caller, bench/training_bench.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins")]


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser()
    parser.add_argument("--logical-date", required=True)
    parser.add_argument("--conf", default="{}")
    parser.add_argument("--dag-folder", default=str(REPO / "dags"))
    parser.add_argument("--dag-id", default="training")
    args = parser.parse_args()

    from airflow.dag_processing.dagbag import DagBag
    from pendulum import parse

    dag = DagBag(dag_folder=args.dag_folder).get_dag(args.dag_id)
    dag_run = dag.test(logical_date=parse(args.logical_date), run_conf=json.loads(args.conf))
    tis = [ti for ti in dag_run.get_task_instances() if ti.start_date and ti.end_date]
    span = (max(ti.end_date for ti in tis) - min(ti.start_date for ti in tis)).total_seconds()
    print(json.dumps({
        "state": str(dag_run.state), "wall_s": round(time.perf_counter() - started, 3),
        "task_span_s": round(span, 3),
        "tasks": {ti.task_id: [str(ti.state), round(ti.duration or 0, 3)]
                  for ti in dag_run.get_task_instances()},
    }))


if __name__ == "__main__":
    main()
