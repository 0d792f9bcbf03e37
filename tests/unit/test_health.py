"""include/mlops_core/health.py against a real local HTTP server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from include.mlops_core.errors import ServiceUnavailableError
from include.mlops_core.health import wait_for_http


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.hits += 1  # type: ignore[attr-defined]
        status = 200 if self.path == "/health" else 503
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"OK" if status == 200 else b"down")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.hits = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(server: ThreadingHTTPServer, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_healthy_service_answers_first_time(server: ThreadingHTTPServer) -> None:
    wait_for_http(url(server, "/health"), service="MLflow", attempts=3, backoff_seconds=0.01)
    assert server.hits == 1  # type: ignore[attr-defined]


def test_unhealthy_service_is_retried_then_reported(server: ThreadingHTTPServer) -> None:
    target = url(server, "/broken")
    with pytest.raises(ServiceUnavailableError) as err:
        wait_for_http(target, service="MLflow tracking server", attempts=3, backoff_seconds=0.01,
                      hint="Airflow connection 'mlflow_default'")
    assert server.hits == 3  # type: ignore[attr-defined]
    message = str(err.value)
    assert f"MLflow tracking server at {target} unreachable after 3 attempts" in message
    assert "Airflow connection 'mlflow_default' points at it" in message
    assert message.endswith("(runbook: docs/runbooks/service-unreachable.md)")


def test_closed_port_is_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket closes
    with pytest.raises(ServiceUnavailableError, match=r"S3 at http://127\.0\.0\.1:\d+/ unreachable"):
        wait_for_http(f"http://127.0.0.1:{port}/", service="S3", attempts=2, backoff_seconds=0.01,
                      timeout=1)
