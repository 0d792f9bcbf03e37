"""Drift monitor: on each ``predictions`` event, check the scored day against the champion's
training data → ``drift_detected`` Asset (which starts the training DAG) when it drifted.

Evidently 0.7's default tests on all rows, per column and for the model output; the report is in
S3 and on the scoring run in MLflow. Run it by hand with ``partition_date`` to re-check a day.
See docs/monitoring.md.
"""

import os
from datetime import timedelta

from airflow.sdk import DAG, Param
from pendulum import datetime

from mlops.assets import DRIFT_DETECTED, PREDICTIONS
from mlops.operators.monitoring import DriftCheckOperator, PublishAlertOperator

with DAG(
    dag_id="drift_monitor",
    schedule=[PREDICTIONS],
    start_date=datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["mlops", "monitoring"],
    default_args={
        "retries": int(os.environ.get("MLOPS_TASK_RETRIES", "2")),
        "retry_delay": timedelta(seconds=int(os.environ.get("MLOPS_RETRY_DELAY_SECONDS", "60"))),
        "retry_exponential_backoff": True,
    },
    params={
        "dataset": Param("churn_demo", type="string", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                         description="Dataset config (an event's extra overrides it)"),
        "artifacts_uri": Param(os.environ.get("MLOPS_ARTIFACTS_URI", "s3://mlops"), type="string",
                               description="Where predictions and reports are"),
        "partition_date": Param(None, type=["null", "string"], format="date",
                                description="Check this scored day (YYYY-MM-DD)"),
        "model_name": Param(None, type=["null", "string"],
                            description="Registered model name (default: the dataset name)"),
        "monitoring": Param({}, type="object",
                            description='Overrides, e.g. {"drift_share": 0.3}'),
    },
):
    drift = DriftCheckOperator(task_id="check_drift")
    PublishAlertOperator(task_id="drift_detected", result=drift.output, asset=DRIFT_DETECTED)
