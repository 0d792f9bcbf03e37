"""The one alias lookup (``tracking.alias_version``) through both clients it takes: mlflow's
``MlflowClient`` and ``RestRegistry`` (MLflow's REST API without importing mlflow, for
``check_changed``). Both say None for a model or alias that does not exist, including the 403
MLflow's basic-auth answers for a model that does not exist, and ``CredentialsError`` for rejected
credentials. Also ``tracking.register`` (idempotent per run, waits in
``create_model_version``) and ``RunContext.put_bytes`` (a PNG on the MLflow run and in the run folder).
MLflow on SQLite; the REST side against a small local HTTP server."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from include.mlops_core import pipeline, tracking
from include.mlops_core.errors import CredentialsError
from include.mlops_core.storage import ObjectStore
from tests.unit.helpers import churn_config

VERSION = {"name": "m", "version": "3", "run_id": "r-1",
           "tags": [{"key": "mlops.repro_key", "value": "k"}]}


class FakeMlflow:
    """``GET /api/2.0/mlflow/registered-models/{alias,get}``; ``answers`` maps the endpoint to
    (status, body) (a dict body is sent as JSON)."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, Any]] = {}
        self.seen: list[tuple[str, dict[str, list[str]], str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlparse(self.path)
                endpoint = url.path.rsplit("/", 1)[-1]
                fake.seen.append((endpoint, parse_qs(url.query), self.headers.get("Authorization")))
                status, body = fake.answers.get(endpoint, (404, "no such endpoint"))
                data = (json.dumps(body) if isinstance(body, dict) else body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeMlflow]:
    server = FakeMlflow()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()


@pytest.fixture
def rest(fake: FakeMlflow) -> tracking.RestRegistry:
    fake.answers.clear()
    fake.seen.clear()
    return tracking.RestRegistry(fake.url + "/", auth=("worker", "secret"), timeout=5)


MISSING_MODEL = (404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                       "message": "Registered Model with name=m not found"})


def test_rest_finds_the_version_behind_the_alias(fake: FakeMlflow,
                                                 rest: tracking.RestRegistry) -> None:
    fake.answers["alias"] = (200, {"model_version": VERSION})
    found = tracking.alias_version(rest, "m", "challenger")
    assert found == tracking.RegistryVersion(version="3", run_id="r-1",
                                             tags={"mlops.repro_key": "k"})
    endpoint, params, authorization = fake.seen[0]
    assert endpoint == "alias" and params == {"name": ["m"], "alias": ["challenger"]}
    assert authorization and authorization.startswith("Basic ")


@pytest.mark.parametrize("alias_answer", [
    MISSING_MODEL,
    (400, {"error_code": "INVALID_PARAMETER_VALUE",
           "message": "Registered model alias champion not found."}),
    (404, "not found"),  # a proxy's plain-text answer
])
def test_rest_no_model_or_no_alias_is_none(fake: FakeMlflow, rest: tracking.RestRegistry,
                                           alias_answer: tuple[int, Any]) -> None:
    fake.answers["alias"] = alias_answer
    assert tracking.alias_version(rest, "m") is None
    assert [s[0] for s in fake.seen] == ["alias"]


def test_rest_basic_auth_403_for_a_model_that_does_not_exist_is_none(
        fake: FakeMlflow, rest: tracking.RestRegistry) -> None:
    fake.answers["alias"] = (403, "Permission denied")
    fake.answers["get"] = MISSING_MODEL
    assert tracking.alias_version(rest, "m") is None
    assert [s[0] for s in fake.seen] == ["alias", "get"]


@pytest.mark.parametrize(("alias_answer", "get_answer"), [
    ((401, "You are not authenticated."), None),
    ((403, "Permission denied"), (200, {"registered_model": {"name": "m"}})),
    ((403, "Permission denied"), (403, "Permission denied")),
])
def test_rest_rejected_credentials_are_a_credentials_error(
        fake: FakeMlflow, rest: tracking.RestRegistry, alias_answer: tuple[int, Any],
        get_answer: tuple[int, Any] | None) -> None:
    fake.answers["alias"] = alias_answer
    if get_answer:
        fake.answers["get"] = get_answer
    with pytest.raises(CredentialsError, match=rf"MLflow at {fake.url} rejected the "
                                               rf"credentials \(HTTP {alias_answer[0]}\)"):
        tracking.alias_version(rest, "m")


def test_rest_other_errors_are_raised(fake: FakeMlflow, rest: tracking.RestRegistry) -> None:
    fake.answers["alias"] = (500, {"error_code": "INTERNAL_ERROR", "message": "database down"})
    with pytest.raises(tracking.RegistryError, match="INTERNAL_ERROR: database down") as raised:
        tracking.alias_version(rest, "m")
    assert raised.value.get_http_status_code() == 500


class DeniedClient:
    """An ``MlflowClient`` behind MLflow's basic-auth: every alias lookup is a 403."""

    def __init__(self, model_exists: bool) -> None:
        self.model_exists = model_exists
        self.tracking_uri = "http://mlflow:5000"

    def get_model_version_by_alias(self, name: str, alias: str) -> Any:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

        raise MlflowException("Permission denied", error_code=PERMISSION_DENIED)

    def get_registered_model(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

        if not self.model_exists:
            raise MlflowException(f"Registered Model with name={name} not found",
                                  error_code=RESOURCE_DOES_NOT_EXIST)
        return {"name": name}


def test_mlflow_client_basic_auth_403_same_as_rest() -> None:
    assert tracking.alias_version(DeniedClient(model_exists=False), "m") is None
    with pytest.raises(CredentialsError, match="MLflow at http://mlflow:5000 rejected the "
                                               r"credentials \(HTTP 403\)"):
        tracking.alias_version(DeniedClient(model_exists=True), "m")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
                           registry_uri=f"sqlite:///{folder / 'mlflow.db'}")


def test_mlflow_client_lookup_and_idempotent_register(registry: Any,
                                                      caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    client, name = registry, "lookup_and_register"
    assert tracking.alias_version(client, name) is None  # no model
    run_id = client.create_run(tracking.ensure_experiment(client, name)).info.run_id
    # MLflow's wait (and its "Waiting up to" INFO record) is in the REST store; SQLite's
    # versions are READY at once, so here: that register asks for it.
    calls: list[dict[str, Any]] = []
    create = client.create_model_version
    monkeypatch.setattr(client, "create_model_version",
                        lambda *a, **kw: calls.append(kw) or create(*a, **kw))
    first = tracking.register(client, model_name=name, model_uri=f"runs:/{run_id}/model",
                              run_id=run_id, tags={"mlops.gate": "approved"},
                              description="first", timeout_s=30)
    assert [c["await_creation_for"] for c in calls] == [30]
    assert tracking.alias_version(client, name) is None  # no alias
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = tracking.register(client, model_name=name, model_uri=f"runs:/{run_id}/model",
                                  run_id=run_id, tags={"mlops.gate": "approved"},
                                  description="retried")
    assert again == first == "1" and len(calls) == 1
    assert f"already registered as {name} version 1; reusing it" in caplog.text
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    client.set_registered_model_alias(name, "challenger", first)
    found = tracking.alias_version(client, name, "challenger")
    assert str(found.version) == "1" and found.run_id == run_id
    assert found.tags["mlops.gate"] == "approved"


def test_put_bytes_logs_the_same_png_to_the_run_and_the_run_folder(registry: Any,
                                                                   tmp_path: Path) -> None:
    client = registry
    run_id = client.create_run(tracking.ensure_experiment(client, "put_bytes")).info.run_id
    run_ctx = pipeline.RunContext(config=churn_config(), store=ObjectStore(), client=client,
                           mlflow_run_id=run_id, artifacts_uri=str(tmp_path / "artifacts"),
                           run_key="2025-01-02T000000")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    uri = run_ctx.put_bytes("explanation.png", png, mlflow_path="explanations/summary.png")
    assert uri == f"{run_ctx.run_dir}/explanation.png"
    assert ObjectStore().read_bytes(uri) == png
    assert [a.path for a in client.list_artifacts(run_id, "explanations")] == \
        ["explanations/summary.png"]
    local = client.download_artifacts(run_id, "explanations/summary.png", str(tmp_path))
    assert Path(local).read_bytes() == png
    run_ctx.put_bytes("top.png", png, mlflow_path="top.png")  # at the root of the run
    assert "top.png" in [a.path for a in client.list_artifacts(run_id)]


class PendingRegistry:
    """A registry whose version of the run was left pending by an earlier try."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = statuses
        self.tagged: list[tuple[str, str]] = []

    def _version(self) -> Any:
        from types import SimpleNamespace

        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return SimpleNamespace(version="2", status=status, status_message="copy failed")

    def search_model_versions(self, query: str) -> list[Any]:
        return [self._version()]

    def get_model_version(self, name: str, version: str) -> Any:
        return self._version()

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.tagged.append((key, value))


def test_a_retry_waits_for_the_version_an_earlier_try_left_pending(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    client = PendingRegistry(["PENDING_REGISTRATION", "PENDING_REGISTRATION", "READY"])
    assert tracking.register(client, model_name="m", model_uri="runs:/r/model", run_id="r",
                             tags={"k": "v"}, description="") == "2"
    assert client.tagged == [("k", "v")]
    failed = PendingRegistry(["PENDING_REGISTRATION", "FAILED_REGISTRATION"])
    with pytest.raises(RuntimeError, match="m version 2 is FAILED_REGISTRATION: copy failed"):
        tracking.register(failed, model_name="m", model_uri="runs:/r/model", run_id="r",
                          tags={}, description="")
