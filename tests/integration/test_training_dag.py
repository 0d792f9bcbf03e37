"""The training DAG end to end with dag.test() against a real MLflow server and a real S3 store.

Each test uses its own model name and source prefix so champions never leak between tests.
"""

from __future__ import annotations

import json
from datetime import date

from include.mlops_core.demo_data import write_partitions
from tests.integration.conftest import champion_of, registered_versions

TASKS = ["check_changed", "ingest", "validate", "build_features", "train", "evaluate", "gate",
         "register", "approve", "promote"]


def load_dict(uri: str) -> dict:
    from mlflow.artifacts import load_dict as mlflow_load_dict

    return mlflow_load_dict(uri)


def _mlflow_run(client, dag_run_id: str):
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`airflow.run_id` = '{dag_run_id}'")
    assert len(runs) == 1, f"expected one MLflow run for {dag_run_id}, found {len(runs)}"
    return runs[0]


def test_first_run_trains_registers_and_promotes(services, run_dag):
    store, client, model = services.store(), services.mlflow_client(), "it_first"
    source = "s3://mlops-data/it_first"
    write_partitions(store, source, date(2025, 1, 1), 2, rows=1500)

    # CronDataIntervalTimetable("@daily"): logical date 2025-01-03 covers [01-02, 01-03).
    result = run_dag("2025-01-03", model_name=model, source_uri=source)

    assert result.state == "success", result.error_lines()
    assert all(result.tasks[t] == "success" for t in TASKS), result.tasks
    assert registered_versions(client, model) == ["1"]
    assert champion_of(client, model) == "1"
    assert "Gate APPROVED for it_first" in result.log

    run = _mlflow_run(client, result.run_id)
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED" and tags["mlops.outcome"] == "promoted"
    assert tags["airflow.dag_id"] == "training" and tags["airflow.logical_date"].startswith("2025-01-03")
    assert {"airflow.try.ingest", "airflow.try.train", "airflow.try.promote"} <= set(tags)
    assert {"accuracy", "f1", "roc_auc", "log_loss", "data.rows", "train_seconds"} <= set(metrics)
    assert any(k.startswith("slice.region.") for k in metrics)
    assert 0.6 < metrics["roc_auc"] <= 1.0
    assert run.data.params["family"] == "hist_gradient_boosting"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["churn_demo"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"data", "validation", "evaluation", "plots", "promotion_card.json",
            "promotion_card.html", "reproducibility.json"} <= artifacts

    card = load_dict(f"runs:/{run.info.run_id}/promotion_card.json")
    assert card["decision"]["approved"] is True
    repro = load_dict(f"runs:/{run.info.run_id}/reproducibility.json")
    assert repro["seed"] == 42 and repro["data"]["partitions"] == ["date=2025-01-02"]
    assert repro["packages"]["scikit-learn"]

    version = client.get_model_version(model, "1")
    assert version.tags["mlops.data_fingerprint"] == repro["data"]["fingerprint"]
    assert version.tags["mlops.code_version"] == repro["code_version"]
    assert version.tags["audit.promoted_from"] == "none"
    assert version.tags["audit.promoted_by"].startswith("airflow:training/")

    manifest = json.loads(store.read_bytes(f"s3://mlops/{model}/runs/2025-01-03T000000/manifest.json"))
    assert manifest["row_count"] == 1500
    assert [f["key"] for f in manifest["files"]] == ["date=2025-01-02/part-0.csv"]
    assert all(f["etag"] and f["size"] > 0 for f in manifest["files"])
    audit = store.list(f"s3://mlops/audit/{model}")
    assert len(audit) == 1
    record = json.loads(store.read_bytes(audit[0].uri))
    assert record["from_version"] == "none" and record["to_version"] == "1"
    assert record["mlflow_run_id"] == run.info.run_id

    # The model logged with signature + input example loads and scores like any MLflow model.
    import mlflow.pyfunc
    import pandas as pd

    loaded = mlflow.pyfunc.load_model(f"models:/{model}@champion")
    assert loaded.metadata.signature is not None
    frame = pd.read_parquet(__import__("io").BytesIO(
        store.read_bytes(f"s3://mlops/{model}/runs/2025-01-03T000000/test.parquet")))
    assert len(loaded.predict(frame.head(10))) == 10

    # Unchanged data + code + params: the re-run skips training and registers nothing.
    again = run_dag("2025-01-03", model_name=model, source_uri=source)
    assert again.state == "success"
    assert again.tasks["check_changed"] == "success"
    assert all(again.tasks[t] == "skipped" for t in TASKS[1:]), again.tasks
    assert "Skipping training: data fingerprint" in again.log
    assert registered_versions(client, model) == ["1"]
    assert not client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.`airflow.run_id` = '{again.run_id}'"), \
        "a skipped run left an MLflow run behind"

    # Forced re-run on the same date: same model, same keys; the gate refuses an equal model.
    before = {o.uri: o.etag for o in store.list(f"s3://mlops/{model}")}
    forced = run_dag("2025-01-03", model_name=model, source_uri=source, force=True)
    assert forced.state == "success"
    assert forced.tasks["gate"] == "success" and forced.tasks["register"] == "skipped"
    assert "Gate REJECTED" in forced.log and "improvement +0.0000" in forced.log
    assert "Data unchanged since snapshot" in forced.log  # the files were not read again
    after = {o.uri: o.etag for o in store.list(f"s3://mlops/{model}")}
    assert set(after) == set(before), "a re-run for the same logical date added objects"
    snapshot = [u for u in before if "/snapshots/" in u and u.endswith(".parquet")]
    assert len(snapshot) == 1 and after[snapshot[0]] == before[snapshot[0]]
    assert registered_versions(client, model) == ["1"] and len(store.list(f"s3://mlops/audit/{model}")) == 1


