"""Rolling @champion back (include/mlops_core/rollback.py): to the champion before it from the audit
trail that promotions write, or to a version by hand; refused without a previous champion or for
a version that never passed the gate; a retry completes the same record; the automatic rule.
MLflow on SQLite, a local store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.mlops_core import pipeline, rollback, tracking
from include.mlops_core.errors import RollbackError
from include.mlops_core.storage import ObjectStore
from tests.unit.helpers import churn_config


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One SQLite registry for the module (creating one costs seconds); each test its own
    model, named after the test."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
                           registry_uri=f"sqlite:///{folder / 'mlflow.db'}")


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return request.node.name.removeprefix("test_")[:60]


def _stage(client: Any, tmp_path: Path, run_id: str, name: str) -> pipeline.RunContext:
    return pipeline.RunContext(config=churn_config(model_name=name), store=ObjectStore(),
                          client=client, mlflow_run_id=run_id,
                          artifacts_uri=str(tmp_path / "artifacts"), run_key="2025-01-02T000000")


def _version(client: Any, name: str, *, approved: bool = True) -> tuple[str, str]:
    experiment = tracking.ensure_experiment(client, name)
    run_id = client.create_run(experiment).info.run_id
    client.set_tag(run_id, "mlops.gate", "approved" if approved else "rejected")
    try:
        client.create_registered_model(name)
    except Exception:  # noqa: BLE001 - exists already
        pass
    mv = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    return run_id, str(mv.version)


def _promoted_chain(client: Any, tmp_path: Path, n: int, name: str) -> tuple[str, list[str]]:
    """n versions, each promoted over the one before (what the training DAG leaves)."""
    versions, previous = [], None
    for i in range(n):
        run_id, version = _version(client, name)
        pipeline.promote(_stage(client, tmp_path, run_id, name), version=version, reasons=["ok"],
                         dag_context={"dag_id": "training", "dag_run_id": f"run_{i}"},
                         compared_with=previous)
        versions.append(version)
        previous = version
    return name, versions


def _roll(client: Any, tmp_path: Path, name: str, *, to: str | None = None,
          run: str = "manual__1") -> dict[str, Any]:
    return rollback.rollback(client, ObjectStore(), artifacts_uri=str(tmp_path / "artifacts"),
                             model_name=name, to_version=to, reason="v3 mis-scores EU rows",
                             by=f"airflow:rollback/{run}", dag_run_id=run, trigger="by hand")


def test_goes_back_to_the_previous_champion_and_audits_it(registry: Any, tmp_path: Path,
                                                            name: str) -> None:
    name, (v1, v2, v3) = _promoted_chain(registry, tmp_path, 3, name)

    result = _roll(registry, tmp_path, name)

    assert (result["previous"], result["version"]) == (v3, v2)
    assert str(tracking.alias_version(registry, name).version) == v2
    down, up = registry.get_model_version(name, v3).tags, registry.get_model_version(name, v2).tags
    assert down["audit.rolled_back_to"] == v2
    assert down["audit.rolled_back_reason"] == "v3 mis-scores EU rows"
    assert down["audit.rolled_back_by"] == "airflow:rollback/manual__1"
    assert up["audit.restored_from"] == v3
    record = json.loads(Path(result["audit_uri"]).read_text())
    assert record | {"rolled_back_at": None} == record | {
        "action": "rollback", "from_version": v3, "to_version": v2, "rolled_back_at": None,
        "trigger": "by hand", "reason": "v3 mis-scores EU rows"}
    assert "audit trail: v3 was promoted from v2" in record["how"]

    # Again: v2's own predecessor, v1. Then v1 was the first champion: nothing before it.
    assert _roll(registry, tmp_path, name, run="manual__2")["version"] == v1
    with pytest.raises(RollbackError, match="first @champion.*to_version"):
        _roll(registry, tmp_path, name, run="manual__3")


def test_a_retry_after_the_alias_moved_completes_the_same_record(registry: Any,
                                                                 tmp_path: Path,
                                                                 name: str) -> None:
    name, (v1, v2) = _promoted_chain(registry, tmp_path, 2, name)
    first = _roll(registry, tmp_path, name, run="manual__r")

    again = _roll(registry, tmp_path, name, run="manual__r")  # the task's retry

    assert (again["previous"], again["version"]) == (v2, v1) == (first["previous"],
                                                                 first["version"])
    assert again["audit_uri"] == first["audit_uri"]
    assert len(list((tmp_path / "artifacts" / "audit" / name).glob("rollback-*"))) == 1


def test_a_version_by_hand_must_have_passed_the_gate(registry: Any, tmp_path: Path,
                                                     name: str) -> None:
    name, (v1, v2) = _promoted_chain(registry, tmp_path, 2, name)
    _, rejected = _version(registry, name, approved=False)

    with pytest.raises(RollbackError, match=f"refusing to restore {name} v{rejected}: .* no "
                                            "approved gate decision"):
        _roll(registry, tmp_path, name, to=rejected)
    _, never = _version(registry, name)  # passed the gate, never promoted (e.g. rejected by
    with pytest.raises(RollbackError, match=f"v{never}: it was never @champion"):  # a person)
        _roll(registry, tmp_path, name, to=never)
    with pytest.raises(RollbackError, match="no version 99"):
        _roll(registry, tmp_path, name, to="99")
    with pytest.raises(RollbackError, match="is @champion already"):
        _roll(registry, tmp_path, name, to=v2)
    assert str(tracking.alias_version(registry, name).version) == v2  # nothing moved

    assert _roll(registry, tmp_path, name, to=f"v{v1}")["version"] == v1


def test_no_champion_is_nothing_to_roll_back(registry: Any, tmp_path: Path, name: str) -> None:
    _version(registry, name)
    with pytest.raises(RollbackError, match="has no @champion"):
        _roll(registry, tmp_path, name)


def test_the_automatic_rule(registry: Any, tmp_path: Path, name: str) -> None:
    name, (v1, v2) = _promoted_chain(registry, tmp_path, 2, name)
    live = {"model_name": name, "model_version": v2, "below_floor": True,
            "partition_date": "2025-03-01", "failed": ["roc_auc >= 0.7 (observed 0.5100)"]}
    now = datetime.now(UTC)

    roll, why = rollback.auto_rollback_reason(registry, live, window_hours=24, now=now)
    assert roll and "roc_auc >= 0.7 (observed 0.5100)" in why and "within" in why

    for changed, window, expected in (
            ({"below_floor": False}, 24, "above its performance floor"),
            ({}, 0, "automatic rollback is off"),
            ({"model_version": v1}, 24, f"v{v1} is no longer @champion")):
        roll, why = rollback.auto_rollback_reason(registry, {**live, **changed},
                                                  window_hours=window, now=now)
        assert not roll and expected in why, why
    late, why = rollback.auto_rollback_reason(registry, live, window_hours=24,
                                              now=now + timedelta(hours=30))
    assert not late and "outside rollback.auto_window_hours (24 h)" in why

    # After the rollback v1 is champion again; v1 was the first: never rolled back on its own.
    _roll(registry, tmp_path, name)
    roll, why = rollback.auto_rollback_reason(
        registry, {**live, "model_version": v1}, window_hours=24, now=now)
    assert not roll and "first champion" in why
