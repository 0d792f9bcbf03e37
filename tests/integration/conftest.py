"""Real services for the integration tests: SeaweedFS (S3) and an MLflow tracking server over HTTP,
started once per session on free ports, plus an Airflow metadata DB for ``dag.test()``.

Every test collected under tests/integration gets the ``integration`` mark from the hook below,
so ``-m "not integration"`` leaves them all out without each test repeating the mark.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from stack import AIRFLOW_USERS, BIN, free_port, start_airflow, stop_group
from summary import AirflowApi, log_entries, log_lines, task_instances, wait_for_dag

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    # The tests that need the trainer image (the Docker trainer's, and the scheduler stack's,
    # which pins it) run last, in their own order: ./deploy.sh test starts this session while
    # the Docker engine and the image are still being prepared (trainer_image waits for them).
    # The production stack's (compose_stack) come after them: its images are built after the
    # trainer's. The tests on the shared Celery stack (celery_stack) run one after another, so
    # that it is up only while they run (pytest_runtest_teardown stops it after the last), the
    # fault tests last: they kill workers and stop MLflow.
    def needs(item: pytest.Item) -> tuple[bool, bool, bool, bool]:
        names = getattr(item, "fixturenames", ())
        celery = "celery_stack" in names
        return ("trainer_image" in names or "compose_stack" in names, "compose_stack" in names,
                celery, celery and item.path.name == "test_celery_faults.py")

    items.sort(key=needs)


def _uses_celery_stack(item: pytest.Item | None) -> bool:
    return item is not None and "celery_stack" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)  # after pytest's own teardown of the test's fixtures
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the shared Celery stack after the last test that uses it (``nextitem``: the test
    that runs next, None after the last): a session fixture would keep it running through every
    later test. Its stop is in that test's teardown time."""
    if _uses_celery_stack(item) and not _uses_celery_stack(nextitem):
        from tests.integration.celery_stack import SHARED

        SHARED.close()


# The test deployment's policy: these tests pick their own model names, sources, trainers and
# gates per run, so runs may override every section a policy can open (never the container or
# the artifact location), and loosen gates. tests/integration/test_security.py runs the strict
# default policy; tests/unit/test_policy.py covers the rules.
TEST_POLICY = {"run_overrides": ["partition_date", "lookback_days", "force", "source_uri",
                                 "model_name", "trainer", "training", "gate", "rollout",
                                 "monitoring"],
               "allow_looser_gates": True}


@dataclass
class Deployment:
    """What a deployment owns and a run cannot change: the policy file and the dataset configs
    (a session folder with a copy of include/datasets/, read by the workers at task time)."""

    policy_file: Path
    datasets_dir: Path

    def write_dataset(self, name: str, **sections: Any) -> str:
        """``<datasets dir>/<name>.yaml``: the churn demo config deep-merged with ``sections``
        (e.g. ``container={"memory_limit": "96m"}``); returns ``name`` for the run's conf."""
        import yaml

        from include.mlops_core.config import deep_merge

        raw = yaml.safe_load((REPO / "include" / "datasets" / "churn_demo.yaml").read_text())
        (self.datasets_dir / f"{name}.yaml").write_text(yaml.safe_dump(deep_merge(raw, sections)))
        return name

    def set_policy(self, policy: dict[str, Any]) -> None:
        """Replace the policy file: the workers read it when a task starts."""
        import yaml

        self.policy_file.write_text(yaml.safe_dump(policy))


@pytest.fixture(scope="session", autouse=True)
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import shutil

    import yaml

    root = tmp_path_factory.mktemp("deployment")
    datasets = root / "datasets"
    shutil.copytree(REPO / "include" / "datasets", datasets)
    policy = root / "policy.yaml"
    policy.write_text(yaml.safe_dump(TEST_POLICY))
    saved = {key: os.environ.get(key) for key in ("MLOPS_POLICY_FILE", "MLOPS_DATASETS_DIR")}
    os.environ.update(MLOPS_POLICY_FILE=str(policy), MLOPS_DATASETS_DIR=str(datasets))
    yield Deployment(policy, datasets)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def registered_versions(client: Any, name: str) -> list[str]:
    """Version numbers of a registered model, ascending ([] when the model does not exist)."""
    return sorted((v.version for v in client.search_model_versions(f"name = '{name}'")), key=int)


