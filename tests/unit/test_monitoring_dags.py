"""dags/: the monitoring DAGs (batch_scoring, drift_monitor, performance_monitor), the Assets that
chain them, and the training DAG's asset-or-time schedule."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
from pendulum import datetime

DAGS = Path(__file__).resolve().parents[2] / "dags"
MONITORING = ["batch_scoring", "drift_monitor", "performance_monitor"]


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    """Parsed once, as production does: tests/conftest.py sets MLOPS_TASK_RETRIES=0 for fast
    integration runs, so it is unset while parsing here (DAG files read it at parse time)."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLOPS_TASK_RETRIES", raising=False)
        env.delenv("MLOPS_RETRY_DELAY_SECONDS", raising=False)
        return DagBag(dag_folder=str(DAGS))


def serialized(dag: Any) -> Any:
    """The DAG as the scheduler and API server see it."""
    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


def names(assets: Any) -> set[str]:
    return {asset.name for asset in assets}


def condition_assets(dag: Any) -> set[str]:
    """Names of the assets in the DAG's schedule condition, as the scheduler reads it."""
    return names(asset for _, asset in serialized(dag).timetable.asset_condition.iter_assets())


def downstream(dag: Any, task_id: str) -> set[str]:
    return set(dag.get_task(task_id).downstream_task_ids)


# -- loading ----------------------------------------------------------------------------------------
def test_monitoring_dags_load_without_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert set(MONITORING) <= set(dagbag.dag_ids)
    assert "training" in dagbag.dag_ids


@pytest.mark.parametrize("dag_id", MONITORING)
def test_monitoring_dag_has_tags_docs_and_retries(dagbag: DagBag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert "mlops" in dag.tags
    assert dag.doc_md and dag.doc_md.strip()
    assert dag.default_args["retries"] >= 1
    for task in dag.tasks:
        assert task.retries >= 1, f"{dag_id}.{task.task_id}"
        assert task.retry_delay >= timedelta(seconds=30)


@pytest.mark.parametrize("dag_id", MONITORING)
def test_default_params_validate(dagbag: DagBag, dag_id: str) -> None:
    params = serialized(dagbag.dags[dag_id]).params.deep_merge({}).validate()
    # The default policy lets a run pick the day, nothing else (docs/security.md).
    assert params == {"dataset": "churn_demo", "partition_date": None}


# -- batch_scoring ----------------------------------------------------------------------------------
def test_batch_scoring_emits_the_predictions_asset(dagbag: DagBag) -> None:
    dag = dagbag.dags["batch_scoring"]
    assert dag.task_ids == ["score"]
    assert names(dag.get_task("score").outlets) == {"predictions"}
    assert serialized(dag).timetable.summary == "0 0 * * *"  # daily


# -- drift_monitor ----------------------------------------------------------------------------------
def test_drift_monitor_runs_on_predictions_and_emits_drift_detected(dagbag: DagBag) -> None:
    dag = dagbag.dags["drift_monitor"]
    assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"
    assert condition_assets(dag) == {"predictions"}
    assert sorted(dag.task_ids) == ["check_drift", "drift_detected"]
    assert downstream(dag, "check_drift") == {"drift_detected"}
    assert names(dag.get_task("drift_detected").outlets) == {"drift_detected"}
    assert dag.get_task("check_drift").outlets == []


# -- performance_monitor ----------------------------------------------------------------------------
def test_performance_monitor_graph(dagbag: DagBag) -> None:
    dag = dagbag.dags["performance_monitor"]
    assert sorted(dag.task_ids) == ["ab_decision", "auto_rollback", "live_performance",
                                    "performance_degraded", "smoke_test"]
    assert downstream(dag, "live_performance") == {"performance_degraded", "ab_decision",
                                                   "auto_rollback"}
    # The rollback comes before the alert, so the retrain it starts sees the restored champion;
    # the alert goes out whatever the rollback did.
    assert downstream(dag, "auto_rollback") == {"smoke_test", "performance_degraded"}
    assert dag.get_task("performance_degraded").trigger_rule == "all_done_min_one_success"
    assert names(dag.get_task("performance_degraded").outlets) == {"performance_degraded"}
    assert dag.get_task("ab_decision").pool == "mlops_promotion"
    assert dag.get_task("auto_rollback").pool == "mlops_promotion"
    assert set(dag.get_task("live_performance").alert_task_ids) == {
        "auto_rollback", "smoke_test", "performance_degraded"}
    assert dag.get_task("live_performance").pool == "default_pool"
    assert dag.get_task("ab_decision").outlets == []


def test_rollback_graph_and_form(dagbag: DagBag) -> None:
    dag = dagbag.dags["rollback"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # by hand (or REST) only
    assert dag.is_paused_upon_creation is False  # a triggered rollback never waits queued
    assert downstream(dag, "rollback") == {"smoke_test"}
    assert dag.get_task("rollback").pool == "mlops_promotion"
    assert set(dag.params) >= {"dataset", "to_version", "reason"}
    assert "container" not in dag.params and "gate" not in dag.params


# -- training: daily, or on an alert ----------------------------------------------------------------
def test_training_runs_daily_or_on_a_monitoring_alert(dagbag: DagBag) -> None:
    training = dagbag.dags["training"]
    assert type(training.timetable).__name__ == "AssetOrTimeSchedule"
    condition = training.timetable.asset_condition
    assert type(condition).__name__ == "AssetAny"  # either alert suffices
    assert names(condition.objects) == {"drift_detected", "performance_degraded"}

    timetable = serialized(training).timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert condition_assets(training) == {"drift_detected", "performance_degraded"}
    inner = timetable.timetable
    assert type(inner).__name__ == "CronDataIntervalTimetable"
    assert inner.summary == "0 0 * * *"
    # the time part keeps the daily data-interval semantics: the run after day D reads [D, D+1)
    interval = timetable.infer_manual_data_interval(run_after=datetime(2025, 1, 2, 10, tz="UTC"))
    assert (interval.start, interval.end) == (datetime(2025, 1, 1, tz="UTC"),
                                              datetime(2025, 1, 2, tz="UTC"))


def test_the_assets_chain_the_dags(dagbag: DagBag) -> None:
    """Every asset a DAG waits for is emitted by a task of another DAG in this folder."""
    produced = {asset.name: dag_id for dag_id, dag in dagbag.dags.items() for task in dag.tasks
                for asset in task.outlets}
    assert produced == {"predictions": "batch_scoring", "drift_detected": "drift_monitor",
                        "performance_degraded": "performance_monitor"}
    for dag_id in ("drift_monitor", "training"):
        for name in condition_assets(dagbag.dags[dag_id]):
            assert produced[name] != dag_id
