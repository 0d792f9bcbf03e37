"""The production stack as users start it: ``./deploy.sh compose up`` on docker-compose.yaml, with
images built offline (scripts/build_images.py), PostgreSQL, Redis, MLflow with basic-auth, S3,
the FAB auth manager and two Celery workers. One stack for the module, on its own compose project,
ports and secrets file, removed with its volumes after.

Checked: the demo training run succeeds on a Celery worker; every service is healthy and only the
two UIs are published (to 127.0.0.1); a second ``up`` recreates nothing; each FAB role may do what
it should over REST and no more; no generated secret reaches a task log, XCom, rendered field,
run conf, MLflow param or tag, or any container's log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from stack import free_port, read_env_file
from summary import AirflowApi

from tests.integration.conftest import REPO, _tail
from tests.integration.snapshot import stack_snapshot

UP_TIMEOUT = 1500  # s: a fresh machine builds the images first (about 4 min on 2 cores)
WORKERS = 2


class ComposeStack:
    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.project = f"mlopsit{tag}"
        self.env_file = tmp / "env.compose"
        self.airflow_port, self.mlflow_port = free_port(), free_port()
        self.env = {**os.environ, "MLOPS_COMPOSE_PROJECT": self.project,
                    "MLOPS_COMPOSE_ENV_FILE": str(self.env_file),
                    "MLOPS_COMPOSE_AIRFLOW_PORT": str(self.airflow_port),
                    "MLOPS_COMPOSE_MLFLOW_PORT": str(self.mlflow_port),
                    "MLOPS_WORKERS": str(WORKERS), "MLOPS_STATE_DIR": str(tmp / "state")}
        self.airflow_url = f"http://127.0.0.1:{self.airflow_port}"
        self.mlflow_url = f"http://127.0.0.1:{self.mlflow_port}"
        self.outputs: dict[str, str] = {}

    def deploy(self, *args: str, timeout: float = UP_TIMEOUT,
               extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(REPO / "deploy.sh"), "compose", *args], cwd=REPO,
                              env={**self.env, **(extra or {})}, capture_output=True, text=True,
                              timeout=timeout)

    def compose(self, *args: str) -> str:
        result = subprocess.run(["docker-compose", "-p", self.project, "--env-file",
                                 str(self.env_file), "-f", str(REPO / "docker-compose.yaml"),
                                 *args], capture_output=True, text=True, env=self.env, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    @property
    def secrets(self) -> dict[str, str]:
        return read_env_file(self.env_file)

    def containers(self) -> list[dict[str, Any]]:
        ids = self.compose("ps", "-q").split()
        out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True,
                             check=True).stdout
        return json.loads(out)

    def api(self, user: str) -> AirflowApi:
        return AirflowApi(self.airflow_url, user,
                          self.secrets[f"MLOPS_AIRFLOW_{user.upper()}_PASSWORD"])


def _wait_for_background_images() -> None:
    """Under ./deploy.sh test the images are built in the background: wait for that build
    rather than start a second one beside it."""
    marker = os.environ.get("MLOPS_COMPOSE_IMAGES_FILE")
    if not marker:
        return
    done, failed = Path(marker), Path(marker + ".failed")
    deadline = time.monotonic() + UP_TIMEOUT
    while not done.exists() and not failed.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"the compose images were not built after {UP_TIMEOUT} s ({marker})")
        time.sleep(2)
    if failed.exists():
        log = Path(os.environ.get("MLOPS_TRAINER_SETUP_LOG", "/nonexistent"))
        pytest.fail(f"building the compose images failed; {log}:\n{_tail(log, 4000)}")


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    _wait_for_background_images()
    stack = ComposeStack(tmp_path_factory.mktemp("compose"))
    started = time.monotonic()
    try:
        result = stack.deploy("up")
        stack.outputs["up"] = result.stdout + result.stderr
        stack.outputs["up_seconds"] = f"{time.monotonic() - started:.0f}"
        assert result.returncode == 0, (
            f"./deploy.sh compose up failed ({result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-6000:]}\n{_service_logs(stack)}")
        yield stack
    finally:
        down = stack.deploy("down", "-v", "--remove-orphans", timeout=300)
        assert down.returncode == 0, (down.stdout + down.stderr)[-2000:]


def _service_logs(stack: ComposeStack) -> str:
    result = subprocess.run(["docker-compose", "-p", stack.project, "--env-file",
                             str(stack.env_file), "-f", str(REPO / "docker-compose.yaml"), "logs",
                             "--tail=30"], capture_output=True, text=True, env=stack.env)
    return result.stdout[-8000:]


def _run_id(output: str) -> str:
    match = re.search(r"DAG run training / (\S+): SUCCESS", output)
    assert match, f"no successful training run in the output:\n{output[-4000:]}"
    return match.group(1)


def test_up_runs_the_demo_on_a_celery_worker_and_publishes_only_the_uis(compose_stack) -> None:
    output = compose_stack.outputs["up"]
    run_id = _run_id(output)
    assert "is @champion" in output, output[-3000:]
    # The links people follow are the published ones, not the compose network's names.
    assert f"http://localhost:{compose_stack.airflow_port}/dags/training" in output
    assert "airflow-apiserver:8080" not in output and "http://mlflow:5000" not in output
    assert compose_stack.env_file.stat().st_mode & 0o777 == 0o600

    containers = compose_stack.containers()
    workers = {c["Config"]["Hostname"] for c in containers
               if c["Config"]["Labels"].get("com.docker.compose.service") == "airflow-worker"}
    assert len(workers) == WORKERS
    tis = compose_stack.api("viewer").json(
        "GET", f"/api/v2/dags/training/dagRuns/{run_id}/taskInstances")
    ran_on = {ti["task_id"]: ti["hostname"] for ti in tis["task_instances"]
              if ti["state"] != "skipped"}  # tune: no search space, nothing ran
    assert set(ran_on.values()) <= workers, ran_on  # every task on a Celery worker container
    # ... which ran them without the metadata DB's password or the signing/encryption keys.
    withheld = {compose_stack.secrets[key] for key in (
        "MLOPS_DB_AIRFLOW_PASSWORD", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET")}
    for container in containers:
        if container["Config"]["Labels"].get("com.docker.compose.service") == "airflow-worker":
            env = "\n".join(container["Config"]["Env"])
            assert not [value for value in withheld if value in env], "a worker holds a withheld secret"

    published = {}
    for container in containers:
        service = container["Config"]["Labels"]["com.docker.compose.service"]
        state = container["State"]
        if service == "airflow-init":
            assert state["Status"] == "exited" and state["ExitCode"] == 0, state
            continue
        assert state["Health"]["Status"] == "healthy", (service, state["Health"]["Log"][-1:])
        assert container["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped", service
        assert container["HostConfig"]["Memory"] > 0, f"{service} has no memory limit"
        for bindings in (container["NetworkSettings"]["Ports"] or {}).values():
            for binding in bindings or []:
                published[service] = (binding["HostIp"], int(binding["HostPort"]))
    assert published == {"airflow-apiserver": ("127.0.0.1", compose_stack.airflow_port),
                         "mlflow": ("127.0.0.1", compose_stack.mlflow_port)}


def test_tuning_studies_live_in_their_own_postgres_database(compose_stack) -> None:
    """The mlops_optuna Connection airflow-init stored reaches the optuna database as its own
    role: a study created through it takes trials from two processes and is read back."""
    scheduler = next(c for c in compose_stack.containers()
                     if c["Config"]["Labels"].get("com.docker.compose.service")
                     == "airflow-scheduler")
    probe = (
        "import json, subprocess, sys, optuna\n"
        "from airflow.models import Connection\n"
        "from airflow.utils.session import create_session\n"
        "from mlops_airflow.hooks.optuna import storage_url\n"
        "with create_session() as s:\n"
        "    c = s.query(Connection).filter_by(conn_id='mlops_optuna').one()\n"
        "    url = storage_url(c.conn_type, host=c.host, port=c.port, schema=c.schema,\n"
        "                      login=c.login, password=c.password, extra=c.extra_dejson)\n"
        "optuna.logging.set_verbosity(optuna.logging.WARNING)\n"
        "optuna.create_study(storage=url, study_name='compose-check')\n"
        "code = ('import os, optuna; optuna.logging.set_verbosity(optuna.logging.WARNING); '\n"
        "        'st = optuna.load_study(storage=os.environ[\"URL\"], study_name=\"compose-check\"); '\n"
        "        'st.optimize(lambda t: t.suggest_float(\"x\", 0, 1), n_trials=2)')\n"
        "procs = [subprocess.Popen([sys.executable, '-c', code], env={**__import__('os').environ, 'URL': url})\n"
        "         for _ in range(2)]\n"
        "assert all(p.wait() == 0 for p in procs)\n"
        "study = optuna.load_study(storage=url, study_name='compose-check')\n"
        "print(json.dumps({'login': c.login, 'schema': c.schema, 'trials': len(study.trials)}))\n")
    result = subprocess.run(["docker", "exec", scheduler["Id"], "python", "-c", probe],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "login": "optuna", "schema": "optuna", "trials": 4}
    assert compose_stack.secrets["MLOPS_DB_OPTUNA_PASSWORD"] not in result.stdout + result.stderr


def test_a_second_up_recreates_nothing(compose_stack) -> None:
    before = {c["Id"] for c in compose_stack.containers()
              if c["State"]["Status"] == "running"}
    started = time.monotonic()
    result = compose_stack.deploy("up", extra={"MLOPS_COMPOSE_DEMO": "0"}, timeout=600)
    compose_stack.outputs["second_up_seconds"] = f"{time.monotonic() - started:.0f}"
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "Recreating" not in result.stdout + result.stderr, result.stdout[-3000:]
    after = {c["Id"] for c in compose_stack.containers() if c["State"]["Status"] == "running"}
    assert after == before
    print(f"\nfirst up {compose_stack.outputs['up_seconds']} s, second up "
          f"{compose_stack.outputs['second_up_seconds']} s")


def test_each_role_may_do_what_it_should_and_no_more(compose_stack) -> None:
    """FAB roles over REST: operator (User) triggers and reads, never Connections or pools;
    viewer (Viewer) only reads; admin may do everything. Anonymous and wrong passwords: 401."""
    run = {"logical_date": None, "conf": {"partition_date": "2099-01-01"}}
    allowed: dict[str, dict[str, int]] = {}
    for user in ("admin", "operator", "viewer"):
        api = compose_stack.api(user)
        allowed[user] = {
            "read runs": api.request("GET", "/api/v2/dags/training/dagRuns").status_code,
            "trigger": api.request("POST", "/api/v2/dags/training/dagRuns",
                                   json={**run, "dag_run_id": f"role_{user}"}).status_code,
            "read connections": api.request("GET", "/api/v2/connections").status_code,
            "edit pool": api.request("PATCH", "/api/v2/pools/mlops_promotion",
                                     json={"name": "mlops_promotion", "slots": 1,
                                           "include_deferred": False}).status_code,
        }
    assert allowed == {
        "admin": {"read runs": 200, "trigger": 200, "read connections": 200, "edit pool": 200},
        "operator": {"read runs": 200, "trigger": 200, "read connections": 403, "edit pool": 403},
        "viewer": {"read runs": 200, "trigger": 403, "read connections": 403, "edit pool": 403},
    }
    assert requests.get(f"{compose_stack.airflow_url}/api/v2/dags", timeout=30).status_code == 401
    wrong = requests.post(f"{compose_stack.airflow_url}/auth/token",
                          json={"username": "admin", "password": "admin"}, timeout=30)
    assert wrong.status_code == 401
    # MLflow: no anonymous access; the viewer reads what the workers made and may not change it
    # (move @champion, log a run into their experiment) or administer accounts.
    mlflow = f"{compose_stack.mlflow_url}/api/2.0/mlflow"
    viewer = ("viewer", compose_stack.secrets["MLOPS_MLFLOW_VIEWER_PASSWORD"])
    alias = {"name": "churn_demo", "alias": "champion"}
    assert requests.get(f"{mlflow}/registered-models/alias", params=alias,
                        timeout=30).status_code == 401
    champion = requests.get(f"{mlflow}/registered-models/alias", params=alias, auth=viewer,
                            timeout=30)
    assert champion.status_code == 200, champion.text
    experiment = champion.json()["model_version"]["run_id"]
    run = requests.get(f"{mlflow}/runs/get", params={"run_id": experiment}, auth=viewer,
                       timeout=30).json()["run"]
    refused = {
        "move alias": requests.post(f"{mlflow}/registered-models/alias", auth=viewer, timeout=30,
                                    json={**alias, "version": "1"}).status_code,
        "log a run": requests.post(f"{mlflow}/runs/create", auth=viewer, timeout=30,
                                   json={"experiment_id": run["info"]["experiment_id"]}
                                   ).status_code,
        "create a user": requests.post(f"{mlflow}/users/create", auth=viewer, timeout=30,
                                       json={"username": "x-new", "password": "x" * 20}
                                       ).status_code,
    }
    assert refused == {"move alias": 403, "log a run": 403, "create a user": 403}
    api = compose_stack.api("admin")  # the role runs above must not linger
    for user in ("admin", "operator"):
        api.request("PATCH", f"/api/v2/dags/training/dagRuns/role_{user}",
                    json={"state": "failed"})


def test_no_generated_secret_reaches_anything_people_read(compose_stack) -> None:
    run_id = _run_id(compose_stack.outputs["up"])
    found: dict[str, str] = {"deploy.sh compose up output": compose_stack.outputs["up"]}
    api = compose_stack.api("admin")
    base = f"/api/v2/dags/training/dagRuns/{run_id}"
    found["dag run"] = api.request("GET", base).text
    for ti in api.json("GET", f"{base}/taskInstances")["task_instances"]:
        task = ti["task_id"]
        found[f"task instance {task}"] = json.dumps(ti)
        for attempt in range(1, int(ti["try_number"] or 0) + 1):  # a skipped task: none
            # AirflowApi asks for JSON (Accept: application/json): the structured log
            log = api.request("GET", f"{base}/taskInstances/{task}/logs/{attempt}",
                              params={"map_index": ti.get("map_index", -1)})
            assert log.status_code == 200, (task, log.status_code)
            found[f"task log {task}/{attempt}"] = log.text
        found[f"XCom {task}"] = api.request(
            "GET", f"{base}/taskInstances/{task}/xcomEntries",
            params={"deserialize": "true"}).text
    assert any("Train" in text or "train" in text for key, text in found.items()
               if key.startswith("task log train")), "the train task's log was not read"
    admin = ("admin", compose_stack.secrets["MLOPS_MLFLOW_ADMIN_PASSWORD"])
    runs = requests.post(f"{compose_stack.mlflow_url}/api/2.0/mlflow/runs/search",
                         json={"experiment_ids": ["0", "1", "2"], "max_results": 100}, auth=admin,
                         timeout=30).json().get("runs", [])
    assert runs, "no MLflow run to check"
    for run in runs:
        found[f"MLflow run {run['info']['run_id']}"] = json.dumps(run["data"])
    for container in compose_stack.containers():
        name = container["Name"]
        logs = subprocess.run(["docker", "logs", container["Id"]], capture_output=True,
                              text=True)
        found[f"container log {name}"] = logs.stdout + logs.stderr
    leaks = [(key, where) for key, value in compose_stack.secrets.items() if len(value) >= 8
             for where, text in found.items() if value in text]
    assert not leaks, f"secrets found (key, where): {leaks}"


def _wait_for_run(api: AirflowApi, run_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.json("GET", f"/api/v2/dags/training/dagRuns/{run_id}")
        if run.get("state") in ("success", "failed"):
            return run
        time.sleep(3)
    pytest.fail(f"training run {run_id} did not finish in {timeout} s")


def _train(api: AirflowApi, run_id: str, days_ago: int) -> dict[str, Any]:
    """Trigger the training DAG on the demo partition of ``days_ago`` days ago; wait for it."""
    partition = time.strftime("%Y-%m-%d", time.gmtime(time.time() - days_ago * 86400))
    response = api.request("POST", "/api/v2/dags/training/dagRuns",
                           json={"dag_run_id": run_id, "logical_date": None,
                                 "conf": {"partition_date": partition}})
    assert response.status_code == 200, response.text
    return _wait_for_run(api, run_id)


def test_gpu_profile_trains_in_the_container_through_the_proxy_only(compose_stack) -> None:
    """``up --gpu``: the train task goes to the gpu queue, whose worker runs the trainer
    container through docker-proxy; the proxy refuses a host mount, a privileged container and
    an exec; no other service sees the engine."""
    result = compose_stack.deploy("up", "--gpu", extra={"MLOPS_COMPOSE_DEMO": "0"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    containers = compose_stack.containers()
    by_service: dict[str, list[dict[str, Any]]] = {}
    for container in containers:
        by_service.setdefault(container["Config"]["Labels"]["com.docker.compose.service"],
                              []).append(container)
    (gpu_worker,) = by_service["airflow-worker-gpu"]
    for service, members in by_service.items():
        for container in members:
            mounts = [m.get("Source", "") for m in container["Mounts"]]
            env = "\n".join(container["Config"]["Env"] or [])
            if service == "docker-proxy":
                assert any(m.endswith("docker.sock") for m in mounts)
                continue
            assert not any("docker.sock" in m for m in mounts), (service, mounts)
            assert ("DOCKER_HOST=tcp://docker-proxy:2375" in env) == (
                service == "airflow-worker-gpu"), service

    api = compose_stack.api("operator")
    run = _train(api, "gpu_profile", days_ago=2)
    tis = {ti["task_id"]: ti for ti in api.json(
        "GET", "/api/v2/dags/training/dagRuns/gpu_profile/taskInstances")["task_instances"]}
    log = api.request("GET", "/api/v2/dags/training/dagRuns/gpu_profile/taskInstances/train/"
                      f"logs/{tis['train']['try_number']}", params={"map_index": 0}).text
    assert tis["train"]["state"] == "success", (run, log[-3000:])
    assert tis["train"]["queue"] == "gpu" and tis["ingest"]["queue"] == "default"
    assert tis["train"]["hostname"] == gpu_worker["Config"]["Hostname"]
    # The container ran through the proxy, on the compose network, and exited 0.
    assert "on tcp://docker-proxy:2375" in log, log[-3000:]
    assert f"network {compose_stack.project}_default" in log, log[-3000:]
    assert re.search(r"Trainer container \S+ exited 0 after", log), log[-3000:]

    probe = (
        "import docker, json\n"
        "c = docker.APIClient(base_url='tcp://docker-proxy:2375')\n"
        "image = c.inspect_image(__import__('os').environ['MLOPS_TRAINER_IMAGE'])['Id']\n"
        "out = {}\n"
        "for name, hc in [('bind', c.create_host_config(binds=['/:/host'])),\n"
        "                 ('privileged', c.create_host_config(privileged=True)),\n"
        "                 ('pid_host', c.create_host_config(pid_mode='host')),\n"
        "                 ('plain', c.create_host_config(mem_limit='64m'))]:\n"
        "    try:\n"
        "        cid = c.create_container(image, command=['true'], host_config=hc)['Id']\n"
        "        c.remove_container(cid)\n"
        "        out[name] = 'created'\n"
        "    except docker.errors.APIError as err:\n"
        "        out[name] = err.status_code\n"
        "for name, call in [('volumes', lambda: c.volumes()), ('pull', lambda: c.pull('busybox')),\n"
        "                   ('build', lambda: list(c.build(fileobj=__import__('io').BytesIO(b'FROM scratch'))))]:\n"
        "    try:\n"
        "        call()\n"
        "        out[name] = 'allowed'\n"
        "    except docker.errors.APIError as err:\n"
        "        out[name] = err.status_code\n"
        "print(json.dumps(out))\n")
    result = subprocess.run(["docker", "exec", gpu_worker["Id"], "python", "-c", probe],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    refused = json.loads(result.stdout.strip().splitlines()[-1])
    assert refused == {"bind": 403, "privileged": 403, "pid_host": 403, "plain": "created",
                       "volumes": 403, "pull": 403, "build": 403}, refused


def _snapshot(stack: ComposeStack) -> dict[str, Any]:
    """What a restore must bring back (tests/integration/snapshot.py), S3 read through the
    stack's own ``s3-export``."""
    export = subprocess.run(
        ["docker-compose", "-p", stack.project, "--env-file", str(stack.env_file), "-f",
         str(REPO / "docker-compose.yaml"), "run", "--rm", "--no-deps", "-T", "airflow-init",
         "s3-export"], capture_output=True, env=stack.env, timeout=300)
    assert export.returncode == 0, export.stderr[-2000:]
    return stack_snapshot(stack.api("admin"), stack.mlflow_url,
                          stack.secrets["MLOPS_MLFLOW_ADMIN_PASSWORD"], export.stdout)