def champion_of(client: Any, name: str) -> str | None:
    """The version behind @champion, or None."""
    from include.mlops_core.tracking import alias_version

    found = alias_version(client, name)
    return None if found is None else str(found.version)


@dataclass
class Services:
    """The session's SeaweedFS and MLflow, with auth as ./deploy.sh runs them: ``secrets`` holds
    a fresh value for every key of a .env (scripts/stack.py SECRETS)."""

    s3_url: str
    mlflow_url: str
    secrets: dict[str, str] = field(repr=False)  # never in a failing test's output
    workdir: Path

    @property
    def access_key(self) -> str:  # the S3 admin's: tests write source data and plant files
        return self.secrets["MLOPS_S3_ADMIN_ACCESS_KEY"]

    @property
    def secret_key(self) -> str:
        return self.secrets["MLOPS_S3_ADMIN_SECRET_KEY"]

    def store(self, party: str = "ADMIN"):
        """An ObjectStore with the key of ``party`` (ADMIN, MLFLOW or WORKER)."""
        from include.mlops_core.storage import ObjectStore, make_s3_client

        return ObjectStore(make_s3_client(
            endpoint_url=self.s3_url, access_key=self.secrets[f"MLOPS_S3_{party}_ACCESS_KEY"],
            secret_key=self.secrets[f"MLOPS_S3_{party}_SECRET_KEY"]), endpoint=self.s3_url)

    def mlflow_client(self):
        """MlflowClient as the workers' service account (the login is in the environment)."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow_url, registry_uri=self.mlflow_url)

    def connection_env(self) -> dict[str, str]:
        """The workers' Connections (as ./deploy.sh creates them) as AIRFLOW_CONN_* variables."""
        from stack import connection_env

        return connection_env(self.secrets, mlflow_url=self.mlflow_url, s3_url=self.s3_url,
                              optuna_db=self.workdir / "optuna.db", attempts=2,
                              backoff_seconds=0.2)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Services:
    from stack import MLFLOW_WORKER, generate_secrets, start_throwaway_services

    workdir = tmp_path_factory.mktemp("services")
    found_secrets = generate_secrets()
    s3, mlflow = start_throwaway_services(workdir, found_secrets)
    found = Services(s3.url, mlflow.url, found_secrets, workdir)
    os.environ.update(found.connection_env())
    os.environ["MLOPS_ARTIFACTS_URI"] = "s3://mlops"
    os.environ["MLFLOW_TRACKING_URI"] = mlflow.url
    os.environ["MLFLOW_TRACKING_USERNAME"] = MLFLOW_WORKER
    os.environ["MLFLOW_TRACKING_PASSWORD"] = found_secrets["MLOPS_MLFLOW_WORKER_PASSWORD"]
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
        pattern = re.compile(r"^(include\.mlops_core\.errors\.\w+|airflow\.sdk\.exceptions\.\w+): ")
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


def docker_client() -> Any:
    import docker

    try:
        client = docker.APIClient()
        client.ping()
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"no Docker engine at the local socket ({err}): ./deploy.sh test installs and "
                    "starts one (apt-get install docker.io; dockerd)")
    return client


IMAGE_WAIT = 1500  # s: a fresh machine installs the Docker engine and builds the base image


