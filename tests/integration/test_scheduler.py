"""The training DAG through a real Airflow scheduler and api-server, triggered over the REST API v2.

``dag.test()`` ignores pools and writes no task log files; here the DAG runs the way it does in
production: dag-processor → scheduler → LocalExecutor task processes that talk to the api-server's
execution API. Airflow lives in its own throw-away AIRFLOW_HOME (not the one tests/conftest.py set
up for the dag.test() tests) against the session's SeaweedFS and MLflow.

Unpausing the DAG makes the daily schedule create a run for the latest complete day with the
default Params (model churn_demo, source s3://mlops-data/churn); with no data there it fails in
check_changed. Every test uses its own model name and source prefix, so that run cannot touch
what is asserted here; it only takes the ``max_active_runs=1`` slot for a few seconds.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from stack import BIN, free_port, http_ok, start_airflow_part, stop_group, wait_until
from summary import AirflowApi, log_lines, task_instances, wait_for_dag

from include.mlops.demo_data import encode, generate, write_partitions
from tests.integration.conftest import REPO, champion_of, registered_versions

DAG_ID = "training"
TASKS = {"check_changed", "ingest", "validate", "build_features", "train", "evaluate", "gate",
         "register", "promote"}
PARTS = ("api-server", "dag-processor", "scheduler")
STOP_ORDER = ("scheduler", "dag-processor", "api-server")  # the scheduler ends its task processes
RUN_TIMEOUT = 240


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@dataclass
class Airflow:
    api: AirflowApi
    home: Path
    logs: dict[str, Path]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def log_tails(self) -> str:
        return "\n".join(f"--- {name} ({path}) ---\n{_tail(path)}" for name, path in self.logs.items())

    def trigger(self, logical_date: str, **conf: Any) -> str:
        run_id = f"it_scheduler__{logical_date}__{uuid.uuid4().hex[:6]}"
        self.api.json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", ok=(200, 201), json={
            "dag_run_id": run_id, "logical_date": f"{logical_date}T00:00:00Z", "conf": conf})
        return run_id

    def wait(self, run_id: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.api.json("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
            if run["state"] in ("success", "failed"):
                return run
            dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
            assert not dead, f"{dead} exited while {run_id} ran\n{self.log_tails()}"
            time.sleep(2)
        raise AssertionError(f"{run_id} still {run['state']} after {timeout:.0f}s; tasks "
                             f"{self.states(run_id)}\n{self.log_tails()}")

    def task_instances(self, run_id: str) -> dict[str, dict[str, Any]]:
        return {ti["task_id"]: ti for ti in task_instances(self.api, DAG_ID, run_id)}

    def states(self, run_id: str) -> dict[str, str | None]:
        return {task: ti["state"] for task, ti in self.task_instances(run_id).items()}

    def task_log(self, run_id: str, task_id: str, attempt: int = 1) -> str:
        """The task log of one try through ``GET …/taskInstances/{task}/logs/{try}`` (JSON)."""
        lines = log_lines(self.api, DAG_ID, run_id, {"task_id": task_id, "try_number": attempt})
        assert lines is not None, f"no log for {task_id} try {attempt} of {run_id} from the API"
        return "\n".join(lines)

    def failure_report(self, run_id: str) -> str:
        tis = self.task_instances(run_id)
        failed = [task for task, ti in tis.items() if ti["state"] == "failed"]
        logs = "".join(f"\n--- task log of {task} ---\n{self.task_log(run_id, task)[-4000:]}"
                       for task in failed)
        return f"tasks {self.states(run_id)}{logs}"


def _airflow_env(home: Path, port: int, services: Any, password_file: Path) -> dict[str, str]:
    """The complete environment of the Airflow processes. Nothing AIRFLOW* is inherited: pytest's
    own process has the dag.test() settings of tests/conftest.py in os.environ."""
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AIRFLOW", "PYTEST_"))}
    env.update(services.connection_env())
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'plugins'}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple."
                                      "simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "MLOPS_TASK_RETRIES": "0",
        "MLOPS_RETRY_DELAY_SECONDS": "1",
        "MLOPS_ARTIFACTS_URI": "s3://mlops",
        "GX_ANALYTICS_ENABLED": "False",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    })
    return env


def _airflow_cli(env: dict[str, str], *args: str) -> None:
    result = subprocess.run([str(BIN / "airflow"), *args], capture_output=True, text=True, env=env,
                            cwd=env["AIRFLOW_HOME"], timeout=180)
    assert result.returncode == 0, \
        f"airflow {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-3000:]}"


@pytest.fixture(scope="module")
def airflow(services, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("airflow-scheduler")
    port = free_port()
    password = secrets.token_urlsafe(18)
    password_file = home / "passwords.json"
    password_file.write_text(json.dumps({"admin": password}))
    password_file.chmod(0o600)
    env = _airflow_env(home, port, services, password_file)
    _airflow_cli(env, "db", "migrate")
    _airflow_cli(env, "pools", "set", "mlops_promotion", "1", "serializes model promotion")

    logs = {part: home / "process-logs" / f"{part}.log" for part in PARTS}
    found = Airflow(AirflowApi(f"http://127.0.0.1:{port}", "admin", password), home, logs)
    try:
        for part in PARTS:
            found.procs[part] = start_airflow_part(part, port=port, log_path=logs[part], cwd=home,
                                                   env=env)
        wait_until(lambda: http_ok(f"{found.api.url}/api/v2/monitor/health"), 120,
                   "Airflow api-server", found.procs["api-server"], logs["api-server"])
        dead = {part: proc.returncode for part, proc in found.procs.items() if proc.poll() is not None}
        assert not dead, f"exited while starting: {dead}"
        dag = wait_for_dag(found.api, DAG_ID, timeout=120)
        assert dag["is_paused"], "DAGS_ARE_PAUSED_AT_CREATION=True did not apply"
        found.api.json("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
    except (Exception, SystemExit) as err:  # summary.AirflowApi reports with SystemExit
        _stop(found)
        pytest.fail(f"Airflow did not start: {err}\n{found.log_tails()}", pytrace=False)
    yield found
    _stop(found)


def _stop(found: Airflow) -> None:
    """SIGTERM each process group, SIGKILL what is left after 15 s."""
    for part in STOP_ORDER:
        proc = found.procs.get(part)
        if proc is not None:
            stop_group(proc.pid, timeout=15)
            proc.wait(timeout=10)


def test_rest_triggered_run_trains_and_promotes_through_the_pool(services, airflow):
    model, source = "it_sched_pool", "s3://mlops-data/it_sched_pool"
    write_partitions(services.store(), source, date(2025, 8, 1), 1, rows=1000)

    # CronDataIntervalTimetable("@daily"): logical date 2025-08-02 covers [08-01, 08-02).
    run_id = airflow.trigger("2025-08-02", model_name=model, source_uri=source)
    run = airflow.wait(run_id)

    assert run["state"] == "success", airflow.failure_report(run_id)
    assert run["run_type"] == "manual" and run["data_interval_start"].startswith("2025-08-01")
    tis = airflow.task_instances(run_id)
    assert set(tis) == TASKS
    assert all(ti["state"] == "success" for ti in tis.values()), airflow.states(run_id)
    assert tis["promote"]["pool"] == "mlops_promotion"
    assert {ti["pool"] for task, ti in tis.items() if task != "promote"} == {"default_pool"}
    client = services.mlflow_client()
    assert registered_versions(client, model) == ["1"] and champion_of(client, model) == "1"
    log = airflow.task_log(run_id, "promote")
    assert f"Promoted {model} v1 to @champion" in log, log[-3000:]


def test_failed_run_task_log_names_file_and_column(services, airflow):
    model, source = "it_sched_schema", "s3://mlops-data/it_sched_schema"
    day = date(2025, 8, 10)
    uri = f"{source}/date={day.isoformat()}/part-0.csv"
    services.store().write_bytes(uri, encode(generate(day, 500).drop(columns=["tenure_months"]),
                                             "csv"))

    run_id = airflow.trigger("2025-08-11", model_name=model, source_uri=source)
    run = airflow.wait(run_id)

    assert run["state"] == "failed", airflow.states(run_id)
    states = airflow.states(run_id)
    assert states["check_changed"] == "success" and states["ingest"] == "failed", states
    assert all(states[t] == "upstream_failed" for t in TASKS - {"check_changed", "ingest"}), states
    expected = (uri, "tenure_months", "runbook: docs/runbooks/schema-mismatch.md")
    log = airflow.task_log(run_id, "ingest")
    for text in expected:
        assert text in log, f"{text!r} missing from the ingest log (REST):\n{log[-3000:]}"
    path = airflow.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / "task_id=ingest" / \
        "attempt=1.log"
    assert path.is_file(), f"no task log file at {path}"
    on_disk = path.read_text()
    for text in expected:
        assert text in on_disk, f"{text!r} missing from {path}:\n{on_disk[-3000:]}"
    assert registered_versions(services.mlflow_client(), model) == []


def test_back_to_back_runs_queue_and_each_promotes(services, airflow):
    store, client = services.store(), services.mlflow_client()
    models = {"it_sched_first": "2025-08-21", "it_sched_second": "2025-08-22"}
    for model, logical_date in models.items():
        day = date.fromisoformat(logical_date) - timedelta(days=1)
        write_partitions(store, f"s3://mlops-data/{model}", day, 1, rows=1000)

    run_ids = {model: airflow.trigger(logical_date, model_name=model,
                                      source_uri=f"s3://mlops-data/{model}")
               for model, logical_date in models.items()}
    runs = {model: airflow.wait(run_id) for model, run_id in run_ids.items()}

    for model, run in runs.items():
        assert run["state"] == "success", airflow.failure_report(run_ids[model])
        assert registered_versions(client, model) == ["1"] and champion_of(client, model) == "1"
    # max_active_runs=1: the second run started only after the first had finished.
    first, second = sorted(runs.values(), key=lambda r: datetime.fromisoformat(r["start_date"]))
    assert datetime.fromisoformat(second["start_date"]) >= \
        datetime.fromisoformat(first["end_date"]), (first, second)
