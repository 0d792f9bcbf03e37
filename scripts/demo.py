"""The monitoring loop on the local stack (``./deploy.sh demo``, after ``./deploy.sh local``).

1. score the day before yesterday (normal data): batch_scoring → predictions → drift_monitor
   (no drift, the ``drift_detected`` task is skipped);
2. join that day's delayed labels: performance_monitor logs live metrics to MLflow;
3. write a drifted partition for today and score it: drift_monitor finds the drift and emits
   ``drift_detected``, which starts the training DAG; it retrains on the recent days and either
   promotes a new champion or refuses it with the gate's reasons.

Every step goes through the real scheduler; the script only triggers scoring and labels over the
REST API and follows what the Asset schedules start. Run ids are fixed per day, so a second
``./deploy.sh demo`` shows the same runs instead of adding new ones.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summary import AirflowApi, follow, log_lines, task_instances, wait_for_dag  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOURCE, LABELS = "s3://mlops-data/churn", "s3://mlops-data/churn-labels"
TIMEOUT = float(os.environ.get("MLOPS_DEPLOY_TIMEOUT", "900"))


def say(message: str) -> None:
    print(message, flush=True)


def store() -> Any:
    from include.mlops_core.storage import ObjectStore

    return ObjectStore.from_env()


def trigger(api: AirflowApi, dag_id: str, run_id: str, **conf: Any) -> str:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"
    if api.request("GET", path).status_code == 200:
        say(f"  {dag_id} run {run_id!r} exists already; showing it")
        return run_id
    api.json("POST", f"/api/v2/dags/{dag_id}/dagRuns", ok=(200, 201), json={
        "dag_run_id": run_id, "logical_date": None, "conf": conf, "note": "./deploy.sh demo"})
    say(f"  triggered {dag_id} run {run_id!r}")
    return run_id


def consumer_run(api: AirflowApi, dag_id: str, day: date, timeout: float = 120) -> dict | None:
    """The asset-triggered run of ``dag_id`` whose triggering event is about ``day`` (other runs,
    e.g. from the daily scoring of yesterday, are about other days)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = api.json("GET", f"/api/v2/dags/{dag_id}/dagRuns",
                        params={"limit": 50, "order_by": "-run_after"})["dag_runs"]
        for run in runs:
            if run["run_type"] != "asset_triggered":
                continue
            response = api.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/"
                                          f"{quote(run['dag_run_id'], safe='')}/upstreamAssetEvents")
            if response.status_code != 200:
                # Airflow 3.3.2 answers 500 here while a run the event created is still queued
                # (its start_date is null); it answers once that run has started.
                continue
            if any((e.get("extra") or {}).get("partition_date") == day.isoformat()
                   for e in response.json().get("asset_events", [])):
                return run
        time.sleep(2)
    return None


def grep_log(api: AirflowApi, dag_id: str, run_id: str, task_id: str, *needles: str) -> list[str]:
    ti = next((t for t in task_instances(api, dag_id, run_id) if t["task_id"] == task_id), None)
    if ti is None or not ti.get("try_number"):
        return []
    lines = log_lines(api, dag_id, run_id, ti) or []
    return [line.strip() for line in lines if any(n in line for n in needles)]


def states(api: AirflowApi, dag_id: str, run_id: str) -> str:
    return ", ".join(f"{t['task_id']}={t['state']}" for t in task_instances(api, dag_id, run_id))


def scored_and_checked(api: AirflowApi, day: date) -> None:
    run = trigger(api, "batch_scoring", f"demo_score__{day}", partition_date=day.isoformat())
    follow(api, "batch_scoring", run, TIMEOUT, quiet_if_finished=True)
    say(f"  batch_scoring: {states(api, 'batch_scoring', run)}")
    drift = consumer_run(api, "drift_monitor", day)
    if drift is None:
        say("  no drift_monitor run appeared (was the predictions run new?)")
        return
    follow(api, "drift_monitor", drift["dag_run_id"], TIMEOUT, quiet_if_finished=True)
    say(f"  drift_monitor {drift['dag_run_id']}: {states(api, 'drift_monitor', drift['dag_run_id'])}")
    for line in grep_log(api, "drift_monitor", drift["dag_run_id"], "check_drift", "Drift: "):
        say(f"    {line[line.find('Drift: '):]}")


