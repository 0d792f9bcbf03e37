"""Who may do what, on real services secured as ./deploy.sh secures them (docs/security.md):

- Airflow's roles over REST (admin, operator, viewer, nobody), each answer code asserted;
- MLflow's accounts (admin, the workers' service account, a read-only person, nobody);
- S3's keys (admin, MLflow, the workers, nobody);
- a run's conf against the deployment's policy: a refused key or a loosened gate fails the first
  task and nothing else runs; a loosening the policy allows is tagged, audited and carded;
- a model whose skops file lists a type outside its family's allow-list: scoring and
  evaluation refuse it and nothing of it runs;
- no generated secret in a task log, XCom, rendered template field, MLflow param or tag,
  promotion card, audit record or the trainer container's configuration.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from datetime import date
from html import escape
from pathlib import Path
from typing import Any

import pytest

from include.mlops_core.demo_data import encode, generate, write_partitions
from tests.integration.conftest import (
    DAG_ID,
    TASKS,
    TEST_POLICY,
    champion_of,
    docker_client,
    registered_versions,
)
from tests.unit.helpers import Canary, plant_model

CANARY = "tests.unit.helpers.Canary"


# -- Airflow: roles over REST ---------------------------------------------------------------------
def _status(airflow: Any, user: str | None, method: str, path: str,
            body: dict[str, Any] | None = None) -> int:
    if user is None:  # no token at all
        request = urllib.request.Request(f"{airflow.api.url}{path}", method=method,
                                         data=json.dumps(body).encode() if body else None,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
    return airflow.users[user].request(method, path, json=body).status_code


def test_each_role_may_do_what_it_should_and_no_more(services: Any, airflow: Any) -> None:
    # A run to read and clear: refused at its first task (the image is never a run's choice).
    run_id = airflow.trigger("2025-10-02", model_name="it_sec_roles",
                             source_uri="s3://mlops-data/it_sec_roles",
                             container={"image": "attacker/steal-secrets:latest"})
    assert airflow.wait(run_id)["state"] == "failed"
    run = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}"
    conn = {"connection_id": "it_sec_conn", "conn_type": "http", "host": "example.invalid"}
    pool = {"name": "it_sec_pool", "slots": 1}
    variable = {"key": "it_sec_var", "value": "1"}
    asset_id = next(a["id"] for a in airflow.api.json("GET", "/api/v2/assets?limit=50")["assets"]
                    if a["name"] == "drift_detected")
    cases = [
        # (what, method, path, body, {user: expected status})
        ("list DAGs", "GET", "/api/v2/dags", None,
         {"viewer": 200, "operator": 200, "admin": 200, None: 401}),
        ("read a run", "GET", run, None, {"viewer": 200, "operator": 200, None: 401}),
        ("read a task log", "GET", f"{run}/taskInstances/check_changed/logs/1", None,
         {"viewer": 200, "operator": 200, None: 401}),
        ("trigger", "POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
         {"logical_date": None, "conf": {"partition_date": "2025-10-01"}},
         {"viewer": 403, None: 401}),
        ("clear", "POST", f"/api/v2/dags/{DAG_ID}/clearTaskInstances",
         {"dry_run": True, "dag_run_id": run_id}, {"viewer": 403, "operator": 200, None: 401}),
        ("pause", "PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False},
         {"viewer": 403, "operator": 200}),
        ("approve", "PATCH", f"{run}/taskInstances/check_changed/-1/hitlDetails",
         {"chosen_options": ["Approve"], "params_input": {}}, {"viewer": 403, None: 401}),
        ("read Connections", "GET", "/api/v2/connections", None,
         {"viewer": 403, "operator": 403, "admin": 200}),
        ("add a Connection", "POST", "/api/v2/connections", conn,
         {"viewer": 403, "operator": 403, "admin": 201}),
        ("add a pool", "POST", "/api/v2/pools", pool,
         {"viewer": 403, "operator": 403, "admin": 201}),
        ("add a Variable", "POST", "/api/v2/variables", variable,
         {"viewer": 403, "operator": 403, "admin": 201}),
        ("post an asset event", "POST", "/api/v2/assets/events",
         {"asset_id": asset_id, "extra": {"model_name": "it_sec_roles"}},
         {"viewer": 403, "operator": 403}),
    ]
    seen = {}
    for what, method, path, body, expected in cases:
        for user, code in expected.items():
            seen[(what, user)] = (_status(airflow, user, method, path, body), code)
    wrong = {key: got for key, (got, want) in seen.items() if got != want}
    assert not wrong, f"(action, user) -> (got, expected): " \
                      f"{ {k: seen[k] for k in wrong} }"
    for path in ("/api/v2/connections/it_sec_conn", "/api/v2/pools/it_sec_pool",
                 "/api/v2/variables/it_sec_var"):
        assert airflow.api.request("DELETE", path).status_code == 204


def test_a_refused_override_fails_the_first_task_and_nothing_runs(services: Any,
                                                                  airflow: Any) -> None:
    """Through the scheduler, as a person with trigger rights would try it over REST."""
    model = "it_sec_refused"
    run_id = airflow.trigger("2025-10-03", model_name=model, source_uri=f"s3://mlops-data/{model}",
                             container={"image": "attacker/steal-secrets:latest",
                                        "pull": "missing"})
    assert airflow.wait(run_id)["state"] == "failed"
    states = airflow.states(run_id)
    assert states["check_changed"] == "failed", states
    assert all(states[t] == "upstream_failed" for t in TASKS - {"check_changed"}), states
    log = airflow.task_log(run_id, "check_changed")
    final = [line for line in log.splitlines() if "AirflowFailException" in line][-1]
    assert "run conf key 'container' refused: never overridable from a run: the trainer " \
           "container's image" in final, final
    assert final.rstrip().endswith("(runbook: docs/runbooks/refused-by-policy.md)")
    assert services.mlflow_client().get_experiment_by_name(model) is None  # nothing ran


# -- MLflow: accounts -----------------------------------------------------------------------------
def test_mlflow_people_read_only_the_workers_move_aliases(services: Any) -> None:
    import mlflow
    import requests
    from sklearn.linear_model import LogisticRegression

    name = "it_sec_mlflow"
    client = services.mlflow_client()  # the workers' service account
    experiment = client.create_experiment(name)
    run_id = client.create_run(experiment).info.run_id
    model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    info = mlflow.sklearn.log_model(model, name="model", run_id=run_id,
                                    pip_requirements=["scikit-learn"])
    client.create_registered_model(name)
    version = client.create_model_version(name, info.model_uri, run_id=run_id,
                                          model_id=info.model_id).version
    url = f"{services.mlflow_url}/api/2.0/mlflow/registered-models/alias"
    viewer = ("viewer", services.secrets["MLOPS_MLFLOW_VIEWER_PASSWORD"])
    worker = ("airflow-worker", services.secrets["MLOPS_MLFLOW_WORKER_PASSWORD"])
    move = {"name": name, "alias": "champion", "version": str(version)}
    assert requests.post(url, json=move, timeout=30).status_code == 401  # anonymous
    assert requests.post(url, json=move, auth=viewer, timeout=30).status_code == 403
    assert requests.post(url, json=move, auth=("viewer", "wrong"), timeout=30).status_code == 401
    assert requests.post(url, json=move, auth=worker, timeout=30).status_code == 200
    lookup = {"name": name, "alias": "champion"}
    assert requests.get(url, params=lookup, timeout=30).status_code == 401
    assert requests.get(url, params=lookup, auth=viewer, timeout=30).status_code == 200
    runs = f"{services.mlflow_url}/api/2.0/mlflow/runs/create"
    assert requests.post(runs, json={"experiment_id": experiment}, auth=viewer,
                         timeout=30).status_code == 403
    assert requests.get(f"{services.mlflow_url}/health", timeout=30).status_code == 200
    # Only the admin administers accounts.
    create = f"{services.mlflow_url}/api/2.0/mlflow/users/create"
    admin = ("admin", services.secrets["MLOPS_MLFLOW_ADMIN_PASSWORD"])
    account = {"username": "it-sec-new-user", "password": "a-long-enough-password-1"}
    for who in (viewer, worker):
        assert requests.post(create, json=account, auth=who, timeout=30).status_code == 403, who
    assert requests.post(create, json=account, auth=admin, timeout=30).status_code == 200
    assert requests.delete(f"{services.mlflow_url}/api/2.0/mlflow/users/delete",
                           json={"username": account["username"]}, auth=admin,
                           timeout=30).status_code == 200


# -- S3: a key per party --------------------------------------------------------------------------
def _unsigned(method: str, url: str, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_s3_refuses_anonymous_requests_and_each_key_outside_its_place(services: Any) -> None:
    from include.mlops_core.errors import PipelineError

    admin, worker, mlflow = services.store(), services.store("WORKER"), services.store("MLFLOW")
    admin.write_bytes("s3://mlops-data/it_sec_s3/x.csv", b"a\n1\n")
    admin.write_bytes("s3://mlflow/artifacts/it_sec_s3/model.skops", b"model")
    for method, path, data in (("GET", "mlops-data/it_sec_s3/x.csv", None),
                               ("GET", "mlops?list-type=2", None), ("GET", "", None),
                               ("PUT", "mlops/it_sec_s3/anonymous.txt", b"x")):
        assert _unsigned(method, f"{services.s3_url}/{path}", data) == 403, (method, path)
    # The workers: read the sources, read and write run outputs; never the models.
    assert worker.read_bytes("s3://mlops-data/it_sec_s3/x.csv") == b"a\n1\n"
    worker.write_bytes("s3://mlops/it_sec_s3/out.json", b"{}")
    for attempt in (lambda: worker.write_bytes("s3://mlops-data/it_sec_s3/y.csv", b"x"),
                    lambda: worker.read_bytes("s3://mlflow/artifacts/it_sec_s3/model.skops"),
                    lambda: worker.write_bytes("s3://mlflow/artifacts/it_sec_s3/model.skops",
                                               b"planted"),
                    # MLflow's key: its own bucket only
                    lambda: mlflow.read_bytes("s3://mlops/it_sec_s3/out.json"),
                    lambda: mlflow.read_bytes("s3://mlops-data/it_sec_s3/x.csv")):
        with pytest.raises(PipelineError, match="rejected the credentials|AccessDenied|denied"):
            attempt()
    assert mlflow.read_bytes("s3://mlflow/artifacts/it_sec_s3/model.skops") == b"model"


# -- the policy on a run's conf (dag.test) ----------------------------------------------------------
def test_the_default_policy_refuses_a_gate_override(services: Any, run_dag: Any,
                                                    deployment: Any) -> None:
    source = "s3://mlops-data/it_sec_gate_default"
    write_partitions(services.store(), source, date(2025, 10, 1), 1, rows=600)
    deployment.set_policy({"run_overrides": ["partition_date", "source_uri", "model_name"]})
    try:
        result = run_dag("2025-10-02", model_name="it_sec_gate_default", source_uri=source,
                         gate={"thresholds": ["roc_auc >= 0.0"]})
    finally:
        deployment.set_policy(TEST_POLICY)
    assert result.tasks["check_changed"] == "failed"
    assert all(result.tasks[t] == "upstream_failed" for t in TASKS - {"check_changed"})
    assert "run conf key 'gate' refused: not on the deployment's run_overrides allow-list" in \
        result.final_error()


def test_a_looser_gate_is_refused_unless_allowed_then_tagged_audited_and_carded(
        services: Any, run_dag: Any, deployment: Any) -> None:
    model, source = "it_sec_loose", "s3://mlops-data/it_sec_loose"
    store, client = services.store(), services.mlflow_client()
    write_partitions(store, source, date(2025, 10, 1), 1, rows=800)
    lower = {"thresholds": ["roc_auc >= 0.0", "accuracy >= 0.65"]}
    deployment.set_policy({**TEST_POLICY, "allow_looser_gates": False})
    try:
        refused = run_dag("2025-10-02", model_name=model, source_uri=source, gate=lower)
    finally:
        deployment.set_policy(TEST_POLICY)
    assert refused.tasks["check_changed"] == "failed"
    assert "run conf loosens the gate of dataset 'churn_demo': gate threshold roc_auc >= 0.7 " \
           "replaced by roc_auc >= 0" in refused.final_error()
    assert client.get_experiment_by_name(model) is None

    allowed = run_dag("2025-10-02", model_name=model, source_uri=source, gate=lower)
    assert allowed.state == "success", allowed.error_lines()
    assert champion_of(client, model) == "1"
    why = "gate threshold roc_auc >= 0.7 replaced by roc_auc >= 0"
    (run,) = client.search_runs([client.get_experiment_by_name(model).experiment_id])
    assert run.data.tags["mlops.gate.loosened"] == why
    assert client.get_model_version(model, "1").tags["mlops.gate.loosened"] == why
    (audit,) = [item.uri for item in store.list(f"s3://mlops/audit/{model}/")]
    assert json.loads(store.read_bytes(audit))["loosened_gate"] == [why]
    card_dir = f"s3://mlops/{model}/runs/2025-10-02T000000"
    assert json.loads(store.read_bytes(f"{card_dir}/promotion_card.json"))["loosened_gate"] == [why]
    html = store.read_bytes(f"{card_dir}/promotion_card.html").decode()
    assert "background:#cf222e" in html and "LOOSENED gate" in html and escape(why) in html


# -- a model that lists a type outside the allow-list ---------------------------------------------
def _plant(services: Any, model: str, version: str, marker: Path, tmp_path: Path) -> str:
    """Replace the skops file of ``model`` v``version`` in MLflow's bucket (as someone with the
    bucket's key could) by one that builds a Canary, listed as trusted in its MLmodel file."""
    client = services.mlflow_client()
    source = client.get_model_version(model, version).source
    location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    prefix = "s3://mlflow/artifacts/" + location.removeprefix("mlflow-artifacts:/").strip("/")
    plant_model(tmp_path / "planted", Canary(str(marker)), trusted=[CANARY, "numpy.dtype"])
    store = services.store()
    for name in ("model.skops", "MLmodel"):
        assert store.exists(f"{prefix}/{name}"), f"no {name} under {prefix}"
        store.write_bytes(f"{prefix}/{name}", (tmp_path / "planted" / name).read_bytes())
    return prefix


