"""Drift monitor: on each ``predictions`` event, check the scored day against the champion's
training data → ``drift_detected`` Asset (which starts the training DAG) when it drifted.

Evidently 0.7's default tests on all rows, per column and for the model output; the report is in
S3 and on the scoring run in MLflow. Run it by hand with ``partition_date`` to re-check a day.
See docs/monitoring.md.
"""

from airflow.sdk import DAG
from pendulum import datetime

from mlops_airflow.assets import DRIFT_DETECTED, PREDICTIONS
from mlops_airflow.dag_defaults import default_args, run_params
from mlops_airflow.notifiers import alerts_for
from mlops_airflow.operators.monitoring import DriftCheckOperator, PublishAlertOperator

with DAG(
    dag_id="drift_monitor",
    schedule=[PREDICTIONS],
    start_date=datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["mlops", "monitoring"],
    default_args=default_args(),
    # A predictions event's extra overrides dataset, model_name and the day.
    params=run_params("drift_monitor", partition_date="Check this scored day (YYYY-MM-DD)"),
):
    drift = DriftCheckOperator(task_id="check_drift")
    PublishAlertOperator(task_id="drift_detected", result=drift.output, asset=DRIFT_DETECTED,
                         on_success_callback=alerts_for("drift_detected"))
