"""The production topology without containers: Airflow's api-server, dag-processor and scheduler
with the CeleryExecutor and two Celery workers, PostgreSQL as the metadata database (a database
of its own, dropped after), Redis as the broker (a db index of its own, flushed), and MLflow with
basic-auth on PostgreSQL, its artifacts in the session's S3. The training DAG runs through the
scheduler, triggered over REST, and its tasks run in processes forked from a worker pool that
imported the stages' libraries once (plugins/mlops/celery_config.py)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from stack import MLFLOW_WORKER, MlflowLogin

from include.mlops.demo_data import write_partitions
from tests.integration.celery_stack import WORKERS, parent_pid, start_celery_stack
from tests.integration.conftest import TASKS, UNTUNED, ran_ok


@pytest.fixture(scope="module")
def celery_stack(services, tmp_path_factory: pytest.TempPathFactory):
    with start_celery_stack(services, tmp_path_factory.mktemp("airflow-celery")) as stack:
        yield stack


def test_training_runs_through_celery_workers_on_postgres_and_redis(services, celery_stack):
    from mlflow import MlflowClient

    model, source = "it_celery", "s3://mlops-data/it_celery"
    write_partitions(services.store(), source, date(2025, 9, 1), 1, rows=1000)

    run_id = celery_stack.trigger("2025-09-02", model_name=model, source_uri=source)
    run = celery_stack.wait(run_id)

    assert run["state"] == "success", celery_stack.failure_report(run_id)
    tis = celery_stack.task_instances(run_id)
    assert set(tis) == TASKS and ran_ok(tis)
    # Every task that ran went through the broker to a Celery worker (tune was skipped: this
    # dataset has no search space).
    worker_logs = "".join(celery_stack.logs[name].read_text(errors="replace")
                          for name in WORKERS)
    for task in TASKS - UNTUNED:
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


def test_tasks_start_in_processes_forked_from_a_preloaded_pool(celery_stack):
    """A Celery worker's pool processes are forks of its main process, which imported the
    libraries (Celery ``imports``); a task is a fork of a pool process (Airflow's supervisor).
    So the pool process already holds scikit-learn and pyarrow (their native libraries are
    mapped). The worker's other children (its log server, Airflow's helper) are not the pool."""
    for name in WORKERS:
        main = celery_stack.procs[name].pid
        children = {int(entry.name): (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                    for entry in Path("/proc").iterdir()
                    if entry.name.isdigit() and parent_pid(int(entry.name)) == main}
        # A pool process is titled ForkPoolWorker-N until it runs a task, then "airflow
        # supervisor: <task instance>" (Airflow's supervisor in that process).
        pool = [pid for pid, cmd in children.items()
                if b"ForkPoolWorker" in cmd or cmd.startswith(b"airflow supervisor")]
        assert pool, f"{name} has no pool process: {children}"
        for child in pool:
            maps = Path(f"/proc/{child}/maps").read_text()
            assert "sklearn" in maps and "pyarrow" in maps, \
                f"pool process {child} of {name} ({children[child]!r}) has not imported them"
