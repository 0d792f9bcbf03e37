"""Batch scoring: score one day with @champion (shadow / canary @challenger) → predictions Asset.

Each run scores the last day of its data interval (or the ``partition_date`` Param) and commits
``<artifacts_uri>/<model>/predictions/date=<day>/``; a re-run replaces it. The ``predictions``
Asset event starts drift_monitor. See docs/monitoring.md.
"""

from airflow.sdk import DAG, CronDataIntervalTimetable
from pendulum import datetime

from mlops_airflow.dag_defaults import default_args, run_params
from mlops_airflow.operators.monitoring import BatchScoreOperator

with DAG(
    dag_id="batch_scoring",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["mlops", "scoring"],
    default_args=default_args(),
    params=run_params("batch_scoring",
                      partition_date="Score this day (YYYY-MM-DD) instead of the interval's"),
):
    BatchScoreOperator(task_id="score")
