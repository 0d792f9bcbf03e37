"""Real services for the integration tests: SeaweedFS (S3) and an MLflow tracking server over HTTP,
started once per session on free ports, plus an Airflow metadata DB for ``dag.test()``.

Every test here is marked ``integration``; a test without the mark fails (conftest hook below),
so nothing slips into the unit suite by accident.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def registered_versions(client: Any, name: str) -> list[str]:
    """Version numbers of a registered model, ascending ([] when the model does not exist)."""
    return sorted((v.version for v in client.search_model_versions(f"name = '{name}'")), key=int)


def champion_of(client: Any, name: str) -> str | None:
    """The version behind @champion, or None."""
    from include.mlops.tracking import champion_version

    found = champion_version(client, name)
    return None if found is None else str(found.version)


@dataclass
class Services:
    s3_url: str
    mlflow_url: str
    access_key: str
    secret_key: str
    workdir: Path

    def store(self):
        from include.mlops.storage import ObjectStore, make_s3_client

        return ObjectStore(make_s3_client(endpoint_url=self.s3_url, access_key=self.access_key,
                                          secret_key=self.secret_key), endpoint=self.s3_url)

    def mlflow_client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow_url, registry_uri=self.mlflow_url)

    def connection_env(self) -> dict[str, str]:
        return {
            "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "http", "host": self.mlflow_url}),
            "AIRFLOW_CONN_MLOPS_S3": json.dumps({
                "conn_type": "aws", "login": self.access_key, "password": self.secret_key,
                "extra": {"endpoint_url": self.s3_url, "attempts": 2, "backoff_seconds": 0.2}}),
        }


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Services:
    from stack import free_port, start_mlflow, start_seaweedfs

    workdir = tmp_path_factory.mktemp("services")
    access_key, secret_key = "AK" + secrets.token_hex(8), secrets.token_hex(20)
    s3 = start_seaweedfs(workdir / "seaweedfs", port=free_port(7), access_key=access_key,
                         secret_key=secret_key, log_path=workdir / "seaweedfs.log",
                         buckets=["mlops", "mlops-data"])
    try:
        mlflow = start_mlflow(workdir / "mlflow", port=free_port(),
                              artifacts_destination="s3://mlops/mlflow-artifacts", s3_url=s3.url,
                              access_key=access_key, secret_key=secret_key,
                              log_path=workdir / "mlflow.log")
    except Exception:
        s3.stop()
        raise
    found = Services(s3.url, mlflow.url, access_key, secret_key, workdir)
    os.environ.update(found.connection_env())
    os.environ["MLOPS_ARTIFACTS_URI"] = "s3://mlops"
    os.environ["MLFLOW_TRACKING_URI"] = mlflow.url
    yield found
    mlflow.stop()
    s3.stop()


@pytest.fixture(scope="session")
def airflow_db(services: Services) -> None:
    """A migrated metadata DB (SQLite in the throw-away AIRFLOW_HOME of tests/conftest.py)."""
    result = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"],
                            capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, f"airflow db migrate failed:\n{result.stderr[-3000:]}"


@pytest.fixture
def training_dag(airflow_db: None) -> Any:
    """A freshly parsed training DAG (operators cache hooks; each test gets new instances)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("training")


@dataclass
class RunResult:
    state: str
    tasks: dict[str, str]
    log: str
    run_id: str

    def final_error(self) -> str:
        """The last exception line of the log: the message an on-call engineer reads first."""
        pattern = re.compile(r"^(include\.mlops\.errors\.\w+|airflow\.sdk\.exceptions\.\w+): ")
        found = [line for line in self.log.splitlines() if pattern.match(line)]
        assert found, "no exception line in the task log"
        return found[-1]

    def error_lines(self) -> list[str]:
        return [line for line in self.log.splitlines() if "[error" in line or "ERROR" in line]


@pytest.fixture
def dagbag(airflow_db: None) -> Any:
    """Freshly parsed DAGs (operators cache hooks; each test gets new instances)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


@pytest.fixture
def run_dag(training_dag: Any, run_any_dag: Any):
    """Run the training DAG with ``dag.test()`` (see ``run_any_dag``)."""

    def run(logical_date: str, **conf: Any) -> RunResult:
        return run_any_dag(training_dag, logical_date, **conf)

    return run


@pytest.fixture
def run_any_dag(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture):
    """Run a DAG with ``dag.test()``; returns task states and the captured task log
    (dag.test() runs tasks in this process: their log records reach caplog, the rest stdout)."""
    import logging

    from pendulum import parse

    def run(dag: Any, logical_date: str, **conf: Any) -> RunResult:
        capfd.readouterr()
        caplog.clear()
        caplog.set_level(logging.INFO)
        dag_run = dag.test(logical_date=parse(logical_date), run_conf=conf)
        out = capfd.readouterr()
        tasks = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
        log = caplog.text + out.out + out.err
        # Show the captured log again so a failing test's report includes it.
        sys.stdout.write(log[-20000:])
        return RunResult(str(dag_run.state), tasks, log, dag_run.run_id)

    return run
