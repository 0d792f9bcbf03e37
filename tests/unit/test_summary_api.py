"""``summary.AirflowApi``: Airflow's REST API through its own client (apache-airflow-client), as
the scripts and the integration tests use it, against a small local HTTP server: the login
(``POST /auth/token``) and a second one when the token expired, typed calls answered as the REST
API's JSON, 404 as None where asked for, error answers and an api-server that does not answer
as SystemExit with a message, and the by-path escape hatch (``request``, ``json``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlparse

import pytest
import summary
import urllib3

RUN = {"dag_display_name": "training", "dag_id": "training", "dag_run_id": "r1",
       "dag_versions": [], "run_after": "2026-01-02T00:00:00Z", "run_type": "manual",
       "state": "success", "logical_date": "2026-01-01T00:00:00Z", "end_date": None}
LOG = {"content": [{"event": "::group::Log message source details", "sources": ["a"]},
                   {"event": "training", "timestamp": "2026-01-02T03:04:05.123456Z",
                    "level": "info", "logger": "mlops.train"}],
       "continuation_token": None}


class FakeAirflow:
    """``answers`` maps (method, path) to (status, body); every request is kept in ``seen``.
    A token is valid while it is in ``valid``; each login hands out a new one."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], tuple[int, Any]] = {}
        self.seen: list[dict[str, Any]] = []
        self.logins = 0
        self.valid: set[str] = set()
        self.refuse_login = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fake.seen.append({"method": self.command, "path": url.path,
                                  "query": parse_qsl(url.query), "body": body,
                                  "auth": self.headers.get("Authorization"),
                                  "type": self.headers.get("Content-Type")})
                if url.path == "/auth/token":
                    fake.logins += 1
                    token = f"t{fake.logins}"
                    fake.valid.add(token)
                    status, answer = (403, {"detail": "no"}) if fake.refuse_login else \
                        (201, {"access_token": token})
                elif (self.headers.get("Authorization") or "").removeprefix("Bearer ") \
                        not in fake.valid:
                    status, answer = 401, {"detail": "Not authenticated"}
                else:
                    status, answer = fake.answers.get((self.command, url.path),
                                                      (404, {"detail": "not found"}))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer  # noqa: N815 - http.server's names

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAirflow]:
    server = FakeAirflow()
    threading.Thread(target=server.server.serve_forever, daemon=True).start()
    yield server
    server.server.shutdown()


@pytest.fixture
def api(fake: FakeAirflow) -> summary.AirflowApi:
    fake.answers.clear()
    fake.seen.clear()
    fake.valid.clear()
    fake.refuse_login = False
    return summary.AirflowApi(fake.url + "/", "operator", "secret")


def test_a_typed_call_logs_in_once_and_answers_json(fake: FakeAirflow,
                                                    api: summary.AirflowApi) -> None:
    fake.answers[("GET", "/api/v2/dags/training/dagRuns/r1")] = (200, RUN)
    for _ in range(2):
        run = summary._plain(api.call(api.dag_run_api.get_dag_run, "training", "r1"))
        assert (run["state"], run["logical_date"], run["end_date"]) == \
            ("success", "2026-01-01T00:00:00Z", None)
    logins = [s for s in fake.seen if s["path"] == "/auth/token"]
    assert len(logins) == 1 and json.loads(logins[0]["body"]) == {"username": "operator",
                                                                   "password": "secret"}
    assert fake.seen[-1]["auth"] == f"Bearer t{fake.logins}"


def test_an_expired_token_is_renewed_once(fake: FakeAirflow, api: summary.AirflowApi) -> None:
    fake.answers[("GET", "/api/v2/dags/training/dagRuns/r1")] = (200, RUN)
    api.call(api.dag_run_api.get_dag_run, "training", "r1")
    fake.valid.clear()  # the token expired
    assert api.call(api.dag_run_api.get_dag_run, "training", "r1").dag_run_id == "r1"
    fake.valid.clear()
    assert api.request("GET", "/api/v2/dags/training/dagRuns/r1").status_code == 200
    assert len([s for s in fake.seen if s["path"] == "/auth/token"]) == 3


def test_missing_is_none_where_asked_and_other_errors_exit(api: summary.AirflowApi) -> None:
    assert api.call(api.dag_run_api.get_dag_run, "training", "nope", missing=(404,)) is None
    with pytest.raises(SystemExit, match="get_dag_run: HTTP 404"):
        api.call(api.dag_run_api.get_dag_run, "training", "nope")


def test_a_refused_login_names_the_password_to_check(fake: FakeAirflow,
                                                     api: summary.AirflowApi) -> None:
    fake.refuse_login = True
    with pytest.raises(SystemExit, match="MLOPS_AIRFLOW_OPERATOR_PASSWORD"):
        api.request("GET", "/api/v2/dags")


def test_an_api_server_that_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(summary, "_retries", lambda: urllib3.Retry(total=1, backoff_factor=0))
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = summary.AirflowApi(f"http://127.0.0.1:{port}", "operator", "secret")
    with pytest.raises(SystemExit, match="does not answer"):
        api.request("GET", "/api/v2/dags")
    api.configuration.access_token = "known"  # the login worked before: the API call fails
    with pytest.raises(SystemExit, match="does not answer"):
        api.call(api.dag_run_api.get_dag_run, "training", "r1")


def test_request_and_json_reach_any_path(fake: FakeAirflow, api: summary.AirflowApi) -> None:
    fake.answers[("PATCH", "/api/v2/pools/p")] = (200, {"slots": 2})
    fake.answers[("GET", "/api/v2/assets")] = (200, {"assets": []})
    assert api.json("PATCH", "/api/v2/pools/p", params={"update_mask": "slots"},
                    json={"slots": 2}) == {"slots": 2}
    patch = fake.seen[-1]
    assert (patch["query"], json.loads(patch["body"]), patch["type"]) == \
        ([("update_mask", "slots")], {"slots": 2}, "application/json")
    assert api.json("GET", "/api/v2/assets?name_pattern=a b&limit=50") == {"assets": []}
    assert fake.seen[-1]["query"] == [("name_pattern", "a b"), ("limit", "50")]
    missing = api.request("DELETE", "/api/v2/nothing")
    assert missing.status_code == 404 and missing.json() == {"detail": "not found"}
    with pytest.raises(SystemExit, match=r"GET /api/v2/nothing: HTTP 404: .*not found"):
        api.json("GET", "/api/v2/nothing")


def test_log_entries_are_the_rest_apis_records(fake: FakeAirflow,
                                               api: summary.AirflowApi) -> None:
    path = "/api/v2/dags/training/dagRuns/r1/taskInstances/train/logs/2"
    fake.answers[("GET", path)] = (200, LOG)
    ti = {"task_id": "train", "try_number": 2, "map_index": 0}
    entries = summary.log_entries(api, "training", "r1", ti)
    assert entries[0] == LOG["content"][0]
    assert entries[1] == LOG["content"][1]
    assert dict(fake.seen[-1]["query"]) == {"full_content": "true", "map_index": "0"}
    fake.valid.clear()  # the token expired: logged in again
    assert summary.log_lines(api, "training", "r1", ti)[1] == "03:04:05 INFO    training"
    assert summary.log_entries(api, "training", "r1", {**ti, "task_id": "gone"}) is None
