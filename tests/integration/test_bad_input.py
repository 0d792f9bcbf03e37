"""Bad input against an established champion: each case fails one task with a final log line that
names the file, the column and the problem; nothing is promoted and nothing written earlier changes.
"""

from __future__ import annotations

import io
import json
from datetime import date, timedelta

import pytest

from include.mlops_core.demo_data import write_partitions
from tests.bad_input_cases import CASES, GOOD_DAY, half_nan, partition_uri

MODEL = "it_bad_input"
SOURCE = f"s3://mlops-data/{MODEL}"


def _uri(day: date, ext: str = "csv") -> str:
    return partition_uri(SOURCE, day, ext)


@pytest.fixture(scope="module")
def established(services, airflow_db):
    """A champion (v1) trained on a good partition, and the objects written by that run."""
    from airflow.dag_processing.dagbag import DagBag
    from pendulum import parse

    from tests.integration.conftest import REPO

    store = services.store()
    write_partitions(store, SOURCE, GOOD_DAY, 1, rows=1000)
    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("training")
    run = dag.test(logical_date=parse((GOOD_DAY + timedelta(days=1)).isoformat()),
                   run_conf={"model_name": MODEL, "source_uri": SOURCE})
    assert str(run.state) == "success"
    return {o.uri: o.etag for o in store.list(f"s3://mlops/{MODEL}")} | \
        {o.uri: o.etag for o in store.list(SOURCE)}


def _assert_nothing_changed(services, established) -> None:
    client, store = services.mlflow_client(), services.store()
    assert [v.version for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    now = {o.uri: o.etag for o in store.list(f"s3://mlops/{MODEL}")} | \
        {o.uri: o.etag for o in store.list(SOURCE)}
    changed = {uri for uri, etag in established.items() if now.get(uri) != etag}
    assert not changed, f"objects written before the bad run changed: {changed}"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_clearly_and_changes_nothing(name, services, established, run_dag):
    case = CASES[name]
    uri = case.write(services.store(), SOURCE, case.day)

    result = run_dag((case.day + timedelta(days=1)).isoformat(), model_name=MODEL,
                     source_uri=SOURCE)

    assert result.state == "failed"
    assert result.tasks[case.task] == "failed", result.tasks
    assert all(state in ("upstream_failed", "success") for task, state in result.tasks.items()
               if task != case.task), result.tasks
    final = result.final_error()  # what an on-call engineer reads first
    for text in case.expected + ((uri,) if uri else ()):
        assert text in final, f"{text!r} missing from the final error line: {final}"
    assert "runbook: docs/runbooks/" in final
    mlflow_runs = services.mlflow_client().search_runs(
        [services.mlflow_client().get_experiment_by_name(MODEL).experiment_id],
        filter_string=f"tags.`airflow.run_id` = '{result.run_id}'")
    # The first task only lists and looks up the champion: it opens no MLflow run.
    expected_runs = [] if case.task == "check_changed" else ["FAILED"]
    assert [r.info.status for r in mlflow_runs] == expected_runs
    _assert_nothing_changed(services, established)


def test_validation_result_is_stored_as_artifact(services, established, run_dag):
    from mlflow.artifacts import load_dict

    case = CASES["half_nan"]
    day = case.day + timedelta(days=20)
    half_nan(services.store(), SOURCE, day)
    result = run_dag((day + timedelta(days=1)).isoformat(), model_name=MODEL, source_uri=SOURCE)
    assert result.tasks["validate"] == "failed"
    client = services.mlflow_client()
    [run] = client.search_runs([client.get_experiment_by_name(MODEL).experiment_id],
                               filter_string=f"tags.`airflow.run_id` = '{result.run_id}'")
    stored = load_dict(f"runs:/{run.info.run_id}/validation/gx_result.json")
    failed = [r for r in stored["results"] if not r["success"]]
    assert [r["expectation_config"]["kwargs"]["column"] for r in failed] == ["age"]
    assert failed[0]["result"]["unexpected_rows_per_file"] == {_uri(day): 500}
    s3_copy = json.loads(services.store().read_bytes(
        f"s3://mlops/{MODEL}/runs/{(day + timedelta(days=1)).isoformat()}T000000/validation.json"))
    assert s3_copy["success"] is False


@pytest.mark.parametrize("service", ["mlflow", "s3"])
def test_unreachable_service_retries_then_fails_clearly(service, services, established, run_dag,
                                                       monkeypatch):
    from stack import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    day = GOOD_DAY + timedelta(days=30 if service == "mlflow" else 31)
    write_partitions(services.store(), SOURCE, day, 1, rows=500)
    if service == "mlflow":
        monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({
            "conn_type": "http", "host": dead, "extra": {"attempts": 3, "backoff_seconds": 0.1}}))
        expected = ("MLflow tracking server", f"{dead}/health", "unreachable after 3 attempts",
                    "connection 'mlflow_default'")
    else:
        conn = json.loads(services.connection_env()["AIRFLOW_CONN_MLOPS_S3"])
        conn["extra"] = {"endpoint_url": dead, "attempts": 3, "backoff_seconds": 0.1}
        monkeypatch.setenv("AIRFLOW_CONN_MLOPS_S3", json.dumps(conn))
        expected = (f"S3 endpoint {dead}", "after 3 attempts", "connection 'mlops_s3'")

    result = run_dag((day + timedelta(days=1)).isoformat(), model_name=MODEL, source_uri=SOURCE)

    assert result.state == "failed" and result.tasks["check_changed"] == "failed"
    retries = [line for line in result.log.splitlines() if "Retrying" in line]
    assert len(retries) >= 2, "expected logged retries with backoff"
    final = result.final_error()
    assert "ServiceUnavailableError" in final
    for text in expected:
        assert text in final, f"{text!r} missing from: {final}"
    monkeypatch.undo()
    _assert_nothing_changed(services, established)


def test_read_back_snapshot_matches_source(services, established):
    """The content-addressed snapshot holds exactly the source rows (nothing lost in ingest)."""
    import pandas as pd

    store = services.store()
    [snapshot] = [u for u in established if "/snapshots/" in u and u.endswith(".parquet")]
    frame = pd.read_parquet(io.BytesIO(store.read_bytes(snapshot)))
    source = pd.read_csv(io.BytesIO(store.read_bytes(_uri(GOOD_DAY))))
    assert len(frame) == len(source) == 1000
    assert frame["customer_id"].tolist() == source["customer_id"].tolist()
