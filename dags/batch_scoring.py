"""Batch scoring: score one day with @champion (shadow / canary @challenger) → predictions Asset.

Each run scores the last day of its data interval (or the ``partition_date`` Param) and commits
``<artifacts_uri>/<model>/predictions/date=<day>/``; a re-run replaces it. The ``predictions``
Asset event starts drift_monitor. See docs/monitoring.md.
"""

import os
from datetime import timedelta

from airflow.sdk import DAG, CronDataIntervalTimetable, Param
from pendulum import datetime

from mlops.operators.monitoring import BatchScoreOperator

with DAG(
    dag_id="batch_scoring",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["mlops", "scoring"],
    default_args={
        "retries": int(os.environ.get("MLOPS_TASK_RETRIES", "2")),
        "retry_delay": timedelta(seconds=int(os.environ.get("MLOPS_RETRY_DELAY_SECONDS", "60"))),
        "retry_exponential_backoff": True,
    },
    params={
        "dataset": Param("churn_demo", type="string", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                         description="Dataset config: include/datasets/<dataset>.yaml"),
        "artifacts_uri": Param(os.environ.get("MLOPS_ARTIFACTS_URI", "s3://mlops"), type="string",
                               description="Where predictions and reports go"),
        "partition_date": Param(None, type=["null", "string"], format="date",
                                description="Score this day (YYYY-MM-DD) instead of the interval's"),
        "model_name": Param(None, type=["null", "string"],
                            description="Registered model name (default: the dataset name)"),
        "monitoring": Param({}, type="object",
                            description='Overrides, e.g. {"scoring_uri": "s3://bucket/new-rows"}'),
        "rollout": Param({}, type="object",
                         description='Overrides, e.g. {"mode": "canary", "canary_share": 0.1}'),
    },
):
    BatchScoreOperator(task_id="score")
