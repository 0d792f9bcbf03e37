"""The production topology without containers: Airflow's api-server, dag-processor and scheduler
with the CeleryExecutor and two Celery workers, PostgreSQL as the metadata database (a database
of its own, dropped after), Redis as the broker (a db index of its own, flushed), and MLflow with
basic-auth on PostgreSQL, its artifacts in the session's S3. The training DAG runs through the
scheduler, triggered over REST, and its tasks run in processes forked from a worker pool that
imported the stages' libraries once (plugins/mlops/celery_config.py)."""

from __future__ import annotations

import os
import subprocess
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from stack import (
    AIRFLOW_USERS,
    BIN,
    MLFLOW_BUCKET,
    MLFLOW_VIEWER,
    MLFLOW_WORKER,
    MlflowLogin,
    airflow_process_env,
    configure_airflow,
    ensure_mlflow_users,
    free_port,
    start_airflow,
    start_mlflow,
    stop_group,
)
from summary import AirflowApi, wait_for_dag

from include.mlops.demo_data import write_partitions
from tests.integration.conftest import DAG_ID, TASKS, Airflow, _airflow_cli

PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379"
PARTS = ("api-server", "dag-processor", "scheduler")
WORKERS = ("worker-1", "worker-2")


def _pg(sql: str) -> None:
    import psycopg

    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres",
                             autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)
    except psycopg.OperationalError as err:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth) is not reachable: "
                    f"{err}. Start it: pg_ctlcluster <version> main start")


def _redis(db: int) -> Any:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=db, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.ConnectionError as err:
        pytest.fail(f"Redis at 127.0.0.1:6379 is not reachable: {err}. Start it: redis-server "
                    "--daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no")
    return client


