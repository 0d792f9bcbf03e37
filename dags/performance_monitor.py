"""Performance monitor: delayed labels → live metrics per model version → alert below the floor
(``performance_degraded`` Asset, which starts the training DAG) → A/B decision on the challenger.

Each run handles the day ``monitoring.label_delay_days`` before the end of its data interval (or
the ``partition_date`` Param). See docs/monitoring.md.
"""

from airflow.sdk import DAG, CronDataIntervalTimetable
from pendulum import datetime

from mlops.assets import PERFORMANCE_DEGRADED
from mlops.dag_defaults import default_args, run_params
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
    default_args=default_args(),
    params=run_params("performance_monitor",
                      partition_date="Join the labels of this day (YYYY-MM-DD)"),
):
    live = LivePerformanceOperator(task_id="live_performance")
    PublishAlertOperator(task_id="performance_degraded", result=live.output,
                         asset=PERFORMANCE_DEGRADED)
    live >> ABDecisionOperator(task_id="ab_decision")
