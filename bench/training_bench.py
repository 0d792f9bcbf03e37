"""Training benchmarks, written to docs/benchmarks.md:

1. The training DAG via ``dag.test()`` on N rows vs a plain Python script doing the same ML steps
   against the same MLflow server (the floor), in one run, as a ratio. Target: <= 1.2x. Beside
   it, the same chain of nine tasks doing nothing (bench/dags/noop_chain.py): Airflow's own cost.
2. An unchanged re-run (same data, code, params) vs the cold run, as a ratio. Target: <= 10 %.

Each run is a fresh process (imports included, as a scheduler's worker pays them); the DAG's
task span (first task start → last task end) is reported too. Starts its own SeaweedFS and MLflow.

    python bench/training_bench.py [--rows 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts"), str(REPO / "bench")]

from report import write_section  # noqa: E402
from services import bench_services  # noqa: E402


def run_json(cmd: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with bench_services("mlops-bench-") as services:
        work = services.work
        env = {**os.environ, **services.connections(),
               "MLFLOW_TRACKING_URI": services.mlflow_url,
               "MLOPS_S3_ENDPOINT_URL": services.s3_url,
               "AWS_ACCESS_KEY_ID": services.access_key,
               "AWS_SECRET_ACCESS_KEY": services.secret_key,
               "AIRFLOW_HOME": str(work / "airflow"),
               "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
               "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
               "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{work / 'airflow.db'}",
               "MLOPS_TASK_RETRIES": "0", "GX_ANALYTICS_ENABLED": "False",
               "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True,
                       capture_output=True)
        import shutil

        import yaml

        from include.mlops_core.config import deep_merge
        from include.mlops_core.demo_data import write_partitions

        store = services.store()
        day = date(2025, 6, 1)
        write_partitions(store, "s3://mlops-data/bench", day, 1, rows=args.rows, fmt="parquet")
        # A dataset config per round, as a deployment declares one (a run's conf may name the
        # dataset, not its source or model name: docs/security.md).
        datasets = work / "datasets"
        shutil.copytree(REPO / "include" / "datasets", datasets)
        raw = yaml.safe_load((datasets / "churn_demo.yaml").read_text())
        for i in range(args.repeat):
            (datasets / f"bench_dag_{i}.yaml").write_text(yaml.safe_dump(deep_merge(raw, {
                "source_uri": "s3://mlops-data/bench", "model_name": f"bench_dag_{i}"})))
        env["MLOPS_DATASETS_DIR"] = str(datasets)

        plain, plain_unchanged, cold, unchanged, noop = [], [], [], [], []
        for i in range(args.repeat):
            plain_cmd = [sys.executable, str(REPO / "bench/plain_pipeline.py"), "--model",
                         f"bench_plain_{i}", "--source", "s3://mlops-data/bench", "--date",
                         day.isoformat()]
            plain.append(run_json(plain_cmd, env))
            plain_unchanged.append(run_json(plain_cmd, env))
            assert list(plain_unchanged[-1]["steps"]) == ["check_changed"]
            conf = json.dumps({"dataset": f"bench_dag_{i}"})
            dag_cmd = [sys.executable, str(REPO / "bench/dag_run.py"), "--logical-date",
                       "2025-06-02", "--conf", conf]
            cold.append(run_json(dag_cmd, env))
            unchanged.append(run_json(dag_cmd, env))
            assert cold[-1]["state"] == "success" and unchanged[-1]["tasks"]["train"][0] == "skipped"
            # Airflow's own cost: the same chain of nine tasks doing nothing.
            noop_env = {**env, "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "bench/dags")}
            noop.append(run_json(dag_cmd[:2] + ["--dag-folder", str(REPO / "bench/dags"),
                                               "--dag-id", "noop_chain", "--logical-date",
                                               f"2025-06-{2 + i:02d}"], noop_env))
            assert noop[-1]["state"] == "success"
            print(f"round {i + 1}: plain {plain[-1]['wall_s']:.1f}s, DAG cold {cold[-1]['wall_s']:.1f}s "
                  f"(tasks {cold[-1]['task_span_s']:.1f}s), unchanged {unchanged[-1]['wall_s']:.1f}s "
                  f"(tasks {unchanged[-1]['task_span_s']:.1f}s)", flush=True)

    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    p, c, u = med(plain, "wall_s"), med(cold, "wall_s"), med(unchanged, "wall_s")
    pu = med(plain_unchanged, "wall_s")
    ct, ut = med(cold, "task_span_s"), med(unchanged, "task_span_s")
    n, nt = med(noop, "wall_s"), med(noop, "task_span_s")
    n_first = statistics.median(r["tasks"]["check_changed"][1] for r in noop)
    n_rest = statistics.median(statistics.median(d for k, (_, d) in r["tasks"].items()
                                                 if k != "check_changed") for r in noop)
    steps = {k: statistics.median(r["steps"][k] for r in plain) for k in plain[0]["steps"]}
    tasks = {k: statistics.median(r["tasks"][k][1] for r in cold) for k in cold[0]["tasks"]}
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core machine; {args.rows:,} rows "
        f"x 12 columns (Parquet, one partition), median of {args.repeat} rounds; every run a fresh "
        "process against the same local MLflow server (HTTP) and SeaweedFS.",
        "",
        "| measure | seconds | ratio | target |",
        "|---|---|---|---|",
        f"| plain script, same ML steps (floor) | {p:.1f} | 1.00 | |",
        f"| training DAG via dag.test(), process wall | {c:.1f} | {c / p:.2f}x | <= 1.2x |",
        f"| training DAG, task span only | {ct:.1f} | {ct / p:.2f}x | |",
        f"| Airflow's own cost: the same nine-task chain, tasks doing nothing, dag.test() "
        f"process wall | {n:.1f} | {n / p:.2f}x | |",
        f"| the same, task span (first task {n_first:.2f} s, each other one {n_rest:.2f} s) | "
        f"{nt:.1f} | {nt / p:.2f}x | |",
        f"| unchanged re-run, process wall | {u:.1f} | {u / c:.1%} of cold | <= 10 % |",
        f"| unchanged re-run, task span | {ut:.1f} | {ut / ct:.1%} of cold | |",
        f"| unchanged re-run, plain script (the pipeline's own work) | {pu:.1f} | "
        f"{pu / p:.1%} of its cold run | <= 10 % |",
        "",
        "Plain script steps (s): " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()),
        "",
        "DAG task durations, cold (s): " + ", ".join(f"{k} {v:.2f}" for k, v in tasks.items()),
        "",
        "The no-op chain (bench/dags/noop_chain.py) is what `dag.test()` costs before any task "
        "does work: importing Airflow, parsing, the run's database rows, and the in-process "
        "Execution API that every task's start and end go through (its first request builds "
        "the API app). That floor alone is "
        f"{n / p:.2f}x the plain script's time.",
    ]
    write_section("Training DAG vs plain script; unchanged re-run", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
