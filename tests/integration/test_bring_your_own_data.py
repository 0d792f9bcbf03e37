"""Bring your own data: a user's own dataset config (a YAML file in MLOPS_DATASETS_DIR) and their
own Parquet partitions train through the same DAG, with no code change. Here: a regression task
(scikit-learn's bundled diabetes data), so the regression path runs end to end too."""

from __future__ import annotations

import io

import yaml

CONFIG = {
    "source_uri": "s3://mlops-data/byo_diabetes",
    "task": "regression",
    "target": "progression",
    "slice_column": "sex",
    "min_rows": 100,
    "columns": [
        {"name": "age", "type": "integer", "min": 0, "max": 120},
        {"name": "sex", "type": "categorical", "categories": ["female", "male"]},
        {"name": "bmi", "type": "numeric", "min": 10, "max": 60},
        {"name": "bp", "type": "numeric", "min": 40, "max": 200},
        *({"name": f"s{i}", "type": "numeric"} for i in range(1, 7)),
        {"name": "progression", "type": "numeric", "min": 0},
    ],
    "training": {"family": "ridge", "hyperparameters": {"alpha": 1.0}, "seed": 3},
    "gate": {"thresholds": ["r2 >= 0.2", "rmse <= 80"]},
}


def test_own_config_and_partitions_train_a_regression_model(services, run_dag, tmp_path,
                                                           monkeypatch):
    from mlflow.artifacts import load_dict
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})
    frame["sex"] = frame["sex"].map({1.0: "female", 2.0: "male"})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    store = services.store()
    store.write_bytes("s3://mlops-data/byo_diabetes/date=2025-08-01/export.parquet", buffer.getvalue())
    (tmp_path / "diabetes.yaml").write_text(yaml.safe_dump(CONFIG))
    monkeypatch.setenv("MLOPS_DATASETS_DIR", str(tmp_path))

    result = run_dag("2025-08-02", dataset="diabetes")

    assert result.state == "success", result.error_lines()
    assert result.tasks["promote"] == "success"
    client = services.mlflow_client()
    assert client.get_model_version_by_alias("diabetes", "champion").version == "1"
    [run] = client.search_runs([client.get_experiment_by_name("diabetes").experiment_id],
                               filter_string=f"tags.`airflow.run_id` = '{result.run_id}'")
    metrics = run.data.metrics
    assert {"rmse", "mae", "r2"} <= set(metrics) and not {"roc_auc", "accuracy"} & set(metrics)
    assert metrics["r2"] >= 0.2
    assert {"slice.sex.female.rmse", "slice.sex.male.rmse"} <= set(metrics)
    assert run.data.params["family"] == "ridge" and run.data.params["hp.alpha"] == "1.0"
    assert "plots" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/residuals.png"]
    card = load_dict(f"runs:/{run.info.run_id}/promotion_card.json")
    assert card["task"] == "regression" and card["decision"]["approved"] is True
    assert any("threshold r2 >= 0.2" in reason for reason in card["decision"]["reasons"])

    # The user's own config is validated: a threshold on a classification metric is refused
    # before anything runs, with pydantic's reason in the task log.
    bad = {**CONFIG, "gate": {"thresholds": ["roc_auc >= 0.8"]}}
    (tmp_path / "diabetes_bad.yaml").write_text(yaml.safe_dump(bad))
    refused = run_dag("2025-08-02", dataset="diabetes_bad")
    assert refused.state == "failed" and refused.tasks["check_changed"] == "failed"
    final = refused.final_error()
    assert "diabetes_bad.yaml" in final and "a regression model reports rmse, mae, r2" in final