def test_better_data_promotes_and_worse_is_rejected(services, run_dag):
    store, client, model = services.store(), services.mlflow_client(), "it_lifecycle"
    source = "s3://mlops-data/it_lifecycle"
    loose_gate = {"thresholds": ["roc_auc >= 0.5"]}
    write_partitions(store, source, date(2025, 2, 1), 1, rows=300, label_noise=0.3)
    write_partitions(store, source, date(2025, 2, 2), 1, rows=6000, seed=11)
    write_partitions(store, source, date(2025, 2, 3), 1, rows=3000, seed=12)

    weak = run_dag("2025-02-02", model_name=model, source_uri=source, gate=loose_gate)
    assert weak.state == "success" and champion_of(client, model) == "1"

    better = run_dag("2025-02-03", model_name=model, source_uri=source, gate=loose_gate)
    assert better.state == "success", better.error_lines()
    assert better.tasks["promote"] == "success"
    assert champion_of(client, model) == "2"
    line = next(x for x in better.log.splitlines() if "Gate APPROVED" in x)
    assert "champion v1" in line and "PASS champion comparison" in line
    records = [json.loads(store.read_bytes(o.uri)) for o in store.list(f"s3://mlops/audit/{model}")]
    assert {(r["from_version"], r["to_version"]) for r in records} == {("none", "1"), ("1", "2")}

    # A one-split stump cannot beat the champion on the same 750 held-out rows.
    stump = {"hyperparameters": {"max_iter": 1, "max_depth": 1}}
    worse = run_dag("2025-02-04", model_name=model, source_uri=source, gate=loose_gate,
                    training=stump)
    assert worse.state == "success"  # a rejection is an outcome, not a crash
    assert worse.tasks["gate"] == "success"
    assert worse.tasks["register"] == "skipped" and worse.tasks["promote"] == "skipped"
    assert "Gate REJECTED for it_lifecycle" in worse.log and "FAIL champion comparison" in worse.log
    assert registered_versions(client, model) == ["1", "2"] and champion_of(client, model) == "2"
    run = _mlflow_run(client, worse.run_id)
    assert run.data.tags["mlops.outcome"] == "rejected" and run.data.tags["mlops.gate"] == "rejected"
    card = load_dict(f"runs:/{run.info.run_id}/promotion_card.json")
    assert card["decision"]["approved"] is False
    assert card["champion"]["version"] == "2"