@pytest.fixture(scope="module")
def celery_stack(services, tmp_path_factory: pytest.TempPathFactory):
    tag = uuid.uuid4().hex[:8]
    dbs = {name: f"it_{name}_{tag}" for name in ("airflow", "mlflow", "mlflow_auth")}
    for db in dbs.values():
        _pg(f"CREATE DATABASE {db}")
    broker_db = 8 + int(tag, 16) % 8  # db 8-15, flushed before and after
    broker = _redis(broker_db)
    broker.flushdb()
    home = tmp_path_factory.mktemp("airflow-celery")
    secrets = services.secrets
    mlflow = start_mlflow(
        home / "mlflow", port=free_port(), artifacts_destination=f"s3://{MLFLOW_BUCKET}/celery",
        s3_url=services.s3_url, access_key=secrets["MLOPS_S3_MLFLOW_ACCESS_KEY"],
        secret_key=secrets["MLOPS_S3_MLFLOW_SECRET_KEY"], log_path=home / "mlflow.log",
        auth={"admin_password": secrets["MLOPS_MLFLOW_ADMIN_PASSWORD"],
              "flask_secret_key": secrets["MLOPS_MLFLOW_FLASK_SECRET_KEY"]},
        backend_uri=f"{PG}/{dbs['mlflow']}", auth_db_uri=f"{PG}/{dbs['mlflow_auth']}")
    ensure_mlflow_users(mlflow.url, admin_password=secrets["MLOPS_MLFLOW_ADMIN_PASSWORD"],
                        users={MLFLOW_WORKER: secrets["MLOPS_MLFLOW_WORKER_PASSWORD"],
                               MLFLOW_VIEWER: secrets["MLOPS_MLFLOW_VIEWER_PASSWORD"]})

    port = free_port()
    password_file = home / "passwords.json"
    env = airflow_process_env(home, port, secrets, passwords_file=password_file, preload=False)
    env.update({
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{PG}/{dbs['airflow']}",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"{PG}/{dbs['airflow']}",
        "AIRFLOW__CORE__EXECUTOR": "airflow.providers.celery.executors.celery_executor.CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"{REDIS}/{broker_db}",
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "mlops.celery_config.CELERY_CONFIG",
        # A task message not acknowledged within this time is delivered again: longer than any
        # training task (Airflow's default, said explicitly).
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO", "MLOPS_TASK_RETRIES": "0",
        "MLOPS_POLICY_FILE": os.environ["MLOPS_POLICY_FILE"],
        "MLOPS_DATASETS_DIR": os.environ["MLOPS_DATASETS_DIR"],
    })
    _airflow_cli(env, "db", "migrate")
    configure_airflow(secrets, mlflow_url=mlflow.url, s3_url=services.s3_url,
                      passwords_file=password_file, scratch=home, env=env)
    logs = {part: home / "process-logs" / f"{part}.log" for part in (*PARTS, *WORKERS)}
    api = {user: AirflowApi(f"http://127.0.0.1:{port}", user, secrets[key])
           for user, (_, key) in AIRFLOW_USERS.items()}
    found = Airflow(api["admin"], home, logs, users=api)
    found.mlflow_url = mlflow.url  # type: ignore[attr-defined]
    try:
        found.procs.update(start_airflow(PARTS, port=port, home=home, env=env, logs=logs,
                                         timeout=120))
        for i, name in enumerate(WORKERS):
            # One log server per machine: the second worker serves none (same log folder).
            cmd = [str(BIN / "airflow"), "celery", "worker", "--concurrency", "1",
                   "--celery-hostname", f"{name}@%h", *(["--skip-serve-logs"] if i else [])]
            logs[name].parent.mkdir(parents=True, exist_ok=True)
            found.procs[name] = subprocess.Popen(
                cmd, stdout=logs[name].open("ab"), stderr=subprocess.STDOUT, cwd=home, env=env,
                stdin=subprocess.DEVNULL, start_new_session=True)
        dag = wait_for_dag(found.api, DAG_ID, timeout=120)
        assert dag["is_paused"]
        found.api.json("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
    except (Exception, SystemExit) as err:
        _stop(found, mlflow)
        pytest.fail(f"the Celery topology did not start: {err}\n{found.log_tails()}",
                    pytrace=False)
    yield found
    _stop(found, mlflow)
    broker.flushdb()
    for db in dbs.values():
        _pg(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _stop(found: Airflow, mlflow: Any) -> None:
    for name in ("scheduler", *WORKERS, "dag-processor", "api-server"):
        proc = found.procs.get(name)
        if proc is not None:
            stop_group(proc.pid, timeout=20)
    mlflow.stop()


def test_training_runs_through_celery_workers_on_postgres_and_redis(services, celery_stack):
    from mlflow import MlflowClient

    model, source = "it_celery", "s3://mlops-data/it_celery"
    write_partitions(services.store(), source, date(2025, 9, 1), 1, rows=1000)

    run_id = celery_stack.trigger("2025-09-02", model_name=model, source_uri=source)
    run = celery_stack.wait(run_id)

    assert run["state"] == "success", celery_stack.failure_report(run_id)
    tis = celery_stack.task_instances(run_id)
    assert set(tis) == TASKS and all(ti["state"] == "success" for ti in tis.values())
    # Every task went through the broker to a Celery worker, which ran it.
    worker_logs = "".join(celery_stack.logs[name].read_text(errors="replace")
                          for name in WORKERS)
    for task in TASKS:
        assert f"'task_id': '{task}'" in worker_logs or f"task_id='{task}'" in worker_logs, \
            f"{task} is not in the Celery workers' logs:\n{worker_logs[-3000:]}"
    # Each worker imported the stages' libraries once, before forking its pool.
    for name in WORKERS:
        assert "Celery worker preloaded the stages' libraries" in \
            celery_stack.logs[name].read_text(errors="replace"), name
    # MLflow on PostgreSQL: the model is registered and promoted there.
    with MlflowLogin(MLFLOW_WORKER, services.secrets["MLOPS_MLFLOW_WORKER_PASSWORD"]):
        # Both URIs explicit: an earlier test in the session may have set a process-wide one.
        client = MlflowClient(tracking_uri=celery_stack.mlflow_url,
                              registry_uri=celery_stack.mlflow_url)
        version = client.get_model_version_by_alias(model, "champion")
    assert version.version == "1"
    log = celery_stack.task_log(run_id, "promote")
    assert f"Promoted {model} v1 to @champion" in log, log[-3000:]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None


def test_tasks_start_in_processes_forked_from_a_preloaded_pool(celery_stack):
    """A Celery worker's pool processes are forks of its main process, which imported the
    libraries (Celery ``imports``); a task is a fork of a pool process (Airflow's supervisor).
    So the pool process already holds scikit-learn and pyarrow (their native libraries are
    mapped). The worker's other children (its log server, Airflow's helper) are not the pool."""
    for name in WORKERS:
        main = celery_stack.procs[name].pid
        children = {int(entry.name): (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                    for entry in Path("/proc").iterdir()
                    if entry.name.isdigit() and _parent(int(entry.name)) == main}
        # A pool process is titled ForkPoolWorker-N until it runs a task, then "airflow
        # supervisor: <task instance>" (Airflow's supervisor in that process).
        pool = [pid for pid, cmd in children.items()
                if b"ForkPoolWorker" in cmd or cmd.startswith(b"airflow supervisor")]
        assert pool, f"{name} has no pool process: {children}"
        for child in pool:
            maps = Path(f"/proc/{child}/maps").read_text()
            assert "sklearn" in maps and "pyarrow" in maps, \
                f"pool process {child} of {name} ({children[child]!r}) has not imported them"
