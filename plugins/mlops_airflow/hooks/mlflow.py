"""Hook for an MLflow 3 tracking server and model registry."""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook


class MlflowHook(BaseHook):
    """Talks to one MLflow tracking server over HTTP.

    Connection: ``host`` is the server URL (``http://mlflow:5000``) or a host name with ``port`` and
    ``schema`` (http/https); ``login``/``password`` for MLflow basic auth. Extras: ``attempts``
    (default 4) and ``backoff_seconds`` (default 2) for the reachability check.

    :param mlflow_conn_id: Airflow connection id of the tracking server
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "http"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id  # ids only: no lookup until first use

    @cached_property
    def _conn(self) -> Any:
        return self.get_connection(self.mlflow_conn_id)

    @cached_property
    def tracking_uri(self) -> str:
        conn = self._conn
        host = (conn.host or "").rstrip("/")
        if host.startswith(("http://", "https://")):
            return host
        scheme = conn.schema or ("https" if conn.conn_type == "https" else "http")
        return f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")

    @property
    def ui_url(self) -> str:
        """The MLflow address people open, for links (``MLOPS_MLFLOW_UI_URL``; else this
        Connection's, which on the production stack is the workers' internal one)."""
        return (os.environ.get("MLOPS_MLFLOW_UI_URL") or self.tracking_uri).rstrip("/")

    def configure(self) -> None:
        """Point the mlflow library at this server (tracking and registry, auth, retries)."""
        import mlflow
        from airflow.sdk.log import mask_secret

        conn = self._conn
        if conn.login:
            os.environ["MLFLOW_TRACKING_USERNAME"] = conn.login
        if conn.password:
            mask_secret(conn.password)
            os.environ["MLFLOW_TRACKING_PASSWORD"] = conn.password
        # The library's own retries default to 7 with backoff (minutes); ours are logged below.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

    def load_dict(self, artifact_uri: str) -> dict[str, Any]:
        """A JSON artifact (``runs:/<run id>/<path>``) of this server, parsed."""
        import mlflow.artifacts

        self.configure()
        return mlflow.artifacts.load_dict(artifact_uri)

    @property
    def auth(self) -> tuple[str, str] | None:
        """(login, password) for MLflow basic auth, when the connection has them."""
        conn = self._conn
        if conn.login:
            from airflow.sdk.log import mask_secret

            mask_secret(conn.password or "")
            return conn.login, conn.password or ""
        return None

    def container_environment(self) -> tuple[dict[str, str], dict[str, str]]:
        """``(public, secret)`` environment for a container that talks to this server: the URL,
        then the basic-auth login and password (handed over as a file, never logged)."""
        conn = self._conn
        secret = {}
        if conn.login:
            from airflow.sdk.log import mask_secret

            mask_secret(conn.password or "")
            secret = {"MLFLOW_TRACKING_USERNAME": conn.login,
                      "MLFLOW_TRACKING_PASSWORD": conn.password or ""}
        return {"MLFLOW_TRACKING_URI": self.tracking_uri}, secret

    def check_available(self) -> None:
        from include.mlops_core.health import wait_for_http

        extra = self._conn.extra_dejson
        wait_for_http(f"{self.tracking_uri}/health", service="MLflow tracking server",
                      attempts=int(extra.get("attempts", 4)),
                      backoff_seconds=float(extra.get("backoff_seconds", 2)),
                      hint=f"Airflow connection {self.mlflow_conn_id!r}")

    @cached_property
    def client(self) -> Any:
        """``mlflow.MlflowClient`` for this server; checks reachability first."""
        from mlflow import MlflowClient

        from include.mlops_core.errors import CredentialsError

        self.configure()
        self.check_available()
        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        try:  # /health needs no login: make one authenticated call so bad credentials say so
            client.search_experiments(max_results=1)
        except Exception as err:
            status = getattr(err, "get_http_status_code", lambda: None)()
            if status in (401, 403) or "401" in str(err) or "Unauthorized" in str(err):
                raise CredentialsError(
                    f"MLflow at {self.tracking_uri} rejected the credentials of Airflow "
                    f"connection {self.mlflow_conn_id!r} (HTTP {status or 401}); fix its "
                    "login/password") from err
            raise
        return client
