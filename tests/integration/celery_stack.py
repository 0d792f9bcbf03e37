"""The production topology without containers, for the test modules that need it
(test_celery_topology.py, test_celery_faults.py): Airflow's api-server, dag-processor and
scheduler with the CeleryExecutor and two Celery workers, PostgreSQL as the metadata database (a
database of its own, dropped after), Redis as the broker and result backend (a db index of its
own, flushed), and
MLflow with basic-auth on PostgreSQL, its artifacts in the session's S3.

Both modules share one stack (about a minute to start, 10-20 s to stop): the ``celery_stack``
fixture of tests/integration/conftest.py, through :data:`SHARED`. It starts with the first test
that uses it and stops after the last one (the tests that use it run one after another, the
fault tests last: tests/integration/conftest.py orders them), with :data:`FAULT_SETTINGS` on top
of the shared settings. :class:`CeleryStack` can kill a worker the way a lost machine dies,
start it again, and stop and start MLflow; a test that does so leaves the stack as it found it,
and each test starts with every worker ready (:meth:`SharedCeleryStack.get`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from stack import (
    AIRFLOW_USERS,
    BIN,
    MLFLOW_BUCKET,
    MLFLOW_VIEWER,
    MLFLOW_WORKER,
    airflow_process_env,
    configure_airflow,
    ensure_mlflow_users,
    free_port,
    start_airflow,
    start_mlflow,
    stop_group,
)
from summary import AirflowApi, wait_for_dag

from tests.integration.conftest import DAG_ID, Airflow, _airflow_cli

PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379"
PARTS = ("api-server", "dag-processor", "scheduler")
WORKERS = ("worker-1", "worker-2")
WORKER_START_TIMEOUT = 180  # s: each worker imports the stages' libraries before it is ready
HEARTBEAT_TIMEOUT = 20  # s
# The shared stack's settings beyond the common ones, for the fault tests: tasks get 2 retries,
# 2 s apart with exponential backoff (what MLOPS_TASK_RETRIES / MLOPS_RETRY_DELAY_SECONDS give
# every DAG), and the scheduler fails a running task whose heartbeat stopped after 20 s instead
# of 300 s. The topology tests hold with them: they assert that each task succeeded on try 1.
FAULT_SETTINGS = {
    "MLOPS_TASK_RETRIES": "2",
    "MLOPS_RETRY_DELAY_SECONDS": "2",
    # A task instance whose supervisor stopped heartbeating (its worker died) is failed by the
    # scheduler after this long, and retried if it has retries left. Default 300 s.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
}


def _pg(sql: str, server: str = PG) -> None:
    import psycopg

    address = server.split("@", 1)[1]
    try:
        with psycopg.connect(f"{server.replace('+psycopg', '')}/postgres",
                             autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)
    except psycopg.OperationalError as err:
        pytest.fail(f"PostgreSQL at {address} (user postgres, trust auth) is not reachable: "
                    f"{err}. Start it: pg_ctlcluster <version> main start")


@dataclass
class PostgresServer:
    """A throw-away PostgreSQL server of its own (``initdb`` in a temporary folder, a free port,
    trust auth for ``postgres``), for a test that restarts its database: the host's server is
    shared and must keep running. As root, the server runs as the ``postgres`` user (initdb
    refuses root)."""

    root: Path
    port: int
    bin: Path
    log: Path

    @property
    def url(self) -> str:  # SQLAlchemy's, without a database (as PG)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [*user, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-l", str(self.log),
             "-w", "-t", str(int(timeout)), *args], capture_output=True, text=True,
            timeout=timeout + 10)
        assert result.returncode == 0, \
            f"pg_ctl {' '.join(args)} failed: {result.stdout}{result.stderr}\n{self.log_tail()}"

    def start(self) -> None:
        self._ctl("start", "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c max_connections=200")

    def stop(self) -> None:
        """A fast shutdown (``-m fast``: open transactions are aborted, clients disconnected),
        as a restart by an operator or a crash-restart of the database container does."""
        self._ctl("stop", "-m", "fast")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.fail("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    return Path(initdb).parent


@contextmanager
def own_postgres() -> Iterator[PostgresServer]:
    """Start a :class:`PostgresServer`; stopped and deleted afterwards."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="it-postgres-"))  # not under pytest's root-only tmp
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = PostgresServer(root, free_port(), _postgres_bin(), root / "server.log")
    user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    result = subprocess.run([*user, str(server.bin / "initdb"), "-D", str(root / "data"),
                             "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"initdb failed: {result.stdout}{result.stderr}"
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        except AssertionError:
            pass
        shutil.rmtree(root, ignore_errors=True)


def _redis(db: int) -> Any:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=db, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.ConnectionError as err:
        pytest.fail(f"Redis at 127.0.0.1:6379 is not reachable: {err}. Start it: redis-server "
                    "--daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no")
    return client


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = parent_pid(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_process_groups(pids: list[int]) -> None:
    """SIGKILL every process group that one of ``pids`` leads or belongs to, except this one's."""
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    for group in groups - {os.getpgid(0)}:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class CeleryStack(Airflow):
    """:class:`~tests.integration.conftest.Airflow` plus the Celery workers and MLflow."""

    env: dict[str, str] = field(default_factory=dict)
    mlflow: Any = None  # stack.Service
    mlflow_options: dict[str, Any] = field(default_factory=dict)  # start_mlflow's arguments
    port: int = 0  # the api-server's
    optuna_url: str = ""  # the tune step's study storage (Connection mlops_optuna)
    _ready_from: dict[str, int] = field(default_factory=dict)  # worker: log offset at its start

    @property
    def mlflow_url(self) -> str:
        return self.mlflow.url

    # -- Celery workers --------------------------------------------------------------------------
    def start_worker(self, name: str) -> None:
        """``airflow celery worker`` with one pool process. One log server per machine: the
        second worker serves none (same log folder)."""
        cmd = [str(BIN / "airflow"), "celery", "worker", "--concurrency", "1",
               "--celery-hostname", f"{name}@%h",
               *(["--skip-serve-logs"] if WORKERS.index(name) else [])]
        log = self.logs[name]
        log.parent.mkdir(parents=True, exist_ok=True)
        self._ready_from[name] = log.stat().st_size if log.exists() else 0
        self.procs[name] = subprocess.Popen(
            cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=self.home, env=self.env,
            stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_workers_ready(self, names: tuple[str, ...] = WORKERS,
                           timeout: float = WORKER_START_TIMEOUT) -> None:
        """Until each worker logged ``<name>@<host> ready.`` since it was (re)started."""
        deadline = time.monotonic() + timeout
        waiting = list(names)
        while waiting:
            for name in list(waiting):
                proc = self.procs[name]
                assert proc.poll() is None, \
                    f"{name} exited with {proc.returncode} while starting\n{self.log_tails()}"
                with self.logs[name].open("rb") as log:
                    log.seek(self._ready_from.get(name, 0))
                    if re.search(rb"%s@\S+ ready\." % re.escape(name.encode()), log.read()):
                        waiting.remove(name)
            if waiting and time.monotonic() > deadline:
                raise AssertionError(f"{waiting} not ready after {timeout:.0f}s\n{self.log_tails()}")
            if waiting:
                time.sleep(0.5)

    def worker_running(self, ti_id: str) -> str | None:
        """The worker whose pool process supervises task instance ``ti_id`` (its process title is
        ``airflow supervisor: <ti id>``), or None."""
        for name in WORKERS:
            proc = self.procs.get(name)
            if proc is None:
                continue
            for pid in descendants(proc.pid):
                if cmdline(pid).startswith(f"airflow supervisor: {ti_id}"):
                    return name
        return None

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a worker as a lost machine dies: its process group (main process, pool,
        supervisors) and the task processes below it, which Airflow puts in process groups of
        their own (they would outlive a kill of the worker's group alone). Returns the pids."""
        proc = self.procs.pop(name)
        pids = [proc.pid, *descendants(proc.pid)]
        kill_process_groups(pids)
        proc.wait(timeout=10)
        return pids

    def restart_exited(self) -> list[tuple[str, int]]:
        """Start again every Airflow process (api-server, dag-processor, scheduler, worker) that
        exited, as the deployment's ``restart: unless-stopped`` does; returns (name, exit code)
        of each. A part is not waited for: one that cannot start yet exits again."""
        from stack import start_airflow_part

        exited = [(name, proc.returncode) for name, proc in list(self.procs.items())
                  if proc.poll() is not None]
        for name, _ in exited:
            if name in WORKERS:
                self.procs.pop(name)
                self.start_worker(name)
            else:
                self.procs[name] = start_airflow_part(name, port=self.port,
                                                      log_path=self.logs[name], cwd=self.home,
                                                      env=self.env)
        return exited

    # -- MLflow ------------------------------------------------------------------------------------
    def stop_mlflow(self) -> None:
        self.mlflow.stop(timeout=15)

    def start_mlflow(self) -> None:
        """MLflow again, on the same port, database and artifact store."""
        self.mlflow = start_mlflow(**self.mlflow_options)


@contextmanager
def start_celery_stack(services: Any, home: Path, settings: dict[str, str] | None = None,
                       pg: str = PG, workers: int = len(WORKERS)) -> Iterator[CeleryStack]:
    """Start the whole stack in ``home``, ``settings`` (environment variables) on top of the
    shared ones; the training DAG unpaused, the workers ready. Everything is stopped, the
    databases dropped and the broker db flushed afterwards. ``pg``: the PostgreSQL server of the
    Airflow and MLflow databases (SQLAlchemy URL without a database; default the host's).
    ``workers``: how many of :data:`WORKERS` to start (bench/celery_bench.py starts one)."""
    tag = uuid.uuid4().hex[:8]
    dbs = {name: f"it_{name}_{tag}" for name in ("airflow", "mlflow", "mlflow_auth", "optuna")}
    for db in dbs.values():
        _pg(f"CREATE DATABASE {db}", pg)
    broker_db = 8 + int(tag, 16) % 8  # db 8-15, flushed before and after
    broker = _redis(broker_db)
    broker.flushdb()
    secrets = services.secrets
    mlflow_options = dict(
        home=home / "mlflow", port=free_port(), artifacts_destination=f"s3://{MLFLOW_BUCKET}/celery",
        s3_url=services.s3_url, access_key=secrets["MLOPS_S3_MLFLOW_ACCESS_KEY"],
        secret_key=secrets["MLOPS_S3_MLFLOW_SECRET_KEY"], log_path=home / "mlflow.log",
        auth={"admin_password": secrets["MLOPS_MLFLOW_ADMIN_PASSWORD"],
              "flask_secret_key": secrets["MLOPS_MLFLOW_FLASK_SECRET_KEY"]},
        backend_uri=f"{pg}/{dbs['mlflow']}", auth_db_uri=f"{pg}/{dbs['mlflow_auth']}")
    mlflow = start_mlflow(**mlflow_options)
    ensure_mlflow_users(mlflow.url, admin_password=secrets["MLOPS_MLFLOW_ADMIN_PASSWORD"],
                        users={MLFLOW_WORKER: secrets["MLOPS_MLFLOW_WORKER_PASSWORD"],
                               MLFLOW_VIEWER: secrets["MLOPS_MLFLOW_VIEWER_PASSWORD"]})

    port = free_port()
    password_file = home / "passwords.json"
    env = airflow_process_env(home, port, secrets, passwords_file=password_file, preload=False)
    env.update({
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{pg}/{dbs['airflow']}",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"{pg}/{dbs['airflow']}",
        "AIRFLOW__CORE__EXECUTOR": "airflow.providers.celery.executors.celery_executor.CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"{REDIS}/{broker_db}",
        # Celery's results in Redis, as docker-compose.yaml has them: workers need no database.
        "AIRFLOW__CELERY__RESULT_BACKEND": f"{REDIS}/{broker_db}",
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "mlops_airflow.celery_config.CELERY_CONFIG",
        # A task message not acknowledged within this time is delivered again: longer than any
        # training task (Airflow's default, said explicitly).
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO", "MLOPS_TASK_RETRIES": "0",
        "MLOPS_POLICY_FILE": os.environ["MLOPS_POLICY_FILE"],
        "MLOPS_DATASETS_DIR": os.environ["MLOPS_DATASETS_DIR"],
        **(settings or {}),
    })
    _airflow_cli(env, "db", "migrate")
    configure_airflow(secrets, mlflow_url=mlflow.url, s3_url=services.s3_url,
                      passwords_file=password_file, scratch=home, env=env)
    # The tune step's studies in a PostgreSQL database, as in production (trust auth here: no
    # password); the Connection's fields are what docker-compose.yaml's airflow-init stores.
    # Imported from a file, as ./deploy.sh does: `connections add --conn-type postgres` would
    # store type "generic" (the postgres provider is not installed).
    host, port_pg = pg.split("@", 1)[1].rsplit(":", 1)
    optuna_conn = home / "optuna-connection.json"
    optuna_conn.write_text(json.dumps({"mlops_optuna": {
        "conn_type": "postgres", "host": host, "port": int(port_pg), "schema": dbs["optuna"],
        "login": "postgres"}}))
    _airflow_cli(env, "connections", "import", str(optuna_conn))
    logs = {part: home / "process-logs" / f"{part}.log" for part in (*PARTS, *WORKERS)}
    api = {user: AirflowApi(f"http://127.0.0.1:{port}", user, secrets[key])
           for user, (_, key) in AIRFLOW_USERS.items()}
    found = CeleryStack(api["admin"], home, logs, users=api, env=env, mlflow=mlflow,
                        mlflow_options=mlflow_options, port=port,
                        optuna_url=f"{pg}/{dbs['optuna']}")
    try:
        found.procs.update(start_airflow(PARTS, port=port, home=home, env=env, logs=logs,
                                         timeout=120))
        for name in WORKERS[:workers]:
            found.start_worker(name)
        dag = wait_for_dag(found.api, DAG_ID, timeout=120)
        assert dag["is_paused"]
        found.wait_workers_ready(WORKERS[:workers])
        found.api.json("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
    except (Exception, SystemExit) as err:
        _stop(found)
        pytest.fail(f"the Celery topology did not start: {err}\n{found.log_tails()}",
                    pytrace=False)
    try:
        yield found
    finally:
        _stop(found)
        broker.flushdb()
        for db in dbs.values():
            _pg(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", pg)


def _stop(found: CeleryStack) -> None:
    """SIGTERM every process group at once (each stops in 1-4 s; one after another took 14 s),
    SIGKILL what is left after 20 s; then MLflow."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(found.procs) or 1) as pool:
        list(pool.map(lambda proc: stop_group(proc.pid, timeout=20), list(found.procs.values())))
    found.mlflow.stop()


class SharedCeleryStack:
    """One stack (:func:`start_celery_stack` with :data:`FAULT_SETTINGS`) for every test that
    uses the ``celery_stack`` fixture: started by the first, stopped by :meth:`close` after the
    last (tests/integration/conftest.py calls it when the next test does not use it, and at the
    end of the session)."""

    def __init__(self) -> None:
        self._context: Any = None  # start_celery_stack's, while the stack runs
        self._stack: CeleryStack | None = None
        self._failed: str | None = None  # why it did not start: not tried again for each test

    def get(self, services: Any, tmp_path_factory: pytest.TempPathFactory) -> CeleryStack:
        """The running stack (started now if none runs), each of its workers running and
        ready and MLflow up: a test that killed a worker or stopped MLflow, and failed before
        it started them again, left them down."""
        if self._failed is not None:
            pytest.fail(f"the shared Celery stack did not start (an earlier test's error):\n"
                        f"{self._failed}", pytrace=False)
        if self._stack is None:
            context = start_celery_stack(services, tmp_path_factory.mktemp("airflow-celery"),
                                         FAULT_SETTINGS)
            try:
                self._stack = context.__enter__()
            except BaseException as err:
                self._failed = str(err)[-6000:]
                raise
            self._context = context
        stack = self._stack
        down = [name for name in WORKERS if name not in stack.procs
                or stack.procs[name].poll() is not None]
        for name in down:
            stack.procs.pop(name, None)
            stack.start_worker(name)
        if stack.mlflow.proc.poll() is not None:  # stopped by a test that failed meanwhile
            stack.start_mlflow()
        stack.wait_workers_ready(WORKERS)
        dead = [name for name, proc in stack.procs.items() if proc.poll() is not None]
        assert not dead, f"{dead} of the shared Celery stack exited\n{stack.log_tails()}"
        return stack

    def close(self) -> None:
        """Stop the stack if one runs (a later test that uses it starts a new one)."""
        context, self._context, self._stack, self._failed = self._context, None, None, None
        if context is not None:
            context.__exit__(None, None, None)


SHARED = SharedCeleryStack()
