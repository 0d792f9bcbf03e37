"""Scoring, shadow/canary, drift, delayed labels and the A/B decision with dag.test() against a
real MLflow server and a real S3 store. The Asset schedules themselves are proven through a real
scheduler in test_monitoring_scheduler.py.
"""

from __future__ import annotations

import json
from datetime import date

import pytest

from include.mlops_core.demo_data import write_labels, write_partitions
from include.mlops_core.scoring import canary_mask
from tests.integration.conftest import champion_of

STUMP = {"family": "hist_gradient_boosting",
         "hyperparameters": {"max_iter": 1, "max_leaf_nodes": 2, "learning_rate": 0.1}}


def _keys(store, prefix: str) -> list[str]:
    return sorted(o.uri.removeprefix(prefix).lstrip("/") for o in store.list(prefix))


def _asset_events(asset_name: str, source_run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                               .where(AssetModel.name == asset_name,
                                      AssetEvent.source_run_id == source_run_id)).all()
        return [dict(e.extra or {}) for e in rows]


def _xcom(dag_id: str, run_id: str, task_id: str, key: str) -> object:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(select(XComModel).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id,
            XComModel.task_id == task_id, XComModel.key == key)).first()
        return None if row is None else XComModel.deserialize_value(row)


@pytest.fixture
def monitored(services, run_dag, request):
    """A model ``it_<first word of the test name>`` whose champion v1 is a deliberately weak stump trained on 2025-01-01,
    with scoring input and delayed labels for 2025-01-01..05 (2025-01-05 strongly drifted)."""
    store, model = services.store(), f"it_{request.node.name.split('_')[1]}"
    source, labels = f"s3://mlops-data/{model}", f"s3://mlops-data/{model}-labels"
    write_partitions(store, source, date(2025, 1, 1), 4, rows=1500)
    write_labels(store, labels, date(2025, 1, 1), 4, rows=1500)
    write_partitions(store, source, date(2025, 1, 5), 1, rows=1500, drift=1.0)
    write_labels(store, labels, date(2025, 1, 5), 1, rows=1500, drift=1.0)
    first = run_dag("2025-01-02", model_name=model, source_uri=source, training=STUMP,
                    gate={"thresholds": []})
    assert first.state == "success", first.error_lines()
    assert champion_of(services.mlflow_client(), model) == "1"
    monitoring = {"scoring_uri": source, "labels_uri": labels}
    return {"model": model, "source": source, "labels": labels, "monitoring": monitoring,
            "store": store}


def test_scoring_writes_one_partition_per_rerun_and_emits_predictions(services, monitored,
                                                                      dagbag, run_any_dag):
    store, model = monitored["store"], monitored["model"]
    conf = {"model_name": model, "monitoring": monitored["monitoring"],
            "partition_date": "2025-01-03"}
    first = run_any_dag(dagbag.get_dag("batch_scoring"), "2025-01-04", **conf)
    assert first.state == "success", first.error_lines()
    folder = f"s3://mlops/{model}/predictions/date=2025-01-03"
    assert _keys(store, folder) == ["_SUCCESS.json", "predictions.parquet"]
    before = {o.uri: o.size for o in store.list(folder)}

    again = run_any_dag(dagbag.get_dag("batch_scoring"), "2025-01-04", **conf)
    assert again.state == "success", again.error_lines()
    assert _keys(store, folder) == ["_SUCCESS.json", "predictions.parquet"]  # replaced, not added
    assert {o.uri: o.size for o in store.list(folder)} == before

    manifest = json.loads(store.read_bytes(f"{folder}/_SUCCESS.json"))
    from include.mlops_core.ingest import read_parquet_bytes

    rows = read_parquet_bytes(store.read_bytes(manifest["predictions_uri"]))
    assert len(rows) == manifest["rows"] == 1500
    assert set(rows["model_version"]) == {"1"} and set(rows["arm"]) == {"champion"}
    assert set(rows["model_name"]) == {model}
    assert rows["scoring_run_id"].nunique() == 1 and rows["customer_id"].is_unique
    assert rows["score"].between(0, 1).all() and set(rows["prediction"]) <= {0, 1}
    events = _asset_events("predictions", again.run_id)
    assert events and events[-1]["partition_uri"] == folder
    assert events[-1]["model_version"] == "1" and events[-1]["partition_date"] == "2025-01-03"