def test_a_challenger_better_by_noise_is_refused_under_require_significance(services, run_dag):
    """Same data, same challenger, two gates: a higher ROC AUC on 500 held-out rows that
    DeLong's test cannot tell from noise is refused when the gate requires significance, and
    promoted on the point comparison when it does not."""
    store, client, model = services.store(), services.mlflow_client(), "it_noise"
    source = "s3://mlops-data/it_noise"
    write_partitions(store, source, date(2025, 4, 1), 1, rows=2000, seed=7)
    write_partitions(store, source, date(2025, 4, 2), 1, rows=2000, seed=21)
    first = run_dag("2025-04-01", model_name=model, source_uri=source, partition_date="2025-04-01")
    assert first.state == "success" and champion_of(client, model) == "1"

    strict = run_dag("2025-04-02", model_name=model, source_uri=source,
                     partition_date="2025-04-02", gate={"require_significance": True})
    assert strict.state == "success", strict.error_lines()
    assert strict.tasks["gate"] == "success" and strict.tasks["register"] == "skipped"
    card = load_dict(f"runs:/{_mlflow_run(client, strict.run_id).info.run_id}/promotion_card.json")
    test = card["champion"]["significance"]
    assert test["test"] == "delong" and test["metric"] == "roc_auc"
    assert test["difference"] > 0 > test["low"], "precondition: better on these rows, by noise"
    failed = [c for c in card["decision"]["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["significance"]
    assert "FAIL significance: roc_auc: challenger" in strict.log
    assert registered_versions(client, model) == ["1"]

    # The gate as the dataset declares it (require_significance false), said explicitly: in one
    # process, dag.test() keeps a run's conf as the DAG's Param default for the next run (the
    # task SDK's Param.resolve stores the value on the DAG's own Param object).
    plain = run_dag("2025-04-04", model_name=model, source_uri=source, partition_date="2025-04-02",
                    gate={"require_significance": False})
    assert plain.state == "success" and plain.tasks["promote"] == "success"
    assert champion_of(client, model) == "2"
    card = load_dict(f"runs:/{_mlflow_run(client, plain.run_id).info.run_id}/promotion_card.json")
    assert card["champion"]["significance"]["low"] == test["low"]  # the same rows, the same test
    assert "significance" not in [c["name"] for c in card["decision"]["checks"]]


def test_threshold_failure_blocks_first_model(services, run_dag):
    store, client, model = services.store(), services.mlflow_client(), "it_threshold"
    source = "s3://mlops-data/it_threshold"
    write_partitions(store, source, date(2025, 3, 1), 1, rows=600)
    result = run_dag("2025-03-02", model_name=model, source_uri=source,
                     gate={"thresholds": ["roc_auc >= 0.99"]})
    assert result.state == "success"
    assert result.tasks["register"] == "skipped"
    assert "FAIL threshold roc_auc >= 0.99" in result.log
    assert registered_versions(client, model) == [] and champion_of(client, model) is None


def test_local_parquet_source(services, run_dag, tmp_path):
    from include.mlops_core.storage import ObjectStore

    source = str(tmp_path / "churn")
    write_partitions(ObjectStore(), source, date(2025, 4, 1), 1, rows=800, fmt="parquet")
    result = run_dag("2025-04-02", model_name="it_local", source_uri=source)
    assert result.state == "success", result.error_lines()
    assert champion_of(services.mlflow_client(), "it_local") == "1"
