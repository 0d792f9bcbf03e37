"""Rollback: move ``@champion`` back → smoke-test the restored version where it is served.

Triggered by hand (the Airflow UI's trigger form, or REST: docs/rest-api.md). Without
``to_version`` the champion goes back to the one it replaced, as the audit trail records it;
with ``to_version`` to that version, which must have been ``@champion`` before. ``reason`` goes into the
audit record, the version's tags and the alert. ``performance_monitor`` rolls back on its own
where the dataset's ``rollback.auto_window_hours`` allows it. Runbook: docs/runbooks/rollback.md.
"""

from airflow.sdk import DAG
from pendulum import datetime

from mlops_airflow.dag_defaults import default_args, run_params
from mlops_airflow.notifiers import alerts_for
from mlops_airflow.operators.rollback import RollbackOperator, ServingSmokeTestOperator

with DAG(
    dag_id="rollback",
    schedule=None,
    # Runs only when someone triggers it, so it is never paused: a rollback triggered at 3 a.m.
    # must not sit queued behind DAGS_ARE_PAUSED_AT_CREATION.
    is_paused_upon_creation=False,
    start_date=datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["mlops", "rollback"],
    default_args=default_args(),
    params=run_params("rollback"),
):
    rolled_back = RollbackOperator(task_id="rollback",
                                   on_success_callback=alerts_for("rolled_back"))
    ServingSmokeTestOperator(task_id="smoke_test", rollback=rolled_back.output)
