"""The production topology without containers: Airflow's api-server, dag-processor and scheduler
with the CeleryExecutor and two Celery workers, PostgreSQL as the metadata database (a database
of its own, dropped after), Redis as the broker (a db index of its own, flushed), and MLflow with
basic-auth on PostgreSQL, its artifacts in the session's S3. The training DAG runs through the
scheduler, triggered over REST, and its tasks run in processes forked from a worker pool that
imported the stages' libraries once (plugins/mlops_airflow/celery_config.py).

The stack (the ``celery_stack`` fixture) is the one test_celery_faults.py runs on afterwards, with
its settings (tasks get retries): these tests assert that every task succeeded on its first try.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from stack import MLFLOW_WORKER, MlflowLogin

from include.mlops_core.demo_data import write_partitions
from tests.integration.celery_stack import WORKERS, parent_pid
from tests.integration.conftest import (
    DAG_ID,
    TASKS,
    TUNED_TRAINING,
    TUNED_TRIALS,
    UNTUNED,
    ran_ok,
)


def test_training_runs_through_celery_workers_on_postgres_and_redis(services, celery_stack):
    from mlflow import MlflowClient

    model, source = "it_celery", "s3://mlops-data/it_celery"
    write_partitions(services.store(), source, date(2025, 9, 1), 1, rows=1000)

    run_id = celery_stack.trigger("2025-09-02", model_name=model, source_uri=source)
    run = celery_stack.wait(run_id)

    assert run["state"] == "success", celery_stack.failure_report(run_id)
    tis = celery_stack.task_instances(run_id)
    assert set(tis) == TASKS and ran_ok(tis)
    # The stack gives tasks retries (test_celery_faults.py's settings): none was needed.
    assert all(ti["try_number"] == 1 for ti in tis.values() if ti["state"] != "skipped"), \
        {task: ti["try_number"] for task, ti in tis.items()}
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


def test_tune_tasks_share_one_postgres_study_across_workers_and_a_rerun_adds_no_trial(
        services, celery_stack, deployment):
    """The two mapped tune tasks of a run go to the two Celery workers (one pool process each)
    and share one Optuna study in PostgreSQL: n_trials finished trials in all, one MLflow child
    run each. Clearing both over REST (the grid's Clear) makes the scheduler run them again as
    try 2: they find the budget spent and add no trial and no child run."""
    import time

    from summary import task_instances

    from include.mlops_core import tuning

    dataset = deployment.write_dataset("churn_tuned", training=TUNED_TRAINING)
    model, source = "it_celery_tune", "s3://mlops-data/it_celery_tune"
    write_partitions(services.store(), source, date(2025, 9, 3), 1, rows=1000)
    run_id = celery_stack.trigger("2025-09-04", dataset=dataset, model_name=model,
                                  source_uri=source)
    run = celery_stack.wait(run_id)
    assert run["state"] == "success", celery_stack.failure_report(run_id)

    def tune_tries() -> dict[int, tuple[str, int]]:
        return {ti["map_index"]: (ti["state"], ti["try_number"])
                for ti in task_instances(celery_stack.api, DAG_ID, run_id)
                if ti["task_id"] == "tune"}

    assert tune_tries() == {0: ("success", 1), 1: ("success", 1)}
    for name in WORKERS:  # one tune task each: both were queued at once, one pool slot each
        worker_log = celery_stack.logs[name].read_text(errors="replace")
        assert "'task_id': 'tune'" in worker_log or "task_id='tune'" in worker_log, \
            f"no tune task ran on {name}:\n{worker_log[-3000:]}"
    study = tuning.study_name(model, run_id, "hist_gradient_boosting")
    before = tuning.summary(celery_stack.optuna_url, study)
    assert before["trials"]["complete"] + before["trials"]["pruned"] == TUNED_TRIALS, before
    with MlflowLogin(MLFLOW_WORKER, services.secrets["MLOPS_MLFLOW_WORKER_PASSWORD"]):
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=celery_stack.mlflow_url,
                              registry_uri=celery_stack.mlflow_url)
        experiment = client.get_experiment_by_name(model).experiment_id
        (parent,) = client.search_runs([experiment],
                                       filter_string=f"tags.`airflow.run_id` = '{run_id}'")

        def trial_runs() -> list[str]:
            return sorted(r.info.run_id for r in client.search_runs(
                [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
                if "mlops.optuna.trial" in r.data.tags)

        trials = trial_runs()
        assert len(trials) == TUNED_TRIALS
        celery_stack.users["operator"].json(
            "POST", f"/api/v2/dags/{DAG_ID}/clearTaskInstances", json={
                "dry_run": False, "dag_run_id": run_id, "task_ids": [["tune", 0], ["tune", 1]],
                "only_failed": False, "reset_dag_runs": True, "include_downstream": False})
        deadline = time.monotonic() + 120
        while tune_tries() != {0: ("success", 2), 1: ("success", 2)}:
            assert time.monotonic() < deadline, f"tune was not run again: {tune_tries()}"
            time.sleep(2)
        run = celery_stack.wait(run_id)
        assert run["state"] == "success", celery_stack.failure_report(run_id)
        assert trial_runs() == trials
    after = tuning.summary(celery_stack.optuna_url, study)
    assert after["trials"] == before["trials"] and after["best_params"] == before["best_params"]
    log = celery_stack.task_log(run_id, "tune", attempt=2)
    assert f"budget already spent: {TUNED_TRIALS} of {TUNED_TRIALS} trials finished" in log, \
        log[-3000:]