def test_a_planted_type_is_refused_by_scoring_and_evaluation(
        services: Any, run_dag: Any, run_any_dag: Any, dagbag: Any, tmp_path: Path) -> None:
    model, source = "it_sec_planted", "s3://mlops-data/it_sec_planted"
    store, client = services.store(), services.mlflow_client()
    write_partitions(store, source, date(2025, 10, 1), 3, rows=700)
    trained = run_dag("2025-10-02", model_name=model, source_uri=source)
    assert trained.state == "success", trained.error_lines()
    marker = tmp_path / "canary-built"
    _plant(services, model, "1", marker, tmp_path)
    refusal = (f"refusing to load model models:/{model}/1: it lists type '{CANARY}', outside "
               "the allow-list of model family 'hist_gradient_boosting'; nothing of it was loaded")

    scored = run_any_dag(dagbag.get_dag("batch_scoring"), "2025-10-03", model_name=model,
                         partition_date="2025-10-02", monitoring={"scoring_uri": source})
    assert scored.tasks["score"] == "failed"
    assert refusal in scored.final_error()
    assert "refused-by-policy.md#a-model-that-lists-a-type-outside-the-allow-list" in \
        scored.final_error()
    assert not store.exists(f"s3://mlops/{model}/predictions/date=2025-10-02/_SUCCESS.json")

    retrained = run_dag("2025-10-04", model_name=model, source_uri=source, force=True)
    assert retrained.tasks["evaluate"] == "failed", retrained.tasks
    assert refusal in retrained.final_error()
    assert retrained.tasks["register"] == "upstream_failed"
    assert registered_versions(client, model) == ["1"]
    assert not marker.exists()  # nothing of the planted model ran, in either task