def _image_from_background(id_file: Path) -> str:
    """The image id that ./deploy.sh test's background set-up writes to ``id_file`` (or
    ``<id_file>.failed`` with its log beside it, in ``$MLOPS_TRAINER_SETUP_LOG``)."""
    failed = id_file.with_name(id_file.name + ".failed")
    deadline = time.monotonic() + IMAGE_WAIT
    while not id_file.exists() and not failed.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"the trainer image was not ready after {IMAGE_WAIT} s ({id_file})")
        time.sleep(1)
    log = Path(os.environ.get("MLOPS_TRAINER_SETUP_LOG", "/nonexistent"))
    if failed.exists():
        pytest.fail("setting up the Docker engine or building the trainer image failed; "
                    f"{log}:\n{_tail(log, 4000)}")
    return id_file.read_text().strip()


@pytest.fixture(scope="session")
def trainer_image() -> Any:
    """The trainer image, built offline (cached by content hash: a no-op when current); its id
    is what this test deployment pins (MLOPS_TRAINER_IMAGE), as ./deploy.sh does. Under
    ./deploy.sh test it is being built in the background ($MLOPS_TRAINER_IMAGE_FILE): wait."""
    id_file = os.environ.get("MLOPS_TRAINER_IMAGE_FILE")
    if id_file:
        image_id = _image_from_background(Path(id_file))
        docker_client()
    else:
        docker_client()
        result = subprocess.run([sys.executable, str(REPO / "scripts" / "build_images.py")],
                                capture_output=True, text=True, timeout=IMAGE_WAIT)
        assert result.returncode == 0, f"build_images.py failed:\n{result.stderr[-4000:]}"
        image_id = result.stdout.strip().splitlines()[-1]
    assert image_id.startswith("sha256:"), image_id
    saved = os.environ.get("MLOPS_TRAINER_IMAGE")
    os.environ["MLOPS_TRAINER_IMAGE"] = image_id
    yield image_id
    if saved is None:
        os.environ.pop("MLOPS_TRAINER_IMAGE", None)
    else:
        os.environ["MLOPS_TRAINER_IMAGE"] = saved


# -- a real Airflow: api-server, dag-processor, scheduler ------------------------------------------
DAG_ID = "training"
TASKS = {"check_changed", "ingest", "validate", "build_features", "plan_tuning", "tune", "train",
         "select", "evaluate", "gate", "register", "approve", "promote"}
MAPPED = {"tune", "train"}  # their instances have map indexes (train[0]: the only candidate)
UNTUNED = {"tune"}  # skipped (mapped over no slot) when no candidate has a search space
# The demo with a search space (Deployment.write_dataset): 4 trials, 2 mapped tune tasks.
TUNED_TRIALS = 4
TUNED_TRAINING = {"search_space": {"l2_regularization": {"type": "float", "low": 1e-4,
                                                         "high": 1.0, "log": True}},
                  "tuning": {"n_trials": TUNED_TRIALS, "parallel_tasks": 2, "cv_folds": 2}}


def ran_ok(states: dict[str, Any]) -> bool:
    """Every task of an untuned training run succeeded (tune: skipped, nothing to tune).
    ``states``: task id -> state, or -> a task instance dict with a ``state``."""
    state = {task: value["state"] if isinstance(value, dict) else value
             for task, value in states.items()}
    return all(s == "success" or (t in UNTUNED and s == "skipped") for t, s in state.items())
