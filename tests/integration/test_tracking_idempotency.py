"""Retries against the real MLflow server: a retried task finds the same MLflow run by tag, a
retried register reuses its version, a retried promote writes one audit record."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import mlflow.artifacts
import pytest

from include.mlops_core import pipeline, tracking
from include.mlops_core.config import resolve_config
from include.mlops_core.demo_data import write_partitions
from include.mlops_core.errors import CredentialsError


def test_retried_task_resumes_the_same_run(services):
    client = services.mlflow_client()
    kwargs = {"experiment": "it_resume", "dag_id": "training", "dag_run_id": "manual__retry",
              "tags": {"airflow.logical_date": "2025-07-01"}, "run_name": "training:retry"}
    first = tracking.find_or_create_run(client, **kwargs)
    tracking.finish_run(client, first, outcome="failed:train", failed=True)
    again = tracking.find_or_create_run(client, **kwargs)  # the retry
    assert again == first
    assert client.get_run(first).info.status == "RUNNING"
    experiment = client.get_experiment_by_name("it_resume").experiment_id
    assert len(client.search_runs([experiment])) == 1, "a retry created a ghost run"
    other = tracking.find_or_create_run(client, **{**kwargs, "dag_run_id": "manual__other"})
    assert other != first


def test_register_and_promote_are_idempotent(services):
    store, client, model = services.store(), services.mlflow_client(), "it_idempotent"
    source = f"s3://mlops-data/{model}"
    write_partitions(store, source, datetime(2025, 7, 1).date(), 1, rows=600)
    config = resolve_config({"model_name": model, "source_uri": source})
    run_id = tracking.find_or_create_run(client, experiment=model, dag_id="training",
                                         dag_run_id="manual__idem", tags={}, run_name=model)
    run_ctx = pipeline.RunContext(config=config, store=store, client=client, mlflow_run_id=run_id,
                           artifacts_uri="s3://mlops", run_key="2025-07-02T000000")
    context = {"dag_id": "training", "dag_run_id": "manual__idem"}
    ingested = pipeline.ingest(run_ctx, [datetime(2025, 7, 1, tzinfo=UTC).date()])
    features = pipeline.build_features(run_ctx, ingested["snapshot_uri"])
    trained = pipeline.train(run_ctx, train_uri=features["train_uri"],
                             manifest_uri=ingested["manifest_uri"])
    retrained = pipeline.train(run_ctx, train_uri=features["train_uri"],
                               manifest_uri=ingested["manifest_uri"])
    assert retrained["model_uri"] == trained["model_uri"], "a retried train logged a second model"
    evaluation = pipeline.evaluate(run_ctx, model_uri=trained["model_uri"],
                                   test_uri=features["test_uri"])
    # The plots: the same PNG bytes on the MLflow run and in the run folder (for the card).
    for mlflow_path, in_folder in (("plots/confusion_matrix.png", "confusion_matrix.png"),
                                   ("explanations/summary.png", "explanation.png")):
        logged = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=mlflow_path,
                                                     tracking_uri=services.mlflow_url)
        assert Path(logged).read_bytes() == store.read_bytes(f"{run_ctx.run_dir}/{in_folder}")
    decision = pipeline.gate(run_ctx, evaluation_uri=evaluation["evaluation_uri"], dag_context=context)
    assert decision["approved"]

    first = pipeline.register(run_ctx, model_uri=trained["model_uri"],
                              manifest_uri=ingested["manifest_uri"], dag_context=context)
    second = pipeline.register(run_ctx, model_uri=trained["model_uri"],
                               manifest_uri=ingested["manifest_uri"], dag_context=context)
    assert first == second == {"model_name": model, "version": "1"}
    assert len(client.search_model_versions(f"name = '{model}'")) == 1

    promoted = pipeline.promote(run_ctx, version="1", reasons=decision["reasons"], dag_context=context)
    retried = pipeline.promote(run_ctx, version="1", reasons=decision["reasons"], dag_context=context)
    assert promoted["audit_uri"] == retried["audit_uri"]
    assert retried["previous"] == "none", "a retry forgot where the alias came from"
    records = store.list(f"s3://mlops/audit/{model}")
    assert len(records) == 1
    assert json.loads(store.read_bytes(records[0].uri))["to_version"] == "1"
    assert client.get_model_version_by_alias(model, "champion").version == "1"
    # check_changed's lookup (REST, no mlflow) says what the client's says, behind basic-auth
    rest = tracking.RestRegistry(services.mlflow_url, auth=(
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]))
    found = tracking.alias_version(rest, model)
    assert (found.version, found.run_id) == ("1", run_id)
    assert found.tags == client.get_model_version(model, "1").tags
    assert tracking.alias_version(rest, model, "challenger") is None  # no such alias
    assert tracking.alias_version(rest, "it_no_such_model") is None  # basic-auth's 403
    assert tracking.alias_version(client, "it_no_such_model") is None
    with pytest.raises(CredentialsError, match="rejected the credentials"):
        tracking.alias_version(tracking.RestRegistry(services.mlflow_url,
                                                     auth=(os.environ["MLFLOW_TRACKING_USERNAME"], "wrong")), model)

    # A second model whose gate compared it with "no champion" is stale now: not promoted.
    from include.mlops_core.errors import PromotionError

    client.set_tag(run_id, "mlops.gate", "approved")
    second_version = client.create_model_version(model, source=trained["model_uri"], run_id=run_id,
                                                 model_id=trained["model_uri"].split("/")[-1])
    with pytest.raises(PromotionError, match="promoted by another run meanwhile"):
        pipeline.promote(run_ctx, version=second_version.version, reasons=[], dag_context=context,
                         compared_with=None)
    assert client.get_model_version_by_alias(model, "champion").version == "1"


def test_promote_refuses_a_model_without_approved_gate(services):
    from include.mlops_core.errors import PromotionError

    store, client, model = services.store(), services.mlflow_client(), "it_unapproved"
    config = resolve_config({"model_name": model, "source_uri": "s3://mlops-data/none"})
    run_id = tracking.find_or_create_run(client, experiment=model, dag_id="training",
                                         dag_run_id="manual__unapproved", tags={}, run_name=model)
    client.create_registered_model(model)
    client.create_model_version(model, source=f"runs:/{run_id}/model", run_id=run_id)
    run_ctx = pipeline.RunContext(config=config, store=store, client=client, mlflow_run_id=run_id,
                           artifacts_uri="s3://mlops", run_key="2025-07-03T000000")
    with pytest.raises(PromotionError, match="no approved gate decision"):
        pipeline.promote(run_ctx, version="1", reasons=[], dag_context={"dag_run_id": "x"})
    assert tracking.alias_version(client, model) is None
