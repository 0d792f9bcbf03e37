"""The bad-input matrix at unit speed: each broken partition of tests/bad_input_cases.py, in a
local folder, through the pipeline functions its task calls (check_changed, ingest, validate),
with MLflow on SQLite. The same cases run through the training DAG against S3 and an MLflow
server in tests/integration/test_bad_input.py; here each takes well under a second."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from include.mlops_core import pipeline
from include.mlops_core.errors import RUNBOOKS, DataError
from include.mlops_core.storage import ObjectStore
from tests.bad_input_cases import CASES
from tests.unit.helpers import churn_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_experiment("bad_input", artifact_location=(root / "artifacts").as_uri())
    return client


@pytest.mark.parametrize("name", list(CASES))
def test_each_bad_partition_fails_its_task_naming_file_column_and_runbook(
        name: str, client: Any, tmp_path: Path) -> None:
    case = CASES[name]
    store, source = ObjectStore(), str(tmp_path / "source")
    uri = case.write(store, source, case.day)
    config = churn_config(source_uri=source)
    run_id = client.create_run(client.get_experiment_by_name("bad_input").experiment_id).info.run_id
    run_ctx = pipeline.RunContext(config=config, store=store, client=client, mlflow_run_id=run_id,
                           artifacts_uri=str(tmp_path / "artifacts"),
                           run_key=f"{case.day + timedelta(days=1)}T000000")

    with pytest.raises(DataError) as raised:
        if case.task == "check_changed":
            pipeline.check_changed(config, store, [case.day], None, dag_run_id="unit")
        else:
            ingested = pipeline.ingest(run_ctx, [case.day])
            assert case.task == "validate", f"{name}: ingest accepted what {case.task} must refuse"
            pipeline.validate(run_ctx, ingested["snapshot_uri"])

    message = str(raised.value)
    for text in case.expected + ((uri,) if uri else ()):
        assert text in message, f"{text!r} missing from: {message}"
    assert message.endswith(f"(runbook: {RUNBOOKS}/{raised.value.runbook})")
    assert (REPO / RUNBOOKS / raised.value.runbook).is_file()
    # Nothing is left that a later task could take for a result: no snapshot of bad data.
    if case.task != "validate":
        assert not list((tmp_path / "artifacts").rglob("*.parquet"))
