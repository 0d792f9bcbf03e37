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

import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from summary import AirflowApi

from include.mlops_core.demo_data import encode, generate, write_partitions
from tests.integration.conftest import (
    APPROVAL_DATASET,
    DAG_ID,
    MAPPED,
    SHORT_APPROVAL_DATASET,
    TASKS,
    UNTUNED,
    WAIT_DATASET,
    WAIT_MINUTES,
    champion_of,
    ran_ok,
    registered_versions,
)


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
    assert ran_ok(tis), airflow.states(run_id)
    assert tis["promote"]["pool"] == "mlops_promotion"
    assert {ti["pool"] for task, ti in tis.items() if task != "promote"} == {"default_pool"}
    client = services.mlflow_client()
    assert registered_versions(client, model) == ["1"] and champion_of(client, model) == "1"
    log = airflow.task_log(run_id, "promote")
    assert f"Promoted {model} v1 to @champion" in log, log[-3000:]
    assert_quiet_logs(airflow, run_id)
    assert_extra_links(airflow, run_id, services, model)


def assert_extra_links(airflow: Any, run_id: str, services: Any, model: str) -> None:
    """The grid's extra links (what the UI shows as buttons), read over REST: the DAG run's MLflow
    run on each stage, the promotion card on gate, the version on register and promote."""
    client = services.mlflow_client()
    (mlflow_run,) = client.search_runs(
        experiment_ids=[client.get_experiment_by_name(model).experiment_id],
        filter_string=f"tags.`airflow.run_id` = '{run_id}'")
    run_url = f"{services.mlflow_url}/#/runs/{mlflow_run.info.run_id}"

    def links(task: str) -> dict[str, Any]:
        return airflow.api.json(
            "GET", f"/api/v2/dags/training/dagRuns/{run_id}/taskInstances/{task}/links",
            params={"map_index": 0 if task in MAPPED else -1})["extra_links"]

    assert links("train")["MLflow run"] == run_url
    assert links("ingest")["MLflow run"] == run_url
    gate = links("gate")
    assert gate["Promotion card"] == (
        f"{services.mlflow_url}/#/experiments/{mlflow_run.info.experiment_id}/runs/"
        f"{mlflow_run.info.run_id}/artifacts/promotion_card.html")
    assert "promotion_card.html" in {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
    version_url = f"{services.mlflow_url}/#/models/{model}/versions/1"
    assert links("register")["Model version"] == links("promote")["Model version"] == version_url
    assert not any(links("check_changed").values())


# The most warnings of the project's own that a successful task's log may hold; none may come
# from a library (third-party noise is silenced where it is raised, docs/monitoring.md).
QUIET_WARNINGS = 2
OURS = ("include.mlops_core", "mlops_airflow.", "airflow.task.operators.mlops_airflow")


def assert_quiet_logs(airflow: Any, run_id: str) -> None:
    """Every task log of a successful run: no record at level error or above, no warning from a
    library, at most QUIET_WARNINGS of ours, short; and MLflow's records keep their own level
    (its INFO about waiting for the new version reached the log at level error, from stderr)."""
    for task in sorted(TASKS - UNTUNED):  # tune was skipped (no search space): no log
        entries = airflow.task_log_entries(run_id, task)
        loud = [e for e in entries
                if str(e.get("level")).lower() in ("warning", "error", "critical")]
        shown = "\n".join(f"{e.get('level')} {e.get('logger')}: {str(e.get('event'))[:300]}"
                          for e in loud)
        assert all(str(e.get("level")).lower() == "warning" for e in loud), \
            f"{task}: error records in a successful task's log:\n{shown}"
        assert all(str(e.get("logger", "")).startswith(OURS) for e in loud), \
            f"{task}: third-party warnings in the task log:\n{shown}"
        assert len(loud) <= QUIET_WARNINGS, f"{task}: {len(loud)} warnings:\n{shown}"
        assert len(entries) < 40, f"{task}: {len(entries)} log records"
    waited = [e for e in airflow.task_log_entries(run_id, "register")
              if "Waiting up to" in str(e.get("event"))]
    assert waited and {str(e.get("level")) for e in waited} == {"info"}, waited


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
    # plan_tuning needs the config only: it ran beside ingest; everything after ingest did not
    assert states["plan_tuning"] == "success", states
    assert all(states[t] == "upstream_failed"
               for t in TASKS - {"check_changed", "ingest", "plan_tuning"}), states
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
    # The card of a run without a logical date says who started it and what it trained on.
    assert card["logical_date"] == "none"
    assert card["triggered_by"].startswith(
        "asset event drift_detected: drift on partition 2025-09-03 of it_sched_loop v1")
    assert card["data_interval"].startswith("none: the alert's day")
    assert "date=2025-09-03" in card["lineage"]["partitions"], card["lineage"]
    assert card["lineage"]["files_total"] == len(card["lineage"]["partitions"])
    from mlflow.artifacts import load_text

    page = load_text(f"runs:/{mlflow_run.info.run_id}/promotion_card.html")
    assert "data:image/png;base64," in page and "<h2>Lineage</h2>" in page
    assert "None" not in page.split("<h2>Context</h2>")[1]
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


def test_tasks_run_in_workers_forked_from_the_preloaded_forkserver(airflow):
    """The scheduler runs as ./deploy.sh starts it: its LocalExecutor's workers are children of
    a forkserver that imported the stages' libraries once (plugins/mlops_airflow/worker_preload.py),
    started with the scheduler (mlops_airflow.executor), not at the first task."""
    log = airflow.logs["scheduler"].read_text()
    assert "Task workers' forkserver ready in" in log, log[-3000:]
    scheduler = airflow.procs["scheduler"].pid
    group = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == scheduler:
                    group[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
    servers = [pid for pid, cmd in group.items() if b"multiprocessing.forkserver" in cmd]
    assert len(servers) == 1, group
    assert b"sklearn.ensemble" in group[servers[0]] and b"great_expectations" in group[servers[0]]
    assert b"include.mlops_core" not in group[servers[0]]  # the project's code: read at each task
    workers = [pid for pid, cmd in group.items() if b"LocalExecutor" in cmd]
    assert workers, "no LocalExecutor worker yet: run the other scheduler tests first"
    for pid in workers:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert parent == servers[0], (pid, parent)


def _wait_for_state(airflow: Any, run_id: str, task: str, state: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if airflow.states(run_id).get(task) == state:
            return
        time.sleep(1)
    raise AssertionError(f"{task} not {state} after {timeout:.0f}s: {airflow.states(run_id)}\n"
                         f"{airflow.log_tails()}")


def test_a_run_waits_for_its_partition_in_the_triggerer_and_starts_when_it_arrives(services,
                                                                                   airflow):
    """The day's partition is written while check_changed is deferred: the run trains."""
    model, source = "it_sched_wait", "s3://mlops-data/it_sched_wait"
    run_id = airflow.trigger("2025-08-28", dataset=WAIT_DATASET, model_name=model,
                             source_uri=source)
    _wait_for_state(airflow, run_id, "check_changed", "deferred")
    # Deferred: in the triggerer, counted apart from the slots that run tasks.
    assert airflow.api.json("GET", "/api/v2/pools/default_pool")["deferred_slots"] >= 1
    written = datetime.now(UTC)
    write_partitions(services.store(), source, date(2025, 8, 27), 1, rows=1000)

    run = airflow.wait(run_id)

    assert run["state"] == "success", airflow.failure_report(run_id)
    check = airflow.task_log(run_id, "check_changed")
    assert "Waiting for s3://mlops-data/it_sched_wait/date=2025-08-27 until " in check, check
    assert "in the triggerer: no worker slot is held" in check
    assert "Data arrived; running the task" in check
    started = datetime.fromisoformat(airflow.task_instances(run_id)["ingest"]["start_date"])
    assert (started - written).total_seconds() < 30, (written, started)  # polls every 5 s
    assert champion_of(services.mlflow_client(), model) == "1"


def test_a_run_whose_partition_never_arrives_fails_at_the_deadline_with_the_classified_line(
        services, airflow):
    model, source = "it_sched_nodata", "s3://mlops-data/it_sched_nodata"
    started = time.monotonic()
    run_id = airflow.trigger("2025-08-30", dataset=WAIT_DATASET, model_name=model,
                             source_uri=source)
    _wait_for_state(airflow, run_id, "check_changed", "deferred")

    run = airflow.wait(run_id)

    assert run["state"] == "failed", airflow.states(run_id)
    assert time.monotonic() - started >= WAIT_MINUTES * 60
    log = airflow.task_log(run_id, "check_changed")
    last = [line for line in log.splitlines() if "missing partition" in line][-1]
    assert "s3://mlops-data/it_sched_nodata/date=2025-08-29" in last, last
    assert f"Waited {WAIT_MINUTES} min for it (data_wait.timeout_minutes of dataset " \
           f"'{WAIT_DATASET}')" in last, last
    assert "runbook: docs/runbooks/missing-partition.md" in last, last
    # A day given by hand never waits: it fails at once.
    fast = time.monotonic()
    by_hand = airflow.trigger("2025-08-31", dataset=WAIT_DATASET, model_name=model,
                              source_uri=source, partition_date="2025-08-29")
    assert airflow.wait(by_hand)["state"] == "failed"
    assert "deferred" not in str(airflow.states(by_hand))
    assert time.monotonic() - fast < 45


def _wait_until_the_scheduler_saw_the_wait(airflow: Any, run_id: str, task: str = "approve",
                                           timeout: float = 60) -> None:
    """Airflow 3.3 race: an answer given before the scheduler has processed the exit of the
    process that started waiting (the same try number) makes it fail the resumed task as "killed
    externally". A person takes longer than that; the test waits for the scheduler's line."""
    line = f"TaskInstance Finished: dag_id={DAG_ID}, task_id={task}, run_id={run_id},"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in airflow.logs["scheduler"].read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise AssertionError(f"the scheduler never logged {line!r}\n{airflow.log_tails()}")


def _answer(api: Any, run_id: str, option: str, ok: tuple[int, ...] = (200,)) -> Any:
    return api.json("PATCH", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/approve/-1/"
                             "hitlDetails", ok=ok, json={"chosen_options": [option]})


def test_a_person_approves_or_rejects_and_no_answer_rejects(services, airflow):
    """approval.required: the approve task waits for a person (Airflow 3 HITL, state
    awaiting_input); Approve promotes, Reject or no answer in time does not. A viewer may not
    answer."""
    client = services.mlflow_client()
    runs = {}
    for model, day in (("it_sched_approved", 1), ("it_sched_rejected", 3), ("it_sched_timeout", 5)):
        source = f"s3://mlops-data/{model}"
        write_partitions(services.store(), source, date(2025, 7, day), 1, rows=1000)
        dataset = SHORT_APPROVAL_DATASET if model == "it_sched_timeout" else APPROVAL_DATASET
        runs[model] = airflow.trigger(f"2025-07-{day + 1:02d}", dataset=dataset,
                                      model_name=model, source_uri=source)
        _wait_for_state(airflow, runs[model], "approve", "awaiting_input", timeout=120)
        assert airflow.states(runs[model])["promote"] is None, airflow.states(runs[model])
        _wait_until_the_scheduler_saw_the_wait(airflow, runs[model])
        if model == "it_sched_approved":
            request = airflow.api.json(
                "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{runs[model]}/taskInstances/approve/-1/"
                       "hitlDetails")
            assert request["subject"] == f"Promote {model} v1?"
            assert "PASS threshold roc_auc >= 0.7" in request["body"]
            assert "/artifacts/promotion_card.html" in request["body"]
            assert request["defaults"] == ["Reject"]
            _answer(airflow.users["viewer"], runs[model], "Approve", ok=(403,))
            _answer(airflow.users["operator"], runs[model], "Approve")
        elif model == "it_sched_rejected":
            _answer(airflow.users["operator"], runs[model], "Reject")
        run = airflow.wait(runs[model], timeout=300)
        assert run["state"] == "success", airflow.failure_report(runs[model])

    states = {model: airflow.states(run_id) for model, run_id in runs.items()}
    assert states["it_sched_approved"]["promote"] == "success"
    assert champion_of(client, "it_sched_approved") == "1"
    assert "Approved by operator: promoting it_sched_approved v1" in \
        airflow.task_log(runs["it_sched_approved"], "approve")
    for model in ("it_sched_rejected", "it_sched_timeout"):
        assert states[model]["approve"] == "success" and states[model]["promote"] == "skipped"
        assert champion_of(client, model) is None
        assert registered_versions(client, model) == ["1"]  # registered, never promoted
    assert "Approval rejected by operator: it_sched_rejected v1 is not promoted (runbook: " \
           "docs/runbooks/approval-rejected.md)" in airflow.task_log(runs["it_sched_rejected"],
                                                                      "approve")
    assert "Approval timed out: no answer within 0.005 h" in \
        airflow.task_log(runs["it_sched_timeout"], "approve")
    # The approvers were paged, and the outcomes that promote nothing were alerted.
    posts = {(p["event"], p["model"]): p for p in airflow.alerts.posts
             if str(p.get("model")).startswith("it_sched_")}
    for model in runs:
        asked = posts[("approval_requested", model)]
        assert asked["task_id"] == "approve" and asked["run_id"] == runs[model]
        assert asked["reason"].startswith(f"{model} v1 passed the gate and waits for a person")
        assert asked["runbook"] == "docs/runbooks/approval-requested.md"
        assert "/artifacts/promotion_card.html" in asked["links"]["Promotion card"]
    assert posts[("approval_rejected", "it_sched_rejected")]["reason"] == \
        "Approval rejected by operator: it_sched_rejected v1 is not promoted"
    timed_out = posts[("approval_rejected", "it_sched_timeout")]
    assert timed_out["reason"].startswith("Approval timed out: no answer within 0.005 h")
    assert timed_out["runbook"] == "docs/runbooks/approval-timeout.md"
    assert ("approval_rejected", "it_sched_approved") not in posts
    assert ("promoted", "it_sched_approved") in posts