def test_canary_and_shadow_rows_then_ab_decision_promotes(services, monitored, run_dag, dagbag,
                                                          run_any_dag):
    store, model, client = monitored["store"], monitored["model"], services.mlflow_client()
    rollout = {"mode": "canary", "canary_share": 0.5, "min_labelled_rows": 200,
               "bootstrap_resamples": 400}
    # A full model on 2025-01-02..03 beats the stump: approved, but only as @challenger.
    second = run_dag("2025-01-04", model_name=model, source_uri=monitored["source"],
                     lookback_days=2, rollout=rollout,
                     training={"hyperparameters": {"max_iter": 150, "max_leaf_nodes": 31}},
                     gate={"thresholds": ["roc_auc >= 0.7"]})
    assert second.state == "success", second.error_lines()
    assert champion_of(client, model) == "1"
    assert client.get_model_version_by_alias(model, "challenger").version == "2"

    conf = {"model_name": model, "rollout": rollout, "partition_date": "2025-01-04",
            "monitoring": {**monitored["monitoring"], "performance_floor": ["roc_auc >= 0.6"]}}
    scored = run_any_dag(dagbag.get_dag("batch_scoring"), "2025-01-05", **conf)
    assert scored.state == "success", scored.error_lines()
    from include.mlops_core.ingest import read_parquet_bytes

    served = read_parquet_bytes(store.read_bytes(
        f"s3://mlops/{model}/predictions/date=2025-01-04/predictions.parquet"))
    shadow = read_parquet_bytes(store.read_bytes(f"s3://mlops/{model}/shadow/date=2025-01-04/shadow.parquet"))
    expected = canary_mask(served["customer_id"], 0.5, model)
    assert (served["arm"] == "challenger").to_numpy().tolist() == expected.tolist()
    assert 0.4 < expected.mean() < 0.6
    assert set(served.loc[expected, "model_version"]) == {"2"}
    assert set(served.loc[~expected, "model_version"]) == {"1"}
    # The shadow file: the challenger's prediction for every row; served rows of the canary
    # arm are exactly the challenger's, the rest the champion's.
    assert len(shadow) == len(served) and set(shadow["model_version"]) == {"2"}
    merged = served.merge(shadow, on="customer_id", suffixes=("", "_shadow"))
    canary = merged["arm"] == "challenger"
    assert (merged.loc[canary, "prediction"] == merged.loc[canary, "prediction_shadow"]).all()
    assert (merged.loc[~canary, "prediction"] == merged.loc[~canary, "champion_prediction"]).all()
    manifest = json.loads(store.read_bytes(f"s3://mlops/{model}/predictions/date=2025-01-04/_SUCCESS.json"))
    assert 0 < manifest["shadow_agreement"] < 1 and manifest["challenger_version"] == "2"

    perf = dagbag.get_dag("performance_monitor")
    decided = run_any_dag(perf, "2025-01-06", **conf)
    assert decided.state == "success", decided.error_lines()
    assert decided.tasks["performance_degraded"] == "skipped"
    assert f"A/B decision for {model} challenger v2: PROMOTE" in decided.log
    assert champion_of(client, model) == "2"
    from include.mlops_core.tracking import alias_version

    assert alias_version(client, model, "challenger") is None
    card = json.loads(store.read_bytes(f"s3://mlops/{model}/ab/v2/date=2025-01-04/promotion_card.json"))
    assert card["verdict"] == "promote" and card["statistics"]["low"] > 0
    assert card["statistics"]["champion_rows"] + card["statistics"]["challenger_rows"] == 1500

    # Live metrics: one point per day per version, step = days since 1970-01-01.
    runs = {r.data.tags["mlops.model_version"]: r for r in client.search_runs(
        [client.get_experiment_by_name(model).experiment_id],
        filter_string="tags.`mlops.monitor` = 'live'")}
    assert set(runs) == {"1", "2"}
    step = (date(2025, 1, 4) - date(1970, 1, 1)).days
    history = client.get_metric_history(runs["2"].info.run_id, "live.roc_auc")
    assert [m.step for m in history] == [step]
    # Shadow: the challenger on every labelled row, and its paired delta to the champion.
    shadow = client.get_run(runs["2"].info.run_id).data.metrics
    assert shadow["live.shadow.rows"] == 1500 and "live.shadow.delta.roc_auc" in shadow
    assert shadow["live.shadow.delta.roc_auc"] > 0  # the full model beats the stump
    again = run_any_dag(perf, "2025-01-06", **conf)
    assert again.state == "success", again.error_lines()
    assert len(client.get_metric_history(runs["2"].info.run_id, "live.roc_auc")) == 1


