"""Performance monitor: delayed labels → live metrics per model version → below the floor: roll
a champion promoted within ``rollback.auto_window_hours`` back (and smoke-test the restored one),
then alert (``performance_degraded`` Asset, which starts the training DAG) → A/B decision on the
challenger.

Each run handles the day ``monitoring.label_delay_days`` before the end of its data interval (or
the ``partition_date`` Param). See docs/monitoring.md.
"""

from airflow.sdk import DAG, CronDataIntervalTimetable
from pendulum import datetime

from mlops_airflow.assets import PERFORMANCE_DEGRADED
from mlops_airflow.dag_defaults import default_args, run_params
from mlops_airflow.notifiers import alerts_for
from mlops_airflow.operators.monitoring import (
    ABDecisionOperator,
    LivePerformanceOperator,
    PublishAlertOperator,
)
from mlops_airflow.operators.rollback import RollbackOperator, ServingSmokeTestOperator

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
    live = LivePerformanceOperator(task_id="live_performance",
                                   alert_task_ids=("auto_rollback", "smoke_test",
                                                   "performance_degraded"))
    # Roll back before the alert: the retrain it starts then compares with the restored champion.
    rolled_back = RollbackOperator(task_id="auto_rollback", automatic=True, live=live.output,
                                   on_success_callback=alerts_for("rolled_back"))
    ServingSmokeTestOperator(task_id="smoke_test", rollback=rolled_back.output,
                             conf_keys="performance_monitor")
    # Retrain whatever the rollback did (even if it failed): the alert is about the data.
    alert = PublishAlertOperator(task_id="performance_degraded", result=live.output,
                                 asset=PERFORMANCE_DEGRADED,
                                 trigger_rule="all_done_min_one_success")
    rolled_back >> alert
    live >> ABDecisionOperator(task_id="ab_decision")
