"""Faults the production topology survives (tests/integration/celery_stack.py: CeleryExecutor,
two workers, PostgreSQL, Redis, MLflow with basic-auth on PostgreSQL), with the training DAG
triggered over REST:

- a Celery worker dies (SIGKILL of its processes and the task process below them, as a lost
  machine or container) while ``train`` runs: the scheduler notices the task's missing
  heartbeat, the task is retried on the other worker, and the run ends with one MLflow run and
  one registered version;
- MLflow is down when ``promote`` starts: the task fails with the classified
  ``ServiceUnavailableError`` (runbook named), nothing is promoted, and the retry promotes once
  MLflow is back;
- six runs triggered at once: they run one after another (``max_active_runs=1``), there are no
  duplicate versions, one promotion at a time, every decision and promotion is recorded, and
  the best model that passed the gate is @champion;
- the worker running ``promote`` dies twice: before the alias move, and the instant
  @champion moved (before the version's audit tags and record): @champion is never unset, never
  at an incomplete version, and the third try completes the half-done promotion (v1 -> v2).

The stack (the ``celery_stack`` fixture) is shared with test_celery_topology.py, whose tests run
first; these tests run last on it. Its settings beyond the common ones (FAULT_SETTINGS in
celery_stack.py): tasks get 2 retries, 2 s apart with exponential backoff (what
MLOPS_TASK_RETRIES / MLOPS_RETRY_DELAY_SECONDS give every DAG), and the scheduler fails a running
task whose heartbeat stopped after 20 s instead of 300 s.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from typing import Any

from stack import MLFLOW_WORKER, MlflowLogin

from include.mlops_core.demo_data import write_partitions
from tests.integration.celery_stack import (  # FAULT_SETTINGS: test_celery_db_faults.py's
    FAULT_SETTINGS,  # noqa: F401
    HEARTBEAT_TIMEOUT,
    WORKERS,
    CeleryStack,
)
from tests.integration.conftest import TASKS, champion_of, ran_ok, registered_versions


def _mlflow(stack: CeleryStack) -> Any:
    from mlflow import MlflowClient

    # Both URIs explicit: an earlier test in the session may have set a process-wide one.
    return MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)


def _login(services: Any) -> MlflowLogin:
    return MlflowLogin(MLFLOW_WORKER, services.secrets["MLOPS_MLFLOW_WORKER_PASSWORD"])


def _mlflow_runs(client: Any, model: str, dag_run_id: str) -> list[Any]:
    experiment = client.get_experiment_by_name(model)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`airflow.run_id` = '{dag_run_id}'")


def _wait_for(what: str, check: Any, stack: CeleryStack, timeout: float = 180,
              every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"not within {timeout:.0f}s: {what}\n{stack.log_tails()}")


def _log_since(stack: CeleryStack, name: str, offset: int) -> str:
    return stack.logs[name].read_bytes()[offset:].decode(errors="replace")


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


# A model that takes a few seconds to fit on 3000 rows, so the kill lands inside train.
SLOW_TRAINING = {"hyperparameters": {"max_iter": 400, "learning_rate": 0.05,
                                     "max_leaf_nodes": 63}}


def test_worker_killed_mid_train_is_retried_on_the_other_worker(services, celery_stack):
    """The worker running train is SIGKILLed, with the task process below it, as a lost machine
    or container dies, after train started and before it logged its model. Nothing tells the
    scheduler: the task's heartbeat stops, the scheduler fails that try after the heartbeat
    timeout, and the retry runs on the other worker, in the same MLflow run."""
    model, source = "it_celery_kill", "s3://mlops-data/it_celery_kill"
    write_partitions(services.store(), source, date(2025, 10, 1), 1, rows=4000)
    client = _mlflow(celery_stack)
    run_id = celery_stack.trigger("2025-10-02", model_name=model, source_uri=source,
                                  training=SLOW_TRAINING)

    train = _wait_for("train running", lambda: (ti := celery_stack.task_instances(run_id)
                                                .get("train")) and ti["state"] == "running" and ti,
                      celery_stack)

    # train has started its work once its try is tagged on the DAG run's MLflow run.
    def started() -> bool:
        runs = _mlflow_runs(client, model, run_id)
        return bool(runs) and runs[0].data.tags.get("airflow.try.train") == "1"

    with _login(services):
        _wait_for("train's first try tagged on the MLflow run", started, celery_stack, every=0.1)
    victim = celery_stack.worker_running(train["id"])
    assert victim in WORKERS, f"no worker supervises train ({train['id']})"
    survivor = next(name for name in WORKERS if name != victim)
    offsets = {name: celery_stack.logs[name].stat().st_size for name in WORKERS}
    killed = time.monotonic()
    celery_stack.kill_worker(victim)
    with _login(services):
        tags = _mlflow_runs(client, model, run_id)[0].data.tags
    mid_train = "mlops.model_uri" not in tags  # killed before train logged its model
    try:
        run = celery_stack.wait(run_id)
        recovered = time.monotonic() - killed
    finally:
        celery_stack.start_worker(victim)  # the next tests have both workers again

    assert run["state"] == "success", celery_stack.failure_report(run_id)
    assert mid_train, "the worker was killed after train had logged its model: not mid-train"
    tis = celery_stack.task_instances(run_id)
    assert set(tis) == TASKS and ran_ok(tis)
    assert tis["train"]["try_number"] == 2, tis["train"]
    assert all(ti["try_number"] == 1 for task, ti in tis.items()
               if task != "train" and ti["state"] != "skipped"), \
        {task: ti["try_number"] for task, ti in tis.items()}
    # The scheduler failed the silent try (no heartbeat) and the other worker ran the retry.
    detected = [line for line in celery_stack.logs["scheduler"].read_text(errors="replace")
                .splitlines() if "Detected a task instance without a heartbeat" in line]
    assert any("'Task Id': 'train'" in line and run_id in line for line in detected), detected
    retry = f"run_id={run_id}/task_id=train/map_index=0/attempt=2.log"  # train is mapped
    assert retry in _log_since(celery_stack, survivor, offsets[survivor]), \
        f"{survivor} did not run the retry of train"
    # The killed try had not logged its model: the retry trained it, into the same MLflow run.
    assert f"Trained {model} " in celery_stack.task_log(run_id, "train", attempt=2)
    # One MLflow run for the DAG run, resumed by the retry; one registered version, promoted.
    with _login(services):
        runs = _mlflow_runs(client, model, run_id)
        assert len(runs) == 1, [r.info.run_id for r in runs]
        assert runs[0].data.tags["airflow.try.train"] == "2"
        assert runs[0].data.tags["mlops.outcome"] == "promoted"
        assert registered_versions(client, model) == ["1"]
        assert champion_of(client, model) == "1"
        assert client.get_model_version(model, "1").run_id == runs[0].info.run_id
    print(f"\n{victim} killed mid-train, {survivor} ran the retry; the run succeeded "
          f"{recovered:.0f}s after the kill (heartbeat timeout {HEARTBEAT_TIMEOUT}s)")


def _set_pool(stack: CeleryStack, slots: int) -> None:
    stack.api.json("PATCH", "/api/v2/pools/mlops_promotion", params={"update_mask": "slots"},
                   json={"pool": "mlops_promotion", "slots": slots, "include_deferred": False})


def test_mlflow_down_at_promote_fails_classified_then_retry_promotes(services, celery_stack):
    """promote waits in its pool (0 slots) until MLflow is stopped; its first try cannot reach
    MLflow and fails classified, nothing is promoted; MLflow comes back and the retry promotes."""
    store, model = services.store(), "it_celery_mlflow_down"
    source = f"s3://mlops-data/{model}"
    write_partitions(store, source, date(2025, 10, 11), 1, rows=1000)
    client = _mlflow(celery_stack)
    url = celery_stack.mlflow_url
    _set_pool(celery_stack, 0)
    mlflow_down = False
    try:
        run_id = celery_stack.trigger("2025-10-12", model_name=model, source_uri=source)

        def promote_waits() -> bool:
            states = celery_stack.states(run_id)
            assert "failed" not in states.values(), celery_stack.failure_report(run_id)
            return states.get("register") == "success" and states.get("promote") == "scheduled"

        _wait_for("register done, promote waiting for its pool", promote_waits, celery_stack,
                  every=1)
        celery_stack.stop_mlflow()
        mlflow_down, down_at = True, time.monotonic()
        _set_pool(celery_stack, 1)

        def promote_retries() -> bool:
            ti = celery_stack.task_instances(run_id)["promote"]
            assert ti["state"] != "failed", celery_stack.failure_report(run_id)
            return ti["state"] == "up_for_retry" or ti["try_number"] > 1

        _wait_for("promote's first try failed", promote_retries, celery_stack, timeout=120, every=1)
        failed_after = time.monotonic() - down_at
        assert not store.list(f"s3://mlops/audit/{model}"), "promoted while MLflow was down"
        assert celery_stack.api.json(
            "GET", f"/api/v2/dags/training/dagRuns/{run_id}")["state"] == "running"
        celery_stack.start_mlflow()
        mlflow_down, back_after = False, time.monotonic() - down_at
        run = celery_stack.wait(run_id)
    finally:
        if mlflow_down:
            celery_stack.start_mlflow()
        _set_pool(celery_stack, 1)

    assert run["state"] == "success", celery_stack.failure_report(run_id)
    promote = celery_stack.task_instances(run_id)["promote"]
    assert promote["try_number"] >= 2, promote
    first = celery_stack.task_log(run_id, "promote", attempt=1)
    for text in ("ServiceUnavailableError", f"MLflow tracking server at {url}/health unreachable "
                 "after 4 attempts with exponential backoff",
                 "runbook: docs/runbooks/service-unreachable.md", "Retrying"):
        assert text in first, f"{text!r} missing from promote's first try:\n{first[-3000:]}"
    with _login(services):
        assert registered_versions(client, model) == ["1"]
        assert champion_of(client, model) == "1"
        (mlflow_run,) = _mlflow_runs(client, model, run_id)
        assert mlflow_run.data.tags["mlops.outcome"] == "promoted"
    (audit,) = store.list(f"s3://mlops/audit/{model}")
    assert json.loads(store.read_bytes(audit.uri))["to_version"] == "1"
    print(f"\nMLflow down: promote try 1 failed {failed_after:.0f}s after the stop; MLflow back "
          f"after {back_after:.0f}s; promoted on try {promote['try_number']}")


# Runs on the same partition, each with other hyperparameters: every model is evaluated on the
# same held-out rows, so "best" is well defined (highest roc_auc). The two stumps miss the
# dataset's thresholds (roc_auc >= 0.70, accuracy >= 0.65); the others pass them.
CANDIDATES = [
    {"max_iter": 30, "learning_rate": 0.1, "max_leaf_nodes": 15},
    {"max_iter": 1, "max_depth": 1},
    {"max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 31},
    {"max_iter": 60, "learning_rate": 0.05, "max_leaf_nodes": 7},
    {"max_iter": 2, "max_depth": 2},
    {"max_iter": 40, "learning_rate": 0.15, "max_leaf_nodes": 10},
    {"max_iter": 120, "learning_rate": 0.2, "max_leaf_nodes": 63},
    {"max_iter": 80, "learning_rate": 0.03, "max_leaf_nodes": 20},
    {"max_iter": 50, "learning_rate": 0.08, "max_leaf_nodes": 5},
    {"max_iter": 90, "learning_rate": 0.12, "max_leaf_nodes": 12},
]
# Ten runs, as the deployment issue asks: they go one after another (max_active_runs=1), about
# 15 s each on 2 quiet cores, 24 s on busy ones (143-241 s for the ten).
RUNS = 10


def test_runs_triggered_at_once_promote_one_at_a_time_and_keep_the_best(services, celery_stack):
    """Runs for several logical dates triggered together over REST. The training DAG runs one
    at a time (max_active_runs=1), in an order of the scheduler's choosing, and promote takes
    the one-slot pool. Each run's gate compares its model with the champion of that moment."""
    from include.mlops_core.config import resolve_config

    store, model = services.store(), "it_celery_many"
    source = f"s3://mlops-data/{model}"
    write_partitions(store, source, date(2025, 11, 1), 1, rows=1500)
    client = _mlflow(celery_stack)
    dates = [f"2025-11-{day:02d}" for day in range(2, 2 + RUNS)]
    with ThreadPoolExecutor(RUNS) as pool:
        run_ids = list(pool.map(
            lambda args: celery_stack.trigger(
                args[0], model_name=model, source_uri=source, partition_date="2025-11-01",
                training={"hyperparameters": args[1]}), zip(dates, CANDIDATES[:RUNS], strict=True)))
    started = time.monotonic()
    runs = {run_id: celery_stack.wait(run_id, timeout=600) for run_id in run_ids}
    took = time.monotonic() - started

    for run_id, run in runs.items():
        assert run["state"] == "success", celery_stack.failure_report(run_id)
    tis = {run_id: celery_stack.task_instances(run_id) for run_id in run_ids}
    order = sorted(run_ids, key=lambda r: _ts(runs[r]["start_date"]))
    # One run at a time (max_active_runs=1), so one promotion at a time, in the one-slot pool.
    for before, after in zip(order, order[1:], strict=False):
        assert _ts(runs[after]["start_date"]) >= _ts(runs[before]["end_date"]), (before, after)
    promotes = sorted((ti["promote"] for ti in tis.values() if ti["promote"]["state"] == "success"),
                      key=lambda ti: _ts(ti["start_date"]))
    assert all(ti["pool"] == "mlops_promotion" for ti in promotes)
    for before, after in zip(promotes, promotes[1:], strict=False):
        assert _ts(after["start_date"]) >= _ts(before["end_date"]), (before, after)

    thresholds = resolve_config({"model_name": model, "source_uri": source}).gate.thresholds
    with _login(services):
        mlflow_runs = {}
        for run_id in run_ids:
            found = _mlflow_runs(client, model, run_id)
            assert len(found) == 1, f"{len(found)} MLflow runs for {run_id}"
            mlflow_runs[run_id] = found[0]
        versions = {v.version: v for v in client.search_model_versions(f"name = '{model}'")}
        champion = champion_of(client, model)

    approved = [r for r in order if mlflow_runs[r].data.tags.get("mlops.gate") == "approved"]
    # No duplicate versions: one per approved run, and only those.
    by_run = {v.tags.get("airflow.run_id"): number for number, v in versions.items()}
    assert len(by_run) == len(versions) == len(approved), sorted(by_run)
    assert set(by_run) == set(approved)

    # Replay the gate in the order the runs ran: a model that passes the thresholds is promoted
    # when it beats the champion of that moment on the same rows (champion_margin 0).
    best, chain, passing = None, [], {}
    for run_id in order:
        metrics = mlflow_runs[run_id].data.metrics
        # Every run's decision is recorded: the promotion card next to its outputs. Its gate
        # compared the model with the champion of that moment, not an older one.
        key = f"{runs[run_id]['logical_date'][:10]}T000000"
        card = json.loads(store.read_bytes(f"s3://mlops/{model}/runs/{key}/promotion_card.json"))
        assert (card.get("champion") or {}).get("version") == \
            (by_run[best[0]] if best else None), (run_id, card.get("champion"))
        passes = all(t.holds(metrics[t.metric]) for t in thresholds)
        if passes:
            passing[run_id] = metrics["roc_auc"]
        promoted = passes and (best is None or metrics["roc_auc"] > best[1])
        assert card["decision"]["approved"] is promoted, (run_id, card["decision"]["reasons"])
        assert (run_id in approved) is promoted, (run_id, metrics["roc_auc"], best)
        states = {task: ti["state"] for task, ti in tis[run_id].items()}
        assert states["register"] == states["promote"] == ("success" if promoted else "skipped"), \
            (run_id, states)
        assert mlflow_runs[run_id].data.tags["mlops.outcome"] == \
            ("promoted" if promoted else "rejected")
        if promoted:
            chain.append((best[0] if best else None, run_id))
            best = (run_id, metrics["roc_auc"])
    assert len(passing) == len(run_ids) - 2, "the two stumps, and only they, miss the thresholds"
    # Every promotion's audit record: a chain none -> v1 -> ... -> the champion.
    records = [json.loads(store.read_bytes(o.uri)) for o in store.list(f"s3://mlops/audit/{model}")]
    assert sorted((r["by"], r["from_version"], r["to_version"]) for r in records) == sorted(
        (f"airflow:training/{run_id}", by_run[previous] if previous else "none", by_run[run_id])
        for previous, run_id in chain)
    # The champion is the best model that passed the gate's thresholds.
    assert champion == by_run[max(passing, key=passing.get)] == by_run[best[0]], (champion, passing)
    assert versions[champion].run_id == mlflow_runs[best[0]].info.run_id
    print(f"\n{len(run_ids)} runs triggered at once finished in {took:.0f}s; {len(approved)} "
          f"promoted, {len(run_ids) - len(passing)} below the thresholds, champion v{champion} "
          f"(roc_auc {best[1]:.4f})")


