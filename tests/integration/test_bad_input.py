"""Bad input against an established champion: each case fails one task with a final log line that
names the file, the column and the problem; nothing is promoted and nothing written earlier changes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

import pytest

from include.mlops.demo_data import encode, generate, write_partitions

MODEL = "it_bad_input"
SOURCE = f"s3://mlops-data/{MODEL}"
GOOD_DAY = date(2025, 5, 1)


@dataclass(frozen=True)
class Case:
    day: date
    write: Callable[[object, str, date], str | None]  # (store, source, day) -> file URI
    task: str
    expected: tuple[str, ...]


def _uri(day: date, ext: str = "csv") -> str:
    return f"{SOURCE}/date={day.isoformat()}/part-0.{ext}"


def _put_frame(store, day: date, frame, fmt: str = "csv") -> str:
    uri = _uri(day, fmt)
    store.write_bytes(uri, encode(frame, fmt))
    return uri


def truncated_parquet(store, day):
    payload = encode(generate(day, 500), "parquet")
    store.write_bytes(_uri(day, "parquet"), payload[: len(payload) // 2])
    return _uri(day, "parquet")


def garbage_csv(store, day):
    store.write_bytes(_uri(day), bytes(range(256)) * 40)
    return _uri(day)


def missing_column(store, day):
    return _put_frame(store, day, generate(day, 500).drop(columns=["tenure_months"]))


def renamed_column(store, day):
    return _put_frame(store, day, generate(day, 500).rename(columns={"monthly_charges": "monthly_fee"}))


def type_change(store, day):
    frame = generate(day, 500)
    frame["monthly_charges"] = frame["monthly_charges"].astype(object)
    frame.loc[::7, "monthly_charges"] = "unknown"
    return _put_frame(store, day, frame)


def empty_partition(store, day):
    return _put_frame(store, day, generate(day, 500).head(0))


def missing_partition(store, day):
    return None


def half_nan(store, day):
    frame = generate(day, 1000)
    frame.loc[frame.index % 2 == 0, "age"] = None
    return _put_frame(store, day, frame)


def single_class(store, day):
    frame = generate(day, 500)
    frame["churned"] = 0
    return _put_frame(store, day, frame)


CASES = {
    "truncated_parquet": Case(GOOD_DAY + timedelta(days=10), truncated_parquet, "ingest",
                              ("corrupt file", "cannot be read as parquet")),
    "garbage_csv": Case(GOOD_DAY + timedelta(days=11), garbage_csv, "ingest",
                        ("corrupt file", "cannot be read as csv")),
    "missing_column": Case(GOOD_DAY + timedelta(days=12), missing_column, "ingest",
                           ("schema mismatch", "missing column(s) ['tenure_months']")),
    "renamed_column": Case(GOOD_DAY + timedelta(days=13), renamed_column, "ingest",
                           ("missing column(s) ['monthly_charges']", "['monthly_fee'] (renamed?)")),
    "type_change": Case(GOOD_DAY + timedelta(days=14), type_change, "ingest",
                        ("type mismatch", "'monthly_charges'", "72 of 500 rows are not numbers",
                         "'unknown'")),
    "empty_partition": Case(GOOD_DAY + timedelta(days=15), empty_partition, "ingest",
                            ("empty partition", "hold no rows")),
    "missing_partition": Case(GOOD_DAY + timedelta(days=16), missing_partition, "check_changed",
                              ("missing partition", "date=2025-05-17",
                               "Latest partitions present")),
    "half_nan": Case(GOOD_DAY + timedelta(days=17), half_nan, "validate",
                     ("data validation failed", "expect_column_values_to_not_be_null",
                      "column 'age'", "500 of 1000 rows fail")),
    "single_class": Case(GOOD_DAY + timedelta(days=18), single_class, "validate",
                         ("data validation failed", "column 'churned'", "observed 1")),
}


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
    uri = case.write(services.store(), case.day)

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
    half_nan(services.store(), day)
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