def test_live_metrics_below_the_floor_raise_an_alert_event(services, monitored, dagbag,
                                                           run_any_dag):
    model = monitored["model"]
    conf = {"model_name": model, "partition_date": "2025-01-03",
            "monitoring": {**monitored["monitoring"], "performance_floor": ["roc_auc >= 0.9"]}}
    scored = run_any_dag(dagbag.get_dag("batch_scoring"), "2025-01-04", **conf)
    assert scored.state == "success", scored.error_lines()
    checked = run_any_dag(dagbag.get_dag("performance_monitor"), "2025-01-05", **conf)
    assert checked.state == "success", checked.error_lines()
    assert checked.tasks["performance_degraded"] == "success"
    # churn_demo rolls nothing back on its own (rollback.auto_window_hours 0): retrain only.
    assert checked.tasks["auto_rollback"] == "success" and checked.tasks["smoke_test"] == "skipped"
    assert "No automatic rollback: automatic rollback is off for this dataset" in checked.log
    assert f"ALERT: live performance of {model} v1 on 2025-01-03 is below the floor: " \
           "roc_auc >= 0.9 (observed 0." in checked.log
    events = _asset_events("performance_degraded", checked.run_id)
    assert len(events) == 1 and events[0]["model_name"] == model
    assert events[0]["partition_date"] == "2025-01-03" and events[0]["below_floor"] is True
    assert checked.tasks["ab_decision"] == "success"  # direct rollout: nothing to decide

    # Labels for ids that were never scored: a clear error naming the partition and column.
    write_labels(monitored["store"], f"{monitored['labels']}-other", date(2025, 1, 3), 1,
                 rows=50, seed=99)
    store = monitored["store"]
    from include.mlops_core.ingest import read_parquet_bytes, to_parquet_bytes

    uri = f"{monitored['labels']}-other/date=2025-01-03/labels.parquet"
    frame = read_parquet_bytes(store.read_bytes(uri))
    frame["customer_id"] = "X" + frame["customer_id"]
    store.write_bytes(uri, to_parquet_bytes(frame))
    conf["monitoring"] = {**conf["monitoring"], "labels_uri": f"{monitored['labels']}-other"}
    failed = run_any_dag(dagbag.get_dag("performance_monitor"), "2025-01-05", **conf)
    assert failed.state == "failed"
    assert "labels for unknown ids: none of the 50 label rows in " in failed.final_error()
    assert "column 'customer_id'" in failed.final_error()