class _AliasWatch:
    """Every value @champion of ``model`` takes, read from MLflow's database every few ms (an
    HTTP poll would miss short states), in a thread. ``on_change(version)`` runs in that thread
    at once: for a kill that must land inside a window of a few HTTP calls."""

    def __init__(self, stack: CeleryStack, model: str) -> None:
        import threading

        self.url = stack.mlflow_options["backend_uri"].replace("+psycopg", "")
        self.model = model
        self.seen: list[tuple[float, str | None]] = []
        self.on_change: Any = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _AliasWatch:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.seen and self.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.seen, f"the alias watch read nothing: {self.error}"
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self._stop.is_set():
                    row = conn.execute("SELECT version FROM registered_model_aliases WHERE "
                                       "name = %s AND alias = 'champion'", (self.model,)).fetchone()
                    value = None if row is None else str(row[0])
                    if not self.seen or self.seen[-1][1] != value:
                        self.seen.append((time.monotonic(), value))
                        if self.on_change is not None:
                            self.on_change(value)
                    time.sleep(0.002)
        except BaseException as err:  # noqa: BLE001 - the test reports it
            self.error = err

    def values(self) -> list[str | None]:
        return [value for _, value in self.seen]


def _kill_supervising_worker(stack: CeleryStack) -> str | None:
    """SIGKILL the worker that runs a task now (only one task runs: promote), its process groups
    and its task process's, as kill_worker does, with one scan of /proc; returns its name
    (None: no worker runs a task). The caller reaps it with kill_worker."""
    from tests.integration.celery_stack import cmdline, kill_process_groups, parent_pid

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = parent_pid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    for name in WORKERS:
        proc = stack.procs.get(name)
        if proc is None:
            continue
        found, todo = [proc.pid], [proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        # A task runs below a supervisor (a pool process, titled "airflow supervisor: <ti>"
        # since its first task: the title alone does not say a task runs now).
        if not any(cmdline(pid) and cmdline(parent_pid(pid) or 0).startswith(
                "airflow supervisor:") for pid in found):  # a zombie has no cmdline
            continue
        kill_process_groups(found)
        return name
    return None


def test_worker_killed_around_the_alias_move_never_leaves_champion_half_promoted(
        services, celery_stack):
    """v1 is champion; a better model's run reaches promote (held in its pool until then). The
    worker running promote is SIGKILLed twice: try 1 as soon as a worker supervises it (the
    version is registered, the alias not moved), try 2 the instant @champion moved to the new
    version, before promote tagged the version and wrote the audit record (the half-done
    promotion). @champion is watched throughout: v1, then v2, never nothing, never back, and it
    moves only to a registered version with an approved gate. Try 3 finds the alias already
    moved and completes the promotion: the audit record and tags say v1 -> v2 (kept in
    ``audit.pending_from`` before the move), not v2 -> v2."""
    store, model = services.store(), "it_celery_promote_kill"
    source = f"s3://mlops-data/{model}"
    write_partitions(store, source, date(2025, 12, 11), 1, rows=1500)
    client = _mlflow(celery_stack)
    # A stump first (the thresholds loosened so that it passes), then a real model on the same
    # rows: it beats the stump, so its gate approves it.
    gate = {"thresholds": ["roc_auc >= 0.01"]}
    first = celery_stack.trigger("2025-12-12", model_name=model, source_uri=source,
                                 partition_date="2025-12-11", gate=gate,
                                 training={"hyperparameters": CANDIDATES[1]})
    run = celery_stack.wait(first)
    assert run["state"] == "success", celery_stack.failure_report(first)
    with _login(services):
        assert champion_of(client, model) == "1"

    kills: list[tuple[str, float]] = []  # (worker, when), one per try killed
    _set_pool(celery_stack, 0)
    try:
        run_id = celery_stack.trigger("2025-12-13", model_name=model, source_uri=source,
                                      partition_date="2025-12-11", gate=gate,
                                      training={"hyperparameters": CANDIDATES[2]})

        def promote_waits() -> bool:
            states = celery_stack.states(run_id)
            assert "failed" not in states.values() and states.get("register") != "skipped", \
                celery_stack.failure_report(run_id)
            return states.get("register") == "success" and states.get("promote") == "scheduled"

        _wait_for("register done, promote waiting for its pool", promote_waits, celery_stack,
                  every=1)
        with _login(services):
            assert registered_versions(client, model) == ["1", "2"]
        with _AliasWatch(celery_stack, model) as watch:
            assert watch.values() == ["1"]
            _set_pool(celery_stack, 1)

            # Try 1: killed as soon as a worker runs it, before the alias moves. "Runs": the
            # task instance is running, so the heartbeat timeout finds it; a kill between the
            # fork and the supervisor's start call would leave it queued, for the scheduler's
            # task_queued_timeout (10 min) to find instead.
            victim = _wait_for("a worker running promote try 1",
                               lambda: celery_stack.states(run_id).get("promote") == "running"
                               and _kill_supervising_worker(celery_stack), celery_stack,
                               timeout=60, every=0.01)
            kills.append((victim, time.monotonic()))
            celery_stack.kill_worker(victim)  # reaps it
            with _login(services):
                assert champion_of(client, model) == "1", "the alias moved before the kill"
            assert not any("v000002" in o.uri for o in store.list(f"s3://mlops/audit/{model}"))

            # Try 2 (after the heartbeat timeout): killed the instant the alias moves to v2.
            def kill_on_move(version: str | None) -> None:
                if version == "2" and len(kills) == 1:
                    kills.append((_kill_supervising_worker(celery_stack), time.monotonic()))

            watch.on_change = kill_on_move
            celery_stack.start_worker(victim)
            _wait_for("the alias moved and promote try 2 killed", lambda: len(kills) == 2,
                      celery_stack, timeout=150, every=0.05)
            victim = kills[1][0]
            assert victim in WORKERS, "no worker supervised promote when the alias moved"
            celery_stack.kill_worker(victim)  # reaps it
            # The half-done promotion: the alias moved, the rest of promote did not happen.
            with _login(services):
                half = client.get_model_version(model, "2")
                assert champion_of(client, model) == "2"
                assert half.tags.get("audit.pending_from") == "1", half.tags
                assert "audit.promoted_by" not in half.tags, \
                    "try 2 was killed after it tagged the promotion: not half-done"
                assert "mlops.outcome" not in _mlflow_runs(client, model, run_id)[0].data.tags
            assert not any("v000002" in o.uri for o in store.list(f"s3://mlops/audit/{model}"))
            celery_stack.start_worker(victim)

            run = celery_stack.wait(run_id, timeout=240)
            finished = time.monotonic()
        assert watch.error is None, watch.error
    finally:
        _set_pool(celery_stack, 1)
        for name in WORKERS:
            if name not in celery_stack.procs:
                celery_stack.start_worker(name)

    assert run["state"] == "success", celery_stack.failure_report(run_id)
    promote = celery_stack.task_instances(run_id)["promote"]
    assert promote["try_number"] == 3, promote
    # @champion was v1, then v2: never unset, never back, never v2 before the second try.
    assert watch.values() == ["1", "2"], watch.seen
    moved_at = next(at for at, value in watch.seen if value == "2")
    assert kills[0][1] < moved_at <= kills[1][1], (kills, watch.seen)
    with _login(services):
        assert registered_versions(client, model) == ["1", "2"]
        assert champion_of(client, model) == "2"
        v2 = client.get_model_version(model, "2")
        # v2 was complete before the alias moved to it: registered (READY, its manifest tags,
        # register succeeded before promote could start) from a run whose gate approved it.
        assert v2.status == "READY" and v2.tags.get("mlops.repro_key"), v2.tags
        (mlflow_run,) = _mlflow_runs(client, model, run_id)
        assert v2.run_id == mlflow_run.info.run_id
        assert mlflow_run.data.tags["mlops.gate"] == "approved"
        assert mlflow_run.data.tags["mlops.outcome"] == "promoted"
        assert mlflow_run.data.tags["airflow.try.promote"] == "3"
        # Try 3 repaired the half-done promotion: from v1, by this run.
        assert v2.tags["audit.promoted_from"] == "1", v2.tags
        assert v2.tags["audit.promoted_by"] == f"airflow:training/{run_id}"
    records = sorted((json.loads(store.read_bytes(o.uri)) for o in
                      store.list(f"s3://mlops/audit/{model}")), key=lambda r: r["to_version"])
    assert [(r["from_version"], r["to_version"], r["by"]) for r in records] == [
        ("none", "1", f"airflow:training/{first}"), ("1", "2", f"airflow:training/{run_id}")]
    assert "Promoted " not in celery_stack.task_log(run_id, "promote", attempt=2)
    third = celery_stack.task_log(run_id, "promote", attempt=3)
    assert f"Promoted {model} v2 to @champion (was 1)" in third, third[-3000:]
    detected = [line for line in celery_stack.logs["scheduler"].read_text(errors="replace")
                .splitlines() if "Detected a task instance without a heartbeat" in line]
    assert sum("'Task Id': 'promote'" in line and run_id in line for line in detected) >= 2, \
        detected
    print(f"\npromote killed on {kills[0][0]} (try 1, before the alias move) and on "
          f"{kills[1][0]} (try 2, {1000 * (kills[1][1] - moved_at):.0f} ms after the alias "
          f"moved); try 3 completed the promotion {finished - kills[1][1]:.0f}s after that")
