"""The model server against a real MLflow server over HTTP (basic-auth, artifacts in SeaweedFS):
started as a subprocess with the read-only ``viewer`` login, it serves ``@champion``, follows a
promotion and a rollback without a restart, keeps serving the old version when the new one is
refused, and ``smoke_test`` passes or fails with ``ServingError`` as the rollback DAG needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from include.mlops_core import modeling, tracking
from include.mlops_core.errors import ServingError
from include.mlops_core.serving import smoke_test
from tests.unit.helpers import churn_config, demo_frame

REPO = Path(__file__).resolve().parents[2]
MODEL = "it_serving"
POLL_SECONDS = 0.5


def _register(client: Any, experiment_id: str, frame: Any, *, max_iter: int,
              family: str | None = "hist_gradient_boosting") -> str:
    """Train, log and register one version as the pipeline does (skops, signature, the family
    in the training run's params; ``family=None`` leaves it out, so the server must refuse it)."""
    config = churn_config(training={"hyperparameters": {"max_iter": max_iter}})
    features = [c.name for c in config.feature_columns]
    run_id = client.create_run(experiment_id).info.run_id
    if family:
        client.log_param(run_id, "family", family)
    model = modeling.train(frame, config)
    info = tracking.log_sklearn_model(run_id=run_id, model=model, name="model",
                                      input_example=frame[features].head(5),
                                      trusted_types=modeling.untrusted_types(model))
    version = tracking.register(client, model_name=MODEL, model_uri=info.model_uri,
                                run_id=run_id, tags={}, description="serving test")
    client.set_terminated(run_id)
    return version


def _lower(headers: Any) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def _get(url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            return response.status, json.loads(response.read()), _lower(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), _lower(err.headers)


def _post(url: str, body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read()), _lower(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), _lower(err.headers)


class Server:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path, secret: str) -> None:
        self.url, self.proc, self.log, self.secret = url, proc, log, secret

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def wait_for(self, version: str, timeout: float = 20) -> float:
        """Seconds until /version reports ``version`` (the process must stay the same one)."""
        started = time.monotonic()
        while True:
            assert self.proc.poll() is None, f"the server exited:\n{self.tail()}"
            _, body, _ = _get(f"{self.url}/version")
            if body["models"][MODEL]["version"] == version:
                return time.monotonic() - started
            assert time.monotonic() - started < timeout, \
                f"still v{body['models'][MODEL]['version']}, not v{version}:\n{self.tail()}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def registered(services: Any) -> dict[str, Any]:
    """v1 and v2 of MODEL (v1 is @champion), and v3 whose training run records no family."""
    client = services.mlflow_client()
    experiment_id = tracking.ensure_experiment(client, MODEL)
    config = churn_config()
    frame = demo_frame(config, rows=400)
    versions = [_register(client, experiment_id, frame, max_iter=5),
                _register(client, experiment_id, frame, max_iter=10),
                _register(client, experiment_id, frame, max_iter=5, family=None)]
    assert versions == ["1", "2", "3"]
    client.set_registered_model_alias(MODEL, "champion", "1")
    features = [c.name for c in config.feature_columns]
    rows = json.loads(frame[features].head(30).to_json(orient="records"))
    return {"client": client, "rows": rows}


@pytest.fixture(scope="module")
def server(services: Any, registered: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
           ) -> Server:
    """``python -m include.mlops_core.serving serve`` as ./deploy.sh serve runs it: the viewer's
    read-only MLflow login, nothing else."""
    from stack import MLFLOW_VIEWER, free_port

    port = free_port()
    log = tmp_path_factory.mktemp("serving") / "serving.log"
    secret = services.secrets["MLOPS_MLFLOW_VIEWER_PASSWORD"]
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "AWS_", "AIRFLOW_CONN_"))}
    env.update(MLFLOW_TRACKING_USERNAME=MLFLOW_VIEWER, MLFLOW_TRACKING_PASSWORD=secret,
               PYTHONPATH=str(REPO))
    with log.open("wb") as out:  # its own working directory: it must write nothing there
        proc = subprocess.Popen(
            [sys.executable, "-m", "include.mlops_core.serving", "serve", "--model", MODEL,
             "--tracking-uri", services.mlflow_url, "--port", str(port),
             "--poll-seconds", str(POLL_SECONDS)],
            cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    found = Server(f"http://127.0.0.1:{port}", proc, log, secret)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, \
                f"the server exited with {proc.returncode}:\n{found.tail()}"
            try:
                if _get(f"{found.url}/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no healthy server after 90 s:\n{found.tail()}"
            time.sleep(0.2)
        yield found
    finally:  # also when it never became healthy
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _promote(registered: dict[str, Any], version: str) -> None:
    registered["client"].set_registered_model_alias(MODEL, "champion", version)


def test_predicts_single_rows_and_batches_with_the_version(server: Server,
                                                           registered: dict[str, Any]) -> None:
    _promote(registered, "1")
    server.wait_for("1")
    rows = registered["rows"]
    status, one, headers = _post(f"{server.url}/predict", {"row": rows[0]})
    assert status == 200, one
    assert one["model_version"] == "1" and headers["x-model-version"] == "1"
    assert len(one["predictions"]) == 1
    status, batch, headers = _post(f"{server.url}/models/{MODEL}/predict",
                                   {"rows": rows, "scores": True})
    assert status == 200 and headers["x-model-version"] == "1"
    assert len(batch["predictions"]) == len(batch["scores"]) == len(rows)
    assert batch["predictions"][0] == one["predictions"][0]

    status, body, headers = _post(f"{server.url}/predict", {"row": {**rows[0], "colour": 1}})
    assert status == 422 and headers["x-model-version"] == "1"
    assert "unknown column 'colour'" in body["error"]
    assert _post(f"{server.url}/predict", b"not json")[0] == 400

    status, health, _ = _get(f"{server.url}/health")
    assert status == 200 and health["status"] == "ok"
    assert health["models"][MODEL]["version"] == health["models"][MODEL]["alias_version"] == "1"
    status, info, _ = _get(f"{server.url}/models/{MODEL}")
    assert status == 200 and info["family"] == "hist_gradient_boosting"
    assert "tenure_months" in [c["name"] for c in info["columns"]]


def test_promotion_and_rollback_without_a_restart(server: Server,
                                                  registered: dict[str, Any]) -> None:
    pid = server.proc.pid
    rows = registered["rows"][:3]
    _promote(registered, "1")
    server.wait_for("1")
    _promote(registered, "2")  # promotion
    result = smoke_test(server.url, model_name=MODEL, expected_version="2", rows=rows,
                        timeout=20)
    assert result["version"] == "2" and len(result["predictions"]) == 3
    assert _get(f"{server.url}/version")[1]["models"][MODEL]["version"] == "2"
    _promote(registered, "1")  # rollback
    assert server.wait_for("1") < 10 * POLL_SECONDS + 5
    result = smoke_test(server.url, model_name=MODEL, expected_version="1", rows=rows,
                        timeout=20)
    assert result["version"] == "1" and result["latency_ms"] > 0
    assert server.proc.pid == pid and server.proc.poll() is None  # the same process throughout


def test_a_refused_version_keeps_the_old_one_serving(server: Server,
                                                     registered: dict[str, Any]) -> None:
    _promote(registered, "1")
    server.wait_for("1")
    _promote(registered, "3")  # its training run records no model family: refused
    deadline = time.monotonic() + 20
    while True:
        status, health, _ = _get(f"{server.url}/health")
        if health["models"][MODEL].get("alias_version") == "3" and "error" in health["models"][MODEL]:
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.2)
    assert status == 200 and health["status"] == "degraded"
    assert "loading v3 failed: ModelRefusedError" in health["models"][MODEL]["error"]
    assert health["models"][MODEL]["version"] == "1"
    status, body, headers = _post(f"{server.url}/predict", {"row": registered["rows"][0]})
    assert status == 200 and body["model_version"] == headers["x-model-version"] == "1"
    with pytest.raises(ServingError) as err:
        smoke_test(server.url, model_name=MODEL, expected_version="3",
                   rows=registered["rows"][:1], timeout=2)
    assert err.value.reason == "wrong_version"
    assert "it serves v1, not v3" in str(err.value)
    assert "loading v3 failed: ModelRefusedError" in str(err.value)
    _promote(registered, "1")
    server.wait_for("1")
    deadline = time.monotonic() + 10
    while _get(f"{server.url}/health")[1]["status"] != "ok":
        assert time.monotonic() < deadline, "the error did not clear after the rollback"
        time.sleep(0.2)


def test_smoke_test_failures(server: Server, registered: dict[str, Any]) -> None:
    from stack import free_port

    _promote(registered, "1")
    server.wait_for("1")
    started = time.monotonic()
    with pytest.raises(ServingError) as err:
        smoke_test(server.url, model_name=MODEL, expected_version="2",
                   rows=registered["rows"][:1], timeout=1.5)
    assert 1.5 <= time.monotonic() - started < 6
    assert err.value.reason == "wrong_version"
    assert str(err.value).endswith("(runbook: docs/runbooks/serving.md#wrong-version)")
    with pytest.raises(ServingError) as err:
        smoke_test(f"http://127.0.0.1:{free_port()}", model_name=MODEL, expected_version="1",
                   rows=registered["rows"][:1], timeout=1)
    assert err.value.reason == "unreachable" and err.value.retryable


def test_the_log_is_short_and_holds_no_secret(server: Server) -> None:
    assert [p.name for p in server.log.parent.iterdir()] == ["serving.log"]
    text = server.log.read_text(errors="replace")
    assert server.secret not in text
    assert "Traceback" not in text
    assert "serving v1" in text and "loading v3 failed" in text
    assert max(map(len, text.splitlines())) < 800