def test_planted_drift_emits_drift_detected_and_a_normal_day_does_not(services, monitored,
                                                                      dagbag, run_any_dag,
                                                                      alert_sinks):
    store, model, client = monitored["store"], monitored["model"], services.mlflow_client()
    scoring, drift = dagbag.get_dag("batch_scoring"), dagbag.get_dag("drift_monitor")
    conf = {"model_name": model, "monitoring": monitored["monitoring"]}
    for day in ("2025-01-03", "2025-01-05"):
        scored = run_any_dag(scoring, "2025-01-06", partition_date=day, **conf)
        assert scored.state == "success", scored.error_lines()

    normal = run_any_dag(drift, "2025-01-06", partition_date="2025-01-03", **conf)
    assert normal.state == "success", normal.error_lines()
    assert normal.tasks == {"check_drift": "success", "drift_detected": "skipped"}
    assert _asset_events("drift_detected", normal.run_id) == []
    assert alert_sinks.posts == [] and alert_sinks.mails == []
    result = json.loads(store.read_bytes(f"s3://mlops/{model}/drift/date=2025-01-03/result.json"))
    assert result["mlops"]["dataset_drift"] is False

    drifted = run_any_dag(drift, "2025-01-06", partition_date="2025-01-05", **conf)
    assert drifted.state == "success", drifted.error_lines()
    assert drifted.tasks == {"check_drift": "success", "drift_detected": "success"}
    report = f"s3://mlops/{model}/drift/date=2025-01-05/report.html"
    summary = [line for line in drifted.log.splitlines() if "Drift: " in line]
    assert summary and report in summary[-1], summary
    events = _asset_events("drift_detected", drifted.run_id)
    assert len(events) == 1
    event = events[0]
    # The generator's drift switch shifts charges, tenure, contract mix and support calls.
    assert {"monthly_charges", "tenure_months", "support_calls", "contract"} <= set(event["columns"])
    assert not {"age", "region", "payment_method"} & set(event["columns"])
    assert event["share"] >= 0.3 and event["report_uri"] == report
    assert event["model_version"] == "1" and event["source_uri"] == monitored["source"]
    # One alert, by mail and webhook (tests/integration/test_alerts.py for the others).
    alert_sinks.wait(1)
    assert len(alert_sinks.posts) == 1, alert_sinks.posts
    post = alert_sinks.posts[0]
    assert (post["event"], post["dag_id"], post["task_id"]) == \
        ("drift_detected", "drift_monitor", "drift_detected")
    assert post["reason"].startswith("dataset drift on 2025-01-05: share ")
    assert "monthly_charges" in post["reason"] and post["links"]["Drift report"] == report
    assert post["runbook"] == "docs/runbooks/drift-detected.md"
    assert alert_sinks.mails[0].subject == f"[mlops] drift detected: drift_monitor.drift_detected ({model})"
    # The grid's "Drift report" link: the report on that day's scoring run in MLflow.
    scoring_run = client.get_run(event["scoring_run_id"])
    assert _xcom("drift_monitor", drifted.run_id, "check_drift", "_link_drift_report") == (
        f"http://mlflow.example.test/#/experiments/{scoring_run.info.experiment_id}/runs/"
        f"{scoring_run.info.run_id}/artifacts/drift/report.html")
    assert store.read_bytes(report).lstrip().startswith(b"<!DOCTYPE html>")
    # Also on the scoring run of that day in MLflow.
    manifest = json.loads(store.read_bytes(f"s3://mlops/{model}/predictions/date=2025-01-05/_SUCCESS.json"))
    run = client.get_run(manifest["scoring_run_id"])
    assert run.data.tags["mlops.drift"] == "detected" and run.data.metrics["drift.share"] >= 0.3
    assert {"drift"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_broken_inputs_get_clear_errors_and_no_event(services, monitored, dagbag, run_any_dag):
    store, model = monitored["store"], monitored["model"]
    drift = dagbag.get_dag("drift_monitor")
    conf = {"model_name": model, "monitoring": monitored["monitoring"]}
    # No predictions for that day yet.
    missing = run_any_dag(drift, "2025-01-06", partition_date="2025-01-04", **conf)
    assert missing.state == "failed"
    assert "missing predictions partition: s3://mlops/it_broken/predictions/date=2025-01-04 " \
           "has no _SUCCESS.json" in missing.final_error()
    assert _asset_events("drift_detected", missing.run_id) == []

    # A column that is all missing in the scored day: reported, the task fails, no event.
    from include.mlops_core.demo_data import encode, generate

    frame = generate(date(2025, 1, 4), 1500)
    frame["support_calls"] = None
    store.write_bytes(f"{monitored['source']}-nan/date=2025-01-04/part-0.csv", encode(frame, "csv"))
    nan_conf = {**conf, "monitoring": {"scoring_uri": f"{monitored['source']}-nan"}}
    scored = run_any_dag(dagbag.get_dag("batch_scoring"), "2025-01-06",
                         partition_date="2025-01-04", **nan_conf)
    assert scored.state == "success", scored.error_lines()  # the model imputes missing values
    broken = run_any_dag(drift, "2025-01-06", partition_date="2025-01-04", **nan_conf)
    assert broken.state == "failed"
    assert "support_calls" in broken.final_error() and "no retrain was triggered" in \
        broken.final_error()
    assert store.exists(f"s3://mlops/{model}/drift/date=2025-01-04/report.html")
    assert _asset_events("drift_detected", broken.run_id) == []

    # The champion's training snapshot (the drift reference) is gone: a clear error.
    scored = run_any_dag(dagbag.get_dag("batch_scoring"), "2025-01-06",
                         partition_date="2025-01-03", **conf)
    assert scored.state == "success", scored.error_lines()
    client = services.mlflow_client()
    snapshot = client.get_model_version(model, "1").tags["mlops.data_snapshot"]
    store.delete(snapshot)
    gone = run_any_dag(drift, "2025-01-06", partition_date="2025-01-03", **conf)
    assert gone.state == "failed"
    assert f"missing reference partition: the training snapshot {snapshot} of {model} v1 is " \
           "gone" in gone.final_error()
    assert _asset_events("drift_detected", gone.run_id) == []


def test_multiclass_model_is_scored_and_held_to_its_live_floor(services, run_dag, dagbag,
                                                               run_any_dag, tmp_path,
                                                               monkeypatch):
    """A three-class dataset (scikit-learn's make_classification) trained, scored and monitored:
    its live ROC AUC (one-vs-rest, macro) and log loss are numbers, so a floor it meets raises
    nothing, and a floor it misses raises the alert with the observed value."""
    import math

    import pandas as pd
    import yaml
    from sklearn.datasets import make_classification

    from include.mlops_core.ingest import read_parquet_bytes, to_parquet_bytes

    name, store, client = "it_multiclass", services.store(), services.mlflow_client()
    x, y = make_classification(n_samples=3000, n_features=6, n_informative=4, n_redundant=0,
                               n_classes=3, n_clusters_per_class=1, class_sep=1.0,
                               random_state=3)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    frame["row_id"], frame["label"] = [f"r{i}" for i in range(len(frame))], y
    source, labels = f"s3://mlops-data/{name}", f"s3://mlops-data/{name}-labels"
    train_day, scored_day = frame.iloc[:1500], frame.iloc[1500:]
    store.write_bytes(f"{source}/date=2025-02-01/part-0.parquet", to_parquet_bytes(train_day))
    store.write_bytes(f"{source}/date=2025-02-02/part-0.parquet",
                      to_parquet_bytes(scored_day.drop(columns=["label"])))
    store.ensure_bucket(labels)
    store.write_bytes(f"{labels}/date=2025-02-02/labels.parquet",
                      to_parquet_bytes(scored_day[["row_id", "label"]]))
    config = {"source_uri": source, "task": "classification", "target": "label",
              "id_column": "row_id", "min_rows": 100,
              "columns": [{"name": "row_id", "type": "categorical"},
                          *({"name": f"f{i}", "type": "numeric"} for i in range(6)),
                          {"name": "label", "type": "integer", "min": 0, "max": 2}],
              "training": {"family": "logistic_regression", "hyperparameters": {"max_iter": 500}},
              "gate": {"thresholds": ["accuracy >= 0.6"], "champion_metric": "roc_auc"},
              "monitoring": {"labels_uri": labels, "performance_floor": ["roc_auc >= 0.8"]}}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("MLOPS_DATASETS_DIR", str(tmp_path))

    trained = run_dag("2025-02-02", dataset=name, partition_date="2025-02-01")
    assert trained.state == "success", trained.error_lines()
    assert champion_of(client, name) == "1"
    scored = run_any_dag(dagbag.get_dag("batch_scoring"), "2025-02-03", dataset=name,
                         partition_date="2025-02-02")
    assert scored.state == "success", scored.error_lines()
    served = read_parquet_bytes(store.read_bytes(
        f"s3://mlops/{name}/predictions/date=2025-02-02/predictions.parquet"))
    assert len(served) == 1500 and json.loads(served["classes"].iloc[0]) == [0, 1, 2]
    assert all(abs(sum(p) - 1) < 1e-4 for p in served["proba"])

    perf = dagbag.get_dag("performance_monitor")
    met = run_any_dag(perf, "2025-02-04", dataset=name, partition_date="2025-02-02",
                      monitoring={"performance_floor": ["roc_auc >= 0.8"]})
    assert met.state == "success", met.error_lines()
    assert met.tasks["performance_degraded"] == "skipped", met.tasks
    assert "ALERT" not in met.log
    (live,) = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                                 filter_string="tags.`mlops.monitor` = 'live'")
    metrics = client.get_run(live.info.run_id).data.metrics
    assert math.isfinite(metrics["live.roc_auc"]) and metrics["live.roc_auc"] > 0.8, metrics
    assert math.isfinite(metrics["live.log_loss"]) and metrics["live.rows"] == 1500, metrics

    missed = run_any_dag(perf, "2025-02-04", dataset=name, partition_date="2025-02-02",
                         monitoring={"performance_floor": ["roc_auc >= 0.999"]})
    assert missed.state == "success", missed.error_lines()
    assert missed.tasks["performance_degraded"] == "success", missed.tasks
    observed = f"{metrics['live.roc_auc']:.4f}"
    assert f"ALERT: live performance of {name} v1 on 2025-02-02 is below the floor: " \
           f"roc_auc >= 0.999 (observed {observed}" in missed.log, missed.log[-3000:]
