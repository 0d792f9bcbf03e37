"""The embedded stack as README.md starts it, and its backup and restore (docs/backup.md).

``./deploy.sh local`` with a state folder, a secrets file and ports of its own (the checkout's
``.local`` and ``.env`` are left alone) runs the demo to a promoted model. Then ``./deploy.sh
backup`` while the stack runs; a damaged backup is refused; the state is wiped (``./deploy.sh
stop``, the state folder and the secrets file deleted); ``./deploy.sh restore`` brings back
runs, task states, MLflow runs and metrics, model versions, aliases, audit records and
artifacts, identical; and a training run after the restore succeeds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from stack import free_port, read_env_file
from summary import AirflowApi

from tests.integration.conftest import REPO, _tail
from tests.integration.snapshot import stack_snapshot

LOCAL_TIMEOUT = 900  # s: ./deploy.sh local on a machine whose venv exists (about 2 min here)
# What a user's shell has; nothing of this test session's (its Airflow home, policy, datasets).
PASSED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONDONTWRITEBYTECODE", "UV_CACHE_DIR",
          "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "UV_OFFLINE", "PIP_INDEX_URL",
          "PIP_FIND_LINKS", "PIP_NO_INDEX")


class Embedded:
    def __init__(self, root: Path) -> None:
        self.state, self.env_file = root / "state", root / "env"
        self.s3_port, self.mlflow_port, self.airflow_port = free_port(7), free_port(), free_port()
        self.env = {**{key: os.environ[key] for key in PASSED if key in os.environ},
                    "MLOPS_STATE_DIR": str(self.state), "MLOPS_ENV_FILE": str(self.env_file),
                    "MLOPS_S3_PORT": str(self.s3_port), "MLOPS_MLFLOW_PORT": str(self.mlflow_port),
                    "MLOPS_AIRFLOW_PORT": str(self.airflow_port),
                    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
        self.airflow_url = f"http://127.0.0.1:{self.airflow_port}"
        self.mlflow_url = f"http://127.0.0.1:{self.mlflow_port}"

    def deploy(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(REPO / "deploy.sh"), *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    @property
    def secrets(self) -> dict[str, str]:
        return read_env_file(self.env_file)

    def api(self, user: str) -> AirflowApi:
        return AirflowApi(self.airflow_url, user,
                          self.secrets[f"MLOPS_AIRFLOW_{user.upper()}_PASSWORD"])

    def logs(self) -> str:
        folder = self.state / "logs"
        return "\n".join(f"--- {log.name} ---\n{_tail(log, 2000)}"
                         for log in sorted(folder.glob("*.log"))) if folder.exists() else ""

    def snapshot(self) -> dict[str, Any]:
        secrets = self.secrets
        export = subprocess.run(
            [str(REPO / ".venv" / "bin" / "python"), str(REPO / "scripts" / "backup.py"),
             "s3-export"], capture_output=True, timeout=300,
            env={**self.env, "MLOPS_S3_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_port}",
                 "AWS_ACCESS_KEY_ID": secrets["MLOPS_S3_ADMIN_ACCESS_KEY"],
                 "AWS_SECRET_ACCESS_KEY": secrets["MLOPS_S3_ADMIN_SECRET_KEY"],
                 "AWS_DEFAULT_REGION": "us-east-1"})
        assert export.returncode == 0, export.stderr.decode()[-2000:]
        return stack_snapshot(self.api("admin"), self.mlflow_url,
                              secrets["MLOPS_MLFLOW_ADMIN_PASSWORD"], export.stdout)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    stack = Embedded(tmp_path_factory.mktemp("embedded"))
    started = time.monotonic()
    try:
        result = stack.deploy("local", timeout=LOCAL_TIMEOUT)
        output = result.stdout + result.stderr
        assert result.returncode == 0, \
            f"./deploy.sh local failed ({result.returncode}):\n{output[-6000:]}\n{stack.logs()}"
        print(f"\n./deploy.sh local: {time.monotonic() - started:.0f} s to the promoted demo model")
        yield stack
    finally:
        stopped = stack.deploy("stop", timeout=120)
        assert stopped.returncode == 0, (stopped.stdout + stopped.stderr)[-2000:]


def test_deploy_serve_serves_the_promoted_demo_model(embedded: Embedded) -> None:
    """``./deploy.sh serve`` as the README says, on the stack ``./deploy.sh local`` left: the
    demo's @champion over HTTP, the version in the answer (docs/serving.md)."""
    import json
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([str(REPO / "deploy.sh"), "serve", "--port", str(port)], cwd=REPO,
                            env=embedded.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/version", timeout=2) as answer:  # noqa: S310
                    versions = json.loads(answer.read())["models"]
                if versions["churn_demo"]["version"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "./deploy.sh serve did not serve in 90 s"
            time.sleep(0.5)
        assert versions["churn_demo"]["version"] == "1"
        row = {"tenure_months": 22, "monthly_charges": 99.01, "total_charges": 2281.44,
               "contract": "two_year", "payment_method": "electronic_check",
               "internet_service": "none", "support_calls": 2, "age": 37, "region": "west"}
        request = urllib.request.Request(f"{url}/predict", method="POST",
                                         data=json.dumps({"rows": [row, row]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            body, version = json.loads(answer.read()), answer.headers["X-Model-Version"]
        assert (body["model_version"], version, len(body["predictions"])) == ("1", "1", 2), body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert "Serving churn_demo (@champion)" in out, out
    for secret in embedded.secrets.values():
        assert len(secret) < 8 or secret not in out, "a secret in ./deploy.sh serve's output"


def test_local_backup_wipe_restore_brings_everything_back_and_training_works(
        embedded: Embedded, tmp_path: Path) -> None:
    before = embedded.snapshot()
    assert any(key.startswith("s3 mlops/audit/") for key in before), sorted(before)[:20]
    assert ("champion", "1") in before["aliases churn_demo"], before.get("aliases churn_demo")
    backup = tmp_path / "backup"
    result = embedded.deploy("backup", str(backup))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert (backup / "manifest.json").exists() and backup.stat().st_mode & 0o777 == 0o700
    assert all(item.stat().st_mode & 0o777 == 0o600 for item in backup.iterdir())

    # A damaged backup is refused before anything is touched.
    damaged = tmp_path / "damaged"
    shutil.copytree(backup, damaged)
    with (damaged / "mlflow.db").open("r+b") as handle:
        handle.truncate(4096)
    refused = embedded.deploy("restore", str(damaged))
    assert refused.returncode != 0 and "nothing was changed" in refused.stderr, refused.stderr
    assert embedded.snapshot() == before

    wiped = embedded.deploy("stop", timeout=120)
    assert wiped.returncode == 0, (wiped.stdout + wiped.stderr)[-2000:]
    shutil.rmtree(embedded.state)
    embedded.env_file.unlink()
    started = time.monotonic()
    restored = embedded.deploy("restore", str(backup))
    assert restored.returncode == 0, \
        f"{(restored.stdout + restored.stderr)[-6000:]}\n{embedded.logs()}"
    print(f"\nrestore after the state was deleted: {time.monotonic() - started:.0f} s")
    assert embedded.env_file.stat().st_mode & 0o777 == 0o600
    after = embedded.snapshot()
    assert after.keys() == before.keys(), sorted(set(after) ^ set(before))
    assert after == before

    # A training run after the restore: the demo partition of two days ago, as an operator.
    partition = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 2 * 86400))
    api = embedded.api("operator")
    response = api.request("POST", "/api/v2/dags/training/dagRuns", json={
        "dag_run_id": "after_restore", "logical_date": None,
        "conf": {"partition_date": partition}})
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 600
    while (run := api.json("GET", "/api/v2/dags/training/dagRuns/after_restore"))[
            "state"] not in ("success", "failed"):
        assert time.monotonic() < deadline, f"the run after the restore did not end: {run}"
        time.sleep(2)
    assert run["state"] == "success", f"{run}\n{embedded.logs()}"
