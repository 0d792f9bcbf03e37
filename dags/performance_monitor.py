"""Performance monitor: delayed labels → live metrics per model version → alert below the floor
(``performance_degraded`` Asset, which starts the training DAG) → A/B decision on the challenger.

Each run handles the day ``monitoring.label_delay_days`` before the end of its data interval (or
the ``partition_date`` Param). See docs/monitoring.md.
"""

import os
from datetime import timedelta

from airflow.sdk import DAG, CronDataIntervalTimetable, Param
from pendulum import datetime

from mlops.assets import PERFORMANCE_DEGRADED
from mlops.operators.monitoring import (
    ABDecisionOperator,
    LivePerformanceOperator,
    PublishAlertOperator,
)

with DAG(
    dag_id="performance_monitor",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["mlops", "monitoring"],
    default_args={
        "retries": int(os.environ.get("MLOPS_TASK_RETRIES", "2")),
        "retry_delay": timedelta(seconds=int(os.environ.get("MLOPS_RETRY_DELAY_SECONDS", "60"))),
        "retry_exponential_backoff": True,
    },
    params={
        "dataset": Param("churn_demo", type="string", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                         description="Dataset config: include/datasets/<dataset>.yaml"),
        "artifacts_uri": Param(os.environ.get("MLOPS_ARTIFACTS_URI", "s3://mlops"), type="string",
                               description="Where predictions, live metrics and cards go"),
        "partition_date": Param(None, type=["null", "string"], format="date",
                                description="Join the labels of this day (YYYY-MM-DD)"),
        "model_name": Param(None, type=["null", "string"],
                            description="Registered model name (default: the dataset name)"),
        "monitoring": Param({}, type="object",
                            description='Overrides, e.g. {"labels_uri": "s3://bucket/labels"}'),
        "rollout": Param({}, type="object",
                         description='Overrides, e.g. {"min_labelled_rows": 500}'),
        "gate": Param({}, type="object", description="Gate overrides for the A/B decision"),
    },
):
    live = LivePerformanceOperator(task_id="live_performance")
    PublishAlertOperator(task_id="performance_degraded", result=live.output,
                         asset=PERFORMANCE_DEGRADED)
    live >> ABDecisionOperator(task_id="ab_decision")
