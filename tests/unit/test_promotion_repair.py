"""promote() at unit speed (MLflow on SQLite, a local store): the refusals (no approved gate
decision; a stale decision, compared with a champion that another run replaced meanwhile) and
the repair of a promotion left half done.

A promotion left half done: the promote task moved @champion and died before it tagged the
version and wrote the audit record, and no retry completed it (its retries were used up). The
next promotion notices it, says so, and completes the record, so the audit chain has no gap
(include/mlops_core/pipeline.py ``_complete_half_done``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from include.mlops_core import pipeline, tracking
from tests.unit.helpers import churn_config


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                        registry_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _run_and_version(client: Any, run_ctx: pipeline.RunContext, dag_run_id: str) -> tuple[str, str]:
    """What ingest .. register leave for one DAG run: an approved MLflow run, a version."""
    experiment = tracking.ensure_experiment(client, run_ctx.model_name)
    run_id = client.create_run(experiment).info.run_id
    client.set_tag(run_id, "mlops.gate", "approved")
    try:
        client.create_registered_model(run_ctx.model_name)
    except Exception:  # noqa: BLE001 - exists already
        pass
    mv = client.create_model_version(run_ctx.model_name, source=f"runs:/{run_id}/model",
                                     run_id=run_id, tags={"airflow.dag_id": "training",
                                                          "airflow.run_id": dag_run_id})
    return run_id, str(mv.version)


def _stage(client: Any, tmp_path: Path, run_id: str) -> pipeline.RunContext:
    from include.mlops_core.storage import ObjectStore

    return pipeline.RunContext(config=churn_config(), store=ObjectStore(), client=client,
                          mlflow_run_id=run_id, artifacts_uri=str(tmp_path / "artifacts"),
                          run_key="2025-01-02T000000")


def test_the_next_promotion_completes_a_half_done_one(registry: Any, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    client = registry
    base = _stage(client, tmp_path, "unused")
    model = base.model_name
    run_a, v1 = _run_and_version(client, base, "run_a")
    pipeline.promote(_stage(client, tmp_path, run_a), version=v1, reasons=["first"],
                     dag_context={"dag_id": "training", "dag_run_id": "run_a"})
    # run_b's promote moved the alias and died: what promote does before the move, and the move.
    run_b, v2 = _run_and_version(client, base, "run_b")
    client.set_model_version_tag(model, v2, "audit.pending_from", v1)
    client.set_registered_model_alias(model, "champion", v2)
    run_c, v3 = _run_and_version(client, base, "run_c")

    caplog.set_level(logging.WARNING, logger="include.mlops_core.pipeline")
    result = pipeline.promote(_stage(client, tmp_path, run_c), version=v3, reasons=["better"],
                              dag_context={"dag_id": "training", "dag_run_id": "run_c"},
                              compared_with=v2)

    assert result["previous"] == v2
    assert str(tracking.alias_version(client, model).version) == v3
    assert any("Half-done promotion" in r.message and f"v{v2} is @champion" in r.message
               for r in caplog.records), caplog.text
    tags = client.get_model_version(model, v2).tags
    assert tags["audit.promoted_from"] == v1
    assert tags["audit.promoted_by"] == "airflow:training/run_b"
    assert tags["audit.repaired_by"] == "airflow:training/run_c"
    records = sorted((json.loads(p.read_text()) for p in
                      (tmp_path / "artifacts" / "audit" / model).iterdir()),
                     key=lambda r: r["to_version"])
    assert [(r["from_version"], r["to_version"], r["by"], r.get("repaired_by")) for r in records] \
        == [("none", v1, "airflow:training/run_a", None),
            (v1, v2, "airflow:training/run_b", "airflow:training/run_c"),
            (v2, v3, "airflow:training/run_c", None)]
    # A complete promotion is left as it is.
    assert "audit.repaired_by" not in client.get_model_version(model, v1).tags


def test_a_complete_champion_is_not_repaired(registry: Any, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    client = registry
    base = _stage(client, tmp_path, "unused")
    run_a, v1 = _run_and_version(client, base, "run_a")
    pipeline.promote(_stage(client, tmp_path, run_a), version=v1, reasons=[],
                     dag_context={"dag_id": "training", "dag_run_id": "run_a"})
    run_b, v2 = _run_and_version(client, base, "run_b")
    caplog.set_level(logging.WARNING, logger="include.mlops_core.pipeline")
    pipeline.promote(_stage(client, tmp_path, run_b), version=v2, reasons=[],
                     dag_context={"dag_id": "training", "dag_run_id": "run_b"}, compared_with=v1)
    assert "Half-done" not in caplog.text
    assert len(list((tmp_path / "artifacts" / "audit" / base.model_name).iterdir())) == 2


@pytest.mark.parametrize("alias", ["champion", "challenger"])
def test_a_stale_gate_decision_promotes_nothing(registry: Any, tmp_path: Path, alias: str) -> None:
    """The gate compared v2 with champion v1, but another run promoted v3 meanwhile: promoting
    v2 now would replace a model it was never compared with. Refused, and nothing moves."""
    from include.mlops_core.errors import PromotionError

    client = registry
    base = _stage(client, tmp_path, "unused")
    model = base.model_name
    run_a, v1 = _run_and_version(client, base, "run_a")
    pipeline.promote(_stage(client, tmp_path, run_a), version=v1, reasons=[],
                     dag_context={"dag_id": "training", "dag_run_id": "run_a"})
    run_b, v2 = _run_and_version(client, base, "run_b")  # gated against v1
    run_c, v3 = _run_and_version(client, base, "run_c")
    pipeline.promote(_stage(client, tmp_path, run_c), version=v3, reasons=[],
                     dag_context={"dag_id": "training", "dag_run_id": "run_c"}, compared_with=v1)

    with pytest.raises(PromotionError) as refused:
        pipeline.promote(_stage(client, tmp_path, run_b), version=v2, reasons=[], alias=alias,
                         dag_context={"dag_id": "training", "dag_run_id": "run_b"},
                         compared_with=v1)

    assert f"not promoting {model} v{v2} to @{alias}: the gate compared it with champion " \
           f"v{v1}, but @champion is now v{v3}" in str(refused.value)
    assert str(tracking.alias_version(client, model).version) == v3
    assert tracking.alias_version(client, model, "challenger") is None
    assert not any(k.startswith("audit.") for k in client.get_model_version(model, v2).tags)
    audits = [json.loads(p.read_text())["to_version"]
              for p in (tmp_path / "artifacts" / "audit" / model).iterdir()]
    assert sorted(audits) == sorted([v1, v3])


def test_a_run_without_an_approved_gate_decision_is_never_promoted(registry: Any,
                                                                    tmp_path: Path) -> None:
    from include.mlops_core.errors import PromotionError

    client = registry
    base = _stage(client, tmp_path, "unused")
    run_a, v1 = _run_and_version(client, base, "run_a")
    client.set_tag(run_a, "mlops.gate", "rejected")
    with pytest.raises(PromotionError, match=f"refusing to promote {base.model_name} v{v1}: its "
                                             f"run {run_a} has no approved gate decision"):
        pipeline.promote(_stage(client, tmp_path, run_a), version=v1, reasons=[],
                         dag_context={"dag_id": "training", "dag_run_id": "run_a"})
    assert tracking.alias_version(client, base.model_name) is None
