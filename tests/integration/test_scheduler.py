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
LOOP_DAGS = ("batch_scoring", "drift_monitor")  # unpaused too: the Asset chain needs them


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

    def trigger(self, logical_date: str, dag_id: str = DAG_ID, **conf: Any) -> str:
        run_id = f"it_scheduler__{logical_date}__{uuid.uuid4().hex[:6]}"
        self.api.json("POST", f"/api/v2/dags/{dag_id}/dagRuns", ok=(200, 201), json={
            "dag_run_id": run_id, "logical_date": f"{logical_date}T00:00:00Z", "conf": conf})
        return run_id

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.api.json("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]

    def new_run(self, dag_id: str, known: set[str], run_type: str = "asset_triggered",
                timeout: float = 90) -> str:
        """The id of a run of ``dag_id`` not in ``known``, created by the scheduler."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fresh = [r["dag_run_id"] for r in self.runs(dag_id)
                     if r["dag_run_id"] not in known and r["run_type"] == run_type]
            if fresh:
                return fresh[0]
            time.sleep(1)
        raise AssertionError(f"no new {run_type} run of {dag_id} within {timeout:.0f}s; runs "
                             f"{[(r['dag_run_id'], r['state']) for r in self.runs(dag_id)]}\n"
                             f"{self.log_tails()}")

    def wait(self, run_id: str, timeout: float = RUN_TIMEOUT, dag_id: str = DAG_ID) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.api.json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in ("success", "failed"):
                return run
            dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
            assert not dead, f"{dead} exited while {run_id} ran\n{self.log_tails()}"
            time.sleep(2)
        raise AssertionError(f"{run_id} still {run['state']} after {timeout:.0f}s; tasks "
                             f"{self.states(run_id, dag_id)}\n{self.log_tails()}")

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> dict[str, dict[str, Any]]:
        return {ti["task_id"]: ti for ti in task_instances(self.api, dag_id, run_id)}

    def states(self, run_id: str, dag_id: str = DAG_ID) -> dict[str, str | None]:
        return {task: ti["state"] for task, ti in self.task_instances(run_id, dag_id).items()}

    def task_log(self, run_id: str, task_id: str, attempt: int = 1, dag_id: str = DAG_ID) -> str:
        """The task log of one try through ``GET …/taskInstances/{task}/logs/{try}`` (JSON)."""
        lines = log_lines(self.api, dag_id, run_id, {"task_id": task_id, "try_number": attempt})
        assert lines is not None, f"no log for {task_id} try {attempt} of {run_id} from the API"
        return "\n".join(lines)

    def failure_report(self, run_id: str, dag_id: str = DAG_ID) -> str:
        tis = self.task_instances(run_id, dag_id)
        failed = [task for task, ti in tis.items() if ti["state"] == "failed"]
        logs = "".join(f"\n--- task log of {task} ---\n"
                       f"{self.task_log(run_id, task, dag_id=dag_id)[-4000:]}" for task in failed)
        return f"tasks {self.states(run_id, dag_id)}{logs}"


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
        for dag_id in (DAG_ID, *LOOP_DAGS):
            dag = wait_for_dag(found.api, dag_id, timeout=120)
            assert dag["is_paused"], "DAGS_ARE_PAUSED_AT_CREATION=True did not apply"
            found.api.json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
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


def _asset_id(api: AirflowApi, name: str) -> int:
    assets = api.json("GET", f"/api/v2/assets?name_pattern={name}&limit=50")["assets"]
    found = [a["id"] for a in assets if a["name"] == name]
    assert found, f"asset {name!r} is not registered: {assets}"
    return found[0]


def test_drifted_day_closes_the_loop_through_asset_schedules(services, airflow):
    """score (REST) → predictions Asset → drift_monitor → drift_detected Asset → training, all
    started by the scheduler; then repeated drift events inside the cooldown retrain nothing."""
    store, client = services.store(), services.mlflow_client()
    model, source = "it_sched_loop", "s3://mlops-data/it_sched_loop"
    write_partitions(store, source, date(2025, 9, 1), 2, rows=1500)
    write_partitions(store, source, date(2025, 9, 3), 1, rows=1500, drift=1.0)
    trained = airflow.trigger("2025-09-02", model_name=model, source_uri=source)
    assert airflow.wait(trained)["state"] == "success", airflow.failure_report(trained)
    assert champion_of(client, model) == "1"

    drift_runs = {r["dag_run_id"] for r in airflow.runs("drift_monitor")}
    training_runs = {r["dag_run_id"] for r in airflow.runs(DAG_ID)}
    scored = airflow.trigger("2025-09-04", dag_id="batch_scoring", model_name=model,
                             partition_date="2025-09-03", monitoring={"scoring_uri": source})
    run = airflow.wait(scored, dag_id="batch_scoring")
    assert run["state"] == "success", airflow.failure_report(scored, "batch_scoring")

    # predictions → drift_monitor, created by the scheduler from the Asset event.
    drift_run = airflow.new_run("drift_monitor", drift_runs)
    run = airflow.wait(drift_run, dag_id="drift_monitor")
    assert run["state"] == "success", airflow.failure_report(drift_run, "drift_monitor")
    assert airflow.states(drift_run, "drift_monitor") == {"check_drift": "success",
                                                          "drift_detected": "success"}
    log = airflow.task_log(drift_run, "check_drift", dag_id="drift_monitor")
    assert "Drift: " in log and "s3://mlops/it_sched_loop/drift/date=2025-09-03/report.html" in log
    assert store.exists("s3://mlops/it_sched_loop/drift/date=2025-09-03/report.html")

    # drift_detected → training (AssetOrTimeSchedule), on the days before the drifted one.
    retrain = airflow.new_run(DAG_ID, training_runs)
    run = airflow.wait(retrain)
    assert run["state"] == "success", airflow.failure_report(retrain)
    check = airflow.task_log(retrain, "check_changed")
    assert "Started by 1 event(s): drift on partition 2025-09-03 of it_sched_loop v1" in check
    assert "claimed the retrain slot" in check
    mlflow_run = client.search_runs(
        [client.get_experiment_by_name(model).experiment_id],
        filter_string=f"tags.`airflow.run_id` = '{retrain}'")[0]
    assert mlflow_run.data.tags["mlops.trigger"] == "drift_detected"
    assert "monthly_charges" in mlflow_run.data.tags["mlops.trigger.columns"]
    from mlflow.artifacts import load_dict

    card = load_dict(f"runs:/{mlflow_run.info.run_id}/promotion_card.json")
    assert card["trigger"].startswith("drift on partition 2025-09-03 of it_sched_loop v1")
    states = airflow.states(retrain)
    promoted = states["promote"] == "success"
    assert promoted or states["register"] == "skipped", states  # new champion or refusal
    assert champion_of(client, model) == ("2" if promoted else "1")
    versions = registered_versions(client, model)

    # A storm of drift events for the same model inside the cooldown: runs start, none retrains.
    asset_id = _asset_id(airflow.api, "drift_detected")
    known = {r["dag_run_id"] for r in airflow.runs(DAG_ID)}
    extra = {"dataset": "churn_demo", "model_name": model, "partition_date": "2025-09-03",
             "source_uri": source, "columns": ["monthly_charges"], "share": 0.5}
    for _ in range(3):
        airflow.api.json("POST", "/api/v2/assets/events", ok=(200, 201),
                         json={"asset_id": asset_id, "extra": extra})
    storm = airflow.new_run(DAG_ID, known)
    run = airflow.wait(storm)
    assert run["state"] == "success", airflow.failure_report(storm)
    assert airflow.states(storm)["check_changed"] == "success"
    assert airflow.states(storm)["train"] == "skipped"
    assert "cooldown: an alert-triggered retrain of it_sched_loop already started" in \
        airflow.task_log(storm, "check_changed")
    time.sleep(5)  # any further runs the events created
    for other in {r["dag_run_id"] for r in airflow.runs(DAG_ID)} - known - {storm}:
        airflow.wait(other)
        assert airflow.states(other)["train"] == "skipped", airflow.states(other)
    assert registered_versions(client, model) == versions
