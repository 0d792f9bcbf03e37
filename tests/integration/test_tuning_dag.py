"""Tuning and candidate selection through the training DAG (dag.test(), real MLflow, S3 and an
Optuna study in a SQLite file): a binary, a multi-class and a regression dataset that ship with
scikit-learn, each with two candidate families, one of them tuned by two mapped tune tasks
sharing one study; select keeps the best on the same held-out rows and it is promoted."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
import yaml

TUNING = {"n_trials": 4, "parallel_tasks": 2, "cv_folds": 2}

DATASETS = {
    "tune_cancer": {  # binary
        "loader": "load_breast_cancer", "task": "classification", "metric": "roc_auc",
        "threshold": "roc_auc >= 0.9",
        "candidates": [
            {"family": "logistic_regression", "hyperparameters": {"max_iter": 2000},
             "search_space": {"C": {"type": "float", "low": 0.001, "high": 10, "log": True}}},
            {"family": "random_forest", "hyperparameters": {"n_estimators": 20, "max_depth": 4}},
        ],
    },
    "tune_wine": {  # three classes
        "loader": "load_wine", "task": "classification", "metric": "roc_auc",
        "threshold": "accuracy >= 0.8",
        "candidates": [
            {"name": "forest", "family": "random_forest",
             "hyperparameters": {"n_estimators": 20},
             "search_space": {"max_depth": {"type": "int", "low": 1, "high": 8},
                              "criterion": {"type": "categorical",
                                            "choices": ["gini", "entropy"]}}},
            {"name": "linear", "family": "logistic_regression",
             "hyperparameters": {"max_iter": 2000}},
        ],
    },
    "tune_diabetes": {  # regression
        "loader": "load_diabetes", "task": "regression", "metric": "rmse",
        "threshold": "r2 >= 0.2",
        "candidates": [
            {"family": "ridge", "search_space": {
                "alpha": {"type": "float", "low": 0.001, "high": 100, "log": True}}},
            {"family": "hist_gradient_boosting",
             "hyperparameters": {"max_iter": 30, "max_depth": 2}},
        ],
    },
}


def _frame(loader: str) -> Any:
    import sklearn.datasets

    frame = getattr(sklearn.datasets, loader)(as_frame=True).frame
    return frame.rename(columns={c: re.sub(r"[^a-z0-9_]", "_", c.lower()) for c in frame.columns})


def _config(name: str, spec: dict[str, Any], frame: Any) -> dict[str, Any]:
    features = [c for c in frame.columns if c != "target"]
    target = ({"name": "target", "type": "integer", "min": 0, "max": 10}
              if spec["task"] == "classification" else {"name": "target", "type": "numeric"})
    return {"source_uri": f"s3://mlops-data/{name}", "task": spec["task"], "target": "target",
            "min_rows": 100,
            "columns": [*({"name": c, "type": "numeric"} for c in features), target],
            "training": {"candidates": spec["candidates"], "tuning": TUNING, "seed": 5,
                         "test_size": 0.3},
            "gate": {"thresholds": [spec["threshold"]], "champion_metric": spec["metric"]}}


@pytest.mark.parametrize("name", list(DATASETS))
def test_tuned_candidates_are_selected_and_promoted(name, services, run_dag, tmp_path,
                                                    monkeypatch):
    from mlflow.artifacts import load_dict

    from include.mlops_core import tuning
    from include.mlops_core.config import load_dataset_config

    spec = DATASETS[name]
    frame = _frame(spec["loader"])
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    store, client = services.store(), services.mlflow_client()
    store.write_bytes(f"s3://mlops-data/{name}/date=2025-09-01/part-0.parquet", buffer.getvalue())
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(_config(name, spec, frame)))
    monkeypatch.setenv("MLOPS_DATASETS_DIR", str(tmp_path))

    result = run_dag("2025-09-01", dataset=name, partition_date="2025-09-01")

    assert result.state == "success", result.error_lines()
    assert result.tasks["promote"] == "success"
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    experiment = client.get_experiment_by_name(name).experiment_id
    [parent] = client.search_runs([experiment],
                                  filter_string=f"tags.`airflow.run_id` = '{result.run_id}'")
    children = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    trials = [r for r in children if "mlops.optuna.trial" in r.data.tags]
    candidates = [r for r in children if r.data.tags.get("mlops.child") == "candidate"]
    tuned = spec["candidates"][0].get("name") or spec["candidates"][0]["family"]

    # Two mapped tune tasks shared one study: exactly n_trials finished trials, one child run
    # each, with the trial's params and its fold scores.
    finished = [r for r in trials if r.data.tags["mlops.optuna.state"] in ("complete", "pruned")]
    assert len(finished) == TUNING["n_trials"], [r.data.tags for r in trials]
    assert {r.data.tags["mlops.candidate"] for r in trials} == {tuned}
    assert set(spec["candidates"][0]["search_space"]) <= set(finished[0].data.params)
    study = tuning.study_name(name, result.run_id, tuned)
    storage_url = f"sqlite:///{services.workdir / 'optuna.db'}"
    summary = tuning.summary(storage_url, study)
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == TUNING["n_trials"]

    # One child run per candidate; select compared both on the same rows and kept the best.
    assert sorted(r.data.tags["mlops.candidate"] for r in candidates) == sorted(
        c.get("name") or c["family"] for c in spec["candidates"])
    selection = load_dict(f"runs:/{parent.info.run_id}/selection/selection.json")
    values = {row["candidate"]: row["value"] for row in selection["candidates"]}
    best = (max if spec["metric"] != "rmse" else min)(values, key=values.get)
    assert selection["selected"] == best == parent.data.tags["mlops.candidate"]
    loser = next(r for r in selection["candidates"] if not r["selected"])
    assert loser["interval"][0] <= loser["difference_to_best"] <= loser["interval"][1]
    assert parent.data.params["candidate"] == best

    # The winner's manifest and card say what it was trained with; the tuned params when the
    # tuned candidate won.
    repro = load_dict(f"runs:/{parent.info.run_id}/reproducibility.json")
    assert repro["trained"]["candidate"] == best
    if best == tuned:
        assert repro["trained"]["tuned"] == summary["best_params"]
    card = load_dict(f"runs:/{parent.info.run_id}/promotion_card.json")
    assert card["selection"]["selected"] == best and card["lineage"]["trained"]["candidate"] == best
    html = client.download_artifacts(parent.info.run_id, "promotion_card.html", str(tmp_path))
    assert "Candidates" in open(html).read()

    # A retried tune task finds the budget spent: no trial, no child run.
    config = load_dataset_config(name)
    train = store.read_bytes(f"s3://mlops/{name}/runs/2025-09-01T000000/train.parquet")
    from include.mlops_core.ingest import read_parquet_bytes

    again = tuning.tune(read_parquet_bytes(train), config, candidate=tuned,
                        storage_url=storage_url, study=study, worker=0, mlflow_client=client,
                        parent_run_id=parent.info.run_id, experiment_id=experiment)
    assert again["trials_run"] == 0
    after = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(after) == len(children)
    assert json.dumps(summary)  # the card's study summary is plain JSON
