"""The metadata database restarted mid-run (issue 12, "Faults survived"): the production
topology of tests/integration/celery_stack.py (CeleryExecutor, two workers, Redis, MLflow with
basic-auth) on a PostgreSQL server of this module's own (the host's is shared and must keep
running), holding both the Airflow metadata DB and MLflow's databases.

PostgreSQL is stopped with a fast shutdown (open transactions aborted, every client
disconnected) while ``train`` runs, kept down for a few seconds and started again, as an
operator's restart or a crash-restart of the database container does. What Airflow 3.3 does
then (measured, and asserted below): the api-server and the Celery workers keep running; the
scheduler and the dag-processor exit on their first failed query, and the deployment's restart
policy (``restart: unless-stopped`` in docker-compose.yaml, emulated here by
:func:`restart_policy`) starts them again; a task whose MLflow or execution-API calls failed
meanwhile fails that try and is retried. The run ends ``success`` with one MLflow run and one
registered version, promoted once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from include.mlops_core.demo_data import write_partitions
from tests.integration.celery_stack import (
    WORKERS,
    CeleryStack,
    PostgresServer,
    own_postgres,
    start_celery_stack,
)
from tests.integration.conftest import TASKS, champion_of, ran_ok, registered_versions
from tests.integration.test_celery_faults import (
    FAULT_SETTINGS,
    SLOW_TRAINING,
    _login,
    _mlflow,
    _mlflow_runs,
    _wait_for,
)

DOWN_SECONDS = 5  # how long PostgreSQL stays down
# psycopg's words for a PostgreSQL that went away: refused after the stop, shutting down during
# it, or the connection closed under a query.
DB_DOWN = ("Connection refused", "the database system is shutting down",
           "server closed the connection unexpectedly")


@pytest.fixture(scope="module")
def postgres() -> PostgresServer:
    with own_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def db_stack(services, postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory):
    with start_celery_stack(services, tmp_path_factory.mktemp("airflow-celery-db-faults"),
                            FAULT_SETTINGS, pg=postgres.url) as stack:
        yield stack


def _postmaster(server: PostgresServer) -> int:
    return int((server.root / "data" / "postmaster.pid").read_text().split()[0])


@contextmanager
def restart_policy(stack: CeleryStack, every: float = 1.0) -> Iterator[list[tuple[float, str, int]]]:
    """While inside: what the deployment's ``restart: unless-stopped`` does, an Airflow process
    that exits is started again (checked every ``every`` s). Yields the (when, name, exit code)
    of each restart."""
    restarts: list[tuple[float, str, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every):
            for name, code in stack.restart_exited():
                restarts.append((time.monotonic(), name, code))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield restarts
    finally:
        stop.set()
        thread.join(timeout=30)


def _api(stack: CeleryStack, path: str) -> Any:
    """GET ``path``, or None while the api-server cannot answer (its database is down)."""
    try:
        return stack.api.json("GET", path)
    except (Exception, SystemExit):  # summary.AirflowApi reports errors with SystemExit
        return None


def test_postgres_restarted_mid_train_run_recovers(services, postgres, db_stack):
    """PostgreSQL (Airflow's metadata DB and MLflow's) goes down for DOWN_SECONDS while train
    runs and comes back. What Airflow 3.3 does: the api-server and the Celery workers ride it
    out (their requests fail with 500 / 503 meanwhile); the scheduler and the dag-processor exit
    on the first failed query (sqlalchemy OperationalError: refused, shutting down or closed), and the
    deployment's restart policy (compose ``restart: unless-stopped``; emulated here) starts them
    again. A task whose MLflow or Airflow calls failed during the outage fails that try and is
    retried. The run ends ``success`` with one MLflow run and one registered version, promoted
    once, and every process is up and healthy afterwards."""
    model, source = "it_celery_pg_restart", "s3://mlops-data/it_celery_pg_restart"
    write_partitions(services.store(), source, date(2025, 12, 1), 1, rows=4000)
    client = _mlflow(db_stack)
    run_id = db_stack.trigger("2025-12-02", model_name=model, source_uri=source,
                              training=SLOW_TRAINING)
    _wait_for("train running", lambda: db_stack.states(run_id).get("train") == "running",
              db_stack, every=0.5)

    def started() -> bool:
        runs = _mlflow_runs(client, model, run_id)
        return bool(runs) and runs[0].data.tags.get("airflow.try.train") == "1"

    with _login(services):
        _wait_for("train's first try tagged on the MLflow run", started, db_stack, every=0.1)
    before = {name: proc.pid for name, proc in db_stack.procs.items() if proc.poll() is None}
    assert set(before) == {"api-server", "dag-processor", "scheduler", *WORKERS}, before
    postmaster = _postmaster(postgres)

    with restart_policy(db_stack) as restarts:
        stopped = time.monotonic()
        postgres.stop()
        time.sleep(DOWN_SECONDS)
        postgres.start()
        back = time.monotonic()
        assert _postmaster(postgres) != postmaster, "PostgreSQL was not restarted"
        deadline = back + 300
        run: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            run = _api(db_stack, f"/api/v2/dags/training/dagRuns/{run_id}")
            if run is not None and run["state"] in ("success", "failed"):
                break
            time.sleep(2)
        recovered = time.monotonic() - back
        assert run is not None and run["state"] in ("success", "failed"), \
            f"{run_id} not finished {recovered:.0f}s after PostgreSQL came back; restarts " \
            f"{restarts}\n{db_stack.log_tails()}"
        time.sleep(3)  # a part restarted just now would exit within this if it could not run

    tis = db_stack.task_instances(run_id)
    report = {task: (ti["state"], ti["try_number"]) for task, ti in tis.items()}
    exited = sorted({name for _, name, _ in restarts})
    print(f"\nPostgreSQL down {back - stopped:.1f}s during train; run {run['state']} "
          f"{recovered:.0f}s after it came back; restarted by the restart policy: "
          f"{[(name, code, round(at - stopped, 1)) for at, name, code in restarts]}; "
          f"tasks (state, try) {report}")
    assert run["state"] == "success", db_stack.failure_report(run_id)
    assert set(tis) == TASKS and ran_ok(tis), report
    # Only the scheduler and the dag-processor may need the restart policy; the api-server and
    # the workers rode the outage out (the same processes as before).
    assert set(exited) <= {"scheduler", "dag-processor"}, restarts
    for name in ("api-server", *WORKERS):
        assert db_stack.procs[name].pid == before[name], f"{name} was replaced"
    # Each part that exited said why: the database was unreachable. What the driver says
    # depends on where the stop caught it: mid-query, during the shutdown, or after it.
    for name in exited:
        log = Path(db_stack.logs[name]).read_text(errors="replace")
        assert "OperationalError" in log and any(text in log for text in DB_DOWN), log[-3000:]
    # Everything is up now, and the scheduler and dag-processor report healthy.
    dead = {name: proc.returncode for name, proc in db_stack.procs.items()
            if proc.poll() is not None}
    assert not dead, f"{dead} exited\n{db_stack.log_tails()}"
    health = db_stack.api.json("GET", "/api/v2/monitor/health")
    assert health["metadatabase"]["status"] == "healthy", health
    assert health["scheduler"]["status"] == "healthy", health
    assert health["dag_processor"]["status"] == "healthy", health
    # A try that failed did so on the outage (the database or MLflow behind it), not silently.
    for task, ti in tis.items():
        for attempt in range(1, ti["try_number"]):
            log = db_stack.task_log(run_id, task, attempt=attempt)
            assert any(text in log for text in ("503", "OperationalError", "500")), \
                f"{task} try {attempt} failed for another reason:\n{log[-3000:]}"
    # One MLflow run, one registered version, promoted once.
    with _login(services):
        runs = _mlflow_runs(client, model, run_id)
        assert len(runs) == 1, [r.info.run_id for r in runs]
        assert runs[0].data.tags["mlops.outcome"] == "promoted"
        assert registered_versions(client, model) == ["1"]
        assert champion_of(client, model) == "1"
        assert client.get_model_version(model, "1").run_id == runs[0].info.run_id
    assert len(services.store().list(f"s3://mlops/audit/{model}")) == 1