# -- no secret where people read --------------------------------------------------------------------
class _Inspector(threading.Thread):
    """Records ``docker inspect`` of every trainer container while it exists."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: dict[str, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        client = docker_client()
        while not self.done.is_set():
            for container in client.containers(all=True,
                                               filters={"label": "mlops.task_id=train"}):
                try:
                    self.seen[container["Id"]] = json.dumps(client.inspect_container(
                        container["Id"]))
                except Exception:  # noqa: BLE001 - removed between list and inspect
                    pass
            time.sleep(0.2)


def _everything_people_read(services: Any, airflow: Any) -> dict[str, str]:
    """``where -> text`` of every place a person with read access can look."""
    found: dict[str, str] = {}
    for path in (airflow.home / "logs").rglob("*.log"):
        found[f"task log {path.relative_to(airflow.home)}"] = path.read_text(errors="replace")
    with sqlite3.connect(airflow.home / "airflow.db") as db:
        for dag_id, run_id, task_id, key, value in db.execute(
                "SELECT dag_id, run_id, task_id, key, value FROM xcom"):
            found[f"XCom {dag_id}/{run_id}/{task_id}/{key}"] = str(value)
        for dag_id, run_id, task_id, fields in db.execute(
                "SELECT dag_id, run_id, task_id, rendered_fields FROM rendered_task_instance_fields"):
            found[f"rendered fields {dag_id}/{run_id}/{task_id}"] = str(fields)
        for run_id, conf in db.execute("SELECT run_id, conf FROM dag_run"):
            found[f"dag run conf {run_id}"] = str(conf)
    from mlflow import MlflowClient
    from stack import MlflowLogin

    with MlflowLogin("admin", services.secrets["MLOPS_MLFLOW_ADMIN_PASSWORD"]):
        client = MlflowClient(services.mlflow_url, services.mlflow_url)
        experiments = [e.experiment_id for e in client.search_experiments()]
        for run in client.search_runs(experiments, max_results=5000):
            found[f"MLflow run {run.info.run_id} params"] = json.dumps(run.data.params)
            found[f"MLflow run {run.info.run_id} tags"] = json.dumps(run.data.tags)
        for registered in client.search_registered_models():
            for version in client.search_model_versions(f"name = '{registered.name}'"):
                found[f"MLflow {registered.name} v{version.version}"] = json.dumps(
                    {"tags": version.tags, "description": version.description})
    store = services.store()
    for item in store.list("s3://mlops/"):
        if item.uri.endswith((".json", ".html")):
            found[item.uri] = store.read_bytes(item.uri).decode(errors="replace")
    return found


def test_no_generated_secret_reaches_anything_people_read(
        services: Any, airflow: Any, trainer_image: str) -> None:
    """The training DAG through the scheduler with both trainers, and a failing run (made here
    unless an earlier test of the session made one); then every task log, XCom value, rendered
    template field, run conf, MLflow param and tag, card and audit record, and the trainer
    container's configuration, grepped for every secret."""
    store = services.store()
    source = "s3://mlops-data/it_sec_secrets"
    write_partitions(store, source, date(2025, 10, 10), 2, rows=1500)
    # Runs this session's Airflow already made count (the grep covers the whole stack): an
    # in-process success and a failure are made here only when no earlier test made one.
    done = [(r["state"], (r.get("conf") or {}).get("trainer") or "inprocess")
            for r in airflow.runs(DAG_ID)]
    inspector = _Inspector()
    inspector.start()
    try:
        for trainer, day in (("inprocess", "2025-10-11"), ("docker", "2025-10-12")):
            if trainer == "inprocess" and ("success", "inprocess") in done:
                continue
            run_id = airflow.trigger(day, model_name=f"it_sec_secrets_{trainer}",
                                     source_uri=source, trainer=trainer)
            run = airflow.wait(run_id)
            assert run["state"] == "success", airflow.failure_report(run_id)
            assert airflow.states(run_id)["promote"] == "success"
    finally:
        inspector.done.set()
        inspector.join(timeout=10)
    if not any(state == "failed" for state, _ in done):
        bad = "s3://mlops-data/it_sec_secrets_bad"
        store.write_bytes(f"{bad}/date=2025-10-12/part-0.csv",
                          encode(generate(date(2025, 10, 12), 300).drop(columns=["age"]), "csv"))
        failed = airflow.trigger("2025-10-13", model_name="it_sec_secrets_bad", source_uri=bad)
        assert airflow.wait(failed)["state"] == "failed"
    assert inspector.seen, "the docker trainer's container was never seen"

    places = _everything_people_read(services, airflow)
    places.update({f"docker inspect {cid[:12]}": text for cid, text in inspector.seen.items()})
    assert any("it_sec_secrets_docker" in where or "it_sec_secrets_docker" in text
               for where, text in places.items())
    leaks = [(key, where) for key, value in services.secrets.items() if len(value) >= 8
             for where, text in places.items() if value in text]
    assert not leaks, f"secrets found (key, where): {leaks}"
    assert len(places) > 50, sorted(places)  # the grep saw the stack, not an empty folder