def test_backup_wipe_restore_brings_everything_back_and_training_works(
        compose_stack, tmp_path: Path) -> None:
    """``compose backup`` while the stack runs, ``down -v`` (every volume gone), ``compose
    restore``: runs, task states, MLflow runs and metrics, model versions, aliases, audit
    records and artifacts are identical, and a training run after the restore succeeds."""
    before = _snapshot(compose_stack)
    assert any(key.startswith("s3 mlops/audit/") for key in before), sorted(before)[:20]
    assert any(alias == "champion" for alias, _ in before["aliases churn_demo"]), before
    backup = tmp_path / "backup"
    result = compose_stack.deploy("backup", str(backup), timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert (backup / "manifest.json").exists() and backup.stat().st_mode & 0o777 == 0o700

    # A damaged backup is refused before anything is touched.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for item in backup.iterdir():
        (damaged / item.name).write_bytes(item.read_bytes())
    with (damaged / "s3.tar").open("r+b") as handle:
        handle.truncate(1000)
    refused = compose_stack.deploy("restore", str(damaged), timeout=300)
    assert refused.returncode != 0 and "nothing was changed" in refused.stderr, refused.stderr
    assert _snapshot(compose_stack) == before

    wiped = compose_stack.deploy("down", "-v", timeout=300)
    assert wiped.returncode == 0, wiped.stderr[-2000:]
    started = time.monotonic()
    restored = compose_stack.deploy("restore", str(backup), timeout=UP_TIMEOUT)
    assert restored.returncode == 0, (restored.stdout + restored.stderr)[-6000:]
    print(f"\nrestore after down -v: {time.monotonic() - started:.0f} s")
    after = _snapshot(compose_stack)
    assert after.keys() == before.keys(), sorted(set(after) ^ set(before))
    assert after == before

    run = _train(compose_stack.api("operator"), "after_restore", days_ago=3)
    assert run["state"] == "success", run