def unpause(api: AirflowApi, *dag_ids: str) -> None:
    for dag_id in dag_ids:
        if wait_for_dag(api, dag_id, timeout=300).get("is_paused"):
            api.json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
            say(f"  unpaused {dag_id}")


def main() -> int:
    from include.mlops_core.demo_data import write_labels, write_partitions

    password = os.environ.get("MLOPS_AIRFLOW_OPERATOR_PASSWORD")
    if not password:
        raise SystemExit("MLOPS_AIRFLOW_OPERATOR_PASSWORD is not set: run ./deploy.sh demo")
    api = AirflowApi(os.environ.get("MLOPS_AIRFLOW_URL", "http://127.0.0.1:8080"), "operator",
                     password)
    mlflow = os.environ.get("MLOPS_MLFLOW_URL", "http://127.0.0.1:5000")
    today = datetime.now(UTC).date()
    normal_day, drifted_day = today - timedelta(days=2), today
    s3 = store()
    say(f"Delayed labels for {today - timedelta(days=3)}..{today - timedelta(days=1)} → {LABELS}; "
        f"a drifted partition for {drifted_day} → {SOURCE}")
    write_labels(s3, LABELS, today - timedelta(days=3), 3)
    write_partitions(s3, SOURCE, drifted_day, 1, drift=1.0)
    write_labels(s3, LABELS, drifted_day, 1, drift=1.0)
    # A paused DAG's runs stay queued, so the loop's DAGs are unpaused; the daily schedule of
    # batch_scoring then also scores yesterday (and drift_monitor checks it): harmless.
    unpause(api, "drift_monitor", "batch_scoring")

    say(f"\n1. Score {normal_day} (normal data) → drift_monitor")
    scored_and_checked(api, normal_day)
    unpause(api, "performance_monitor")  # its daily run joins the labels of {normal_day} too

    say(f"\n2. Labels of {normal_day} arrived → performance_monitor (live metrics in MLflow)")
    perf = trigger(api, "performance_monitor", f"demo_labels__{normal_day}",
                   partition_date=normal_day.isoformat())
    follow(api, "performance_monitor", perf, TIMEOUT, quiet_if_finished=True)
    say(f"  performance_monitor: {states(api, 'performance_monitor', perf)}")
    for line in grep_log(api, "performance_monitor", perf, "live_performance", "Live metrics",
                         "ALERT"):
        say(f"    {line}")

    say(f"\n3. Score {drifted_day} (drifted data) → drift_monitor → drift_detected → training")
    scored_and_checked(api, drifted_day)
    retrain = consumer_run(api, "training", drifted_day, timeout=60)
    if retrain is None:
        say("  no drift-triggered training run (no drift found, or this demo ran before: see "
            "the training DAG's runs)")
        return 0
    run_id = retrain["dag_run_id"]
    follow(api, "training", run_id, TIMEOUT, quiet_if_finished=True)
    say(f"  training {run_id}: {states(api, 'training', run_id)}")
    for task, needles in (("check_changed", ("Started by", "Skipping training", "cooldown")),
                          ("gate", ("Gate APPROVED", "Gate REJECTED")),
                          ("promote", ("Promoted",))):
        for line in grep_log(api, "training", run_id, task, *needles):
            say(f"    {line}")
    say("\nWhere to look:")
    airflow = api.url
    say(f"  Airflow grid: {airflow}/dags/drift_monitor  {airflow}/dags/training  "
        f"{airflow}/dags/batch_scoring")
    say(f"  Drift report: s3://mlops/churn_demo/drift/date={drifted_day}/report.html (and on the "
        "scoring run in MLflow, artifact drift/report.html)")
    say(f"  MLflow: {mlflow} → experiment churn_demo: training runs (tag mlops.trigger), "
        "batch_scoring runs (drift.* metrics), live-v<version> runs (live.* time series)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