PARTS = ("api-server", "dag-processor", "scheduler", "triggerer")  # triggerer: data waits
# A dataset that waits for its partition (data_wait), beside the bundled ones, for the
# scheduler's tests: WAIT_DATASET waits WAIT_MINUTES, listing every 5 s.
WAIT_DATASET, WAIT_MINUTES = "churn_wait", 1
# A dataset whose promotions a person approves, with a short answer window (0.02 h = 72 s).
APPROVAL_DATASET, APPROVAL_HOURS = "churn_approval", 0.02
# The same, for the request that nobody answers: it times out in 18 s, not 72.
SHORT_APPROVAL_DATASET, SHORT_APPROVAL_HOURS = "churn_approval_short", 0.005
STOP_ORDER = ("scheduler", "dag-processor", "api-server")  # the scheduler ends its task processes
RUN_TIMEOUT = 240
LOOP_DAGS = ("batch_scoring", "drift_monitor")  # unpaused too: the Asset chain needs them


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@dataclass
class Airflow:
    api: AirflowApi  # the admin's
    home: Path
    logs: dict[str, Path]
    users: dict[str, AirflowApi] = field(default_factory=dict)  # admin, operator, viewer
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    alerts: Any = None  # the stack's alert Connections point at these sinks (alert_sinks.py)

    def log_tails(self) -> str:
        return "\n".join(f"--- {name} ({path}) ---\n{_tail(path)}" for name, path in self.logs.items())

    def trigger(self, logical_date: str, dag_id: str = DAG_ID, as_user: str = "operator",
                **conf: Any) -> str:
        """Trigger a run over REST as ``as_user`` (the operator: who may trigger)."""
        run_id = f"it_scheduler__{logical_date}__{uuid.uuid4().hex[:6]}"
        self.users[as_user].json("POST", f"/api/v2/dags/{dag_id}/dagRuns", ok=(200, 201), json={
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
        """The task log of one try through ``GET …/taskInstances/{task}/logs/{try}`` (JSON);
        of map index 0 for a mapped task."""
        lines = log_lines(self.api, dag_id, run_id, {"task_id": task_id, "try_number": attempt,
                                                     "map_index": 0 if task_id in MAPPED else -1})
        assert lines is not None, f"no log for {task_id} try {attempt} of {run_id} from the API"
        return "\n".join(lines)

    def task_log_entries(self, run_id: str, task_id: str, attempt: int = 1,
                         dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        """The structured records of one try's task log (level, logger, event), as the UI gets
        them; text lines (a log from before structured logging) are skipped."""
        entries = log_entries(self.api, dag_id, run_id, {
            "task_id": task_id, "try_number": attempt,
            "map_index": 0 if task_id in MAPPED else -1})
        assert entries is not None, f"no log for {task_id} try {attempt} of {run_id} from the API"
        return [e for e in entries if isinstance(e, dict)]

    def failure_report(self, run_id: str, dag_id: str = DAG_ID) -> str:
        tis = self.task_instances(run_id, dag_id)
        failed = [task for task, ti in tis.items() if ti["state"] == "failed"]
        logs = "".join(f"\n--- task log of {task} ---\n"
                       f"{self.task_log(run_id, task, dag_id=dag_id)[-4000:]}" for task in failed)
        return f"tasks {self.states(run_id, dag_id)}{logs}"


def datasets_dir(folder: Path, variants: dict[str, str]) -> Path:
    """A datasets folder (``MLOPS_DATASETS_DIR``): the bundled configs, plus one variant of the
    demo per entry of ``variants`` (dataset name -> YAML appended to churn_demo.yaml): what a
    deployment sets and no run may change."""
    folder.mkdir(parents=True)
    bundled = REPO / "include" / "datasets"
    for config in bundled.glob("*.yaml"):
        (folder / config.name).write_text(config.read_text())
    for name, extra in variants.items():
        (folder / f"{name}.yaml").write_text((bundled / "churn_demo.yaml").read_text()
                                             + "\n" + extra)
    return folder


def _airflow_env(home: Path, port: int, services: Any, password_file: Path) -> dict[str, str]:
    """The Airflow processes' environment as ./deploy.sh sets it (scripts/stack.py), with the
    tests' retries and log level."""
    from stack import airflow_process_env

    env = airflow_process_env(home, port, services.secrets, passwords_file=password_file)
    env.update({"AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO", "MLOPS_TASK_RETRIES": "0",
                "MLOPS_RETRY_DELAY_SECONDS": "1"})
    return env


def _airflow_cli(env: dict[str, str], *args: str) -> None:
    result = subprocess.run([str(BIN / "airflow"), *args], capture_output=True, text=True, env=env,
                            cwd=env["AIRFLOW_HOME"], timeout=180)
    assert result.returncode == 0, \
        f"airflow {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-3000:]}"


@pytest.fixture(scope="session")
def airflow(services, trainer_image, tmp_path_factory: pytest.TempPathFactory):
    """api-server, dag-processor and scheduler (LocalExecutor) with the local stack's auth: the
    users admin, operator and viewer, the workers' Connections in the metadata DB, the trainer
    image pinned. Shared by the scheduler and security tests (one start, about a minute)."""
    from stack import configure_airflow

    home = tmp_path_factory.mktemp("airflow-scheduler")
    port = free_port()
    password_file = home / "passwords.json"
    datasets = datasets_dir(home / "datasets", {
        WAIT_DATASET: f"data_wait:\n  timeout_minutes: {WAIT_MINUTES}\n  poll_seconds: 5\n",
        APPROVAL_DATASET: f"approval:\n  required: true\n  timeout_hours: {APPROVAL_HOURS}\n",
        SHORT_APPROVAL_DATASET: "approval:\n  required: true\n  timeout_hours: "
                                f"{SHORT_APPROVAL_HOURS}\n"})
    from tests.integration.alert_sinks import AlertSinks

    sinks = AlertSinks().start()
    env = {**_airflow_env(home, port, services, password_file),
           "MLOPS_TRAINER_IMAGE": trainer_image, "MLOPS_DATASETS_DIR": str(datasets),
           **sinks.connection_env()}
    _airflow_cli(env, "db", "migrate")
    configure_airflow(services.secrets, mlflow_url=services.mlflow_url, s3_url=services.s3_url,
                      passwords_file=password_file, scratch=home, env=env,
                      optuna_db=home / "optuna.db")

    logs = {part: home / "process-logs" / f"{part}.log" for part in PARTS}
    api = {user: AirflowApi(f"http://127.0.0.1:{port}", user, services.secrets[key])
           for user, (_, key) in AIRFLOW_USERS.items()}
    found = Airflow(api["admin"], home, logs, users=api, alerts=sinks)
    try:
        found.procs.update(start_airflow(PARTS, port=port, home=home, env=env, logs=logs,
                                         timeout=120))
        for dag_id in (DAG_ID, *LOOP_DAGS):
            dag = wait_for_dag(found.api, dag_id, timeout=120)
            assert dag["is_paused"], "DAGS_ARE_PAUSED_AT_CREATION=True did not apply"
            found.api.json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
    except (Exception, SystemExit) as err:  # summary.AirflowApi reports with SystemExit
        _stop(found)
        pytest.fail(f"Airflow did not start: {err}\n{found.log_tails()}", pytrace=False)
    yield found
    _stop(found)
    sinks.stop()


def _stop(found: Airflow) -> None:
    """SIGTERM each process group, SIGKILL what is left after 15 s."""
    for part in STOP_ORDER:
        proc = found.procs.get(part)
        if proc is not None:
            stop_group(proc.pid, timeout=15)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def _celery_stacks(services: Services) -> Any:
    """The shared Celery stack's holder; stopped at the end of the session at the latest (a
    session stopped by ``-x`` or Ctrl-C before the last test that uses it)."""
    from tests.integration.celery_stack import SHARED

    yield SHARED
    SHARED.close()


@pytest.fixture
def celery_stack(_celery_stacks: Any, services: Services,
                 tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The production topology without containers (tests/integration/celery_stack.py), one
    stack for test_celery_topology.py and test_celery_faults.py: started by the first test that
    uses it (about a minute), stopped after the last (pytest_runtest_teardown above)."""
    return _celery_stacks.get(services, tmp_path_factory)


@pytest.fixture
def alert_sinks(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A real SMTP server and HTTP endpoint, and the alert Connections pointing at them, for
    one test (tests/integration/alert_sinks.py)."""
    from tests.integration.alert_sinks import AlertSinks

    sinks = AlertSinks().start()
    for key, value in sinks.connection_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLOPS_MLFLOW_UI_URL", "http://mlflow.example.test")
    yield sinks
    sinks.stop()
