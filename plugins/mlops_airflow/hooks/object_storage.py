"""Hook for S3-compatible object storage (AWS S3, SeaweedFS, MinIO, Ceph)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook


class ObjectStorageHook(BaseHook):
    """Owns the S3 connection and hands out an :class:`include.mlops_core.storage.ObjectStore`.

    Connection (type ``aws``): ``login`` = access key id, ``password`` = secret access key;
    extras ``endpoint_url`` (omit for AWS), ``region_name``, ``attempts`` (default 4) and
    ``backoff_seconds`` (default 1) for retries when the endpoint does not answer.

    :param s3_conn_id: Airflow connection id
    """

    conn_name_attr = "s3_conn_id"
    default_conn_name = "mlops_s3"
    conn_type = "aws"
    hook_name = "MLOps object storage (S3)"

    def __init__(self, s3_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.s3_conn_id = s3_conn_id

    def container_environment(self) -> tuple[dict[str, str], dict[str, str]]:
        """``(public, secret)`` environment for a container that reads and writes this store
        (``include.mlops_core.storage.ObjectStore.from_env``): endpoint and region, then the keys
        (handed over as a file, never logged)."""
        from airflow.sdk.log import mask_secret

        conn = self._conn
        extra = conn.extra_dejson
        endpoint = self.endpoint_url
        public = {"AWS_DEFAULT_REGION": extra.get("region_name") or "us-east-1"}
        if endpoint:  # MLflow's own S3 client reads the second name
            public.update(MLOPS_S3_ENDPOINT_URL=endpoint, MLFLOW_S3_ENDPOINT_URL=endpoint)
        secret = {}
        if conn.login:
            mask_secret(conn.password or "")
            secret = {"AWS_ACCESS_KEY_ID": conn.login, "AWS_SECRET_ACCESS_KEY": conn.password or ""}
        return public, secret

    @cached_property
    def _conn(self) -> Any:
        return self.get_connection(self.s3_conn_id)

    @property
    def endpoint_url(self) -> str | None:
        """The connection's S3 endpoint; None means AWS S3."""
        return _endpoint(self._conn)

    @cached_property
    def store(self) -> Any:
        return store_for(self._conn, self.s3_conn_id)


def store_for(conn: Any, conn_id: str) -> Any:
    """The :class:`include.mlops_core.storage.ObjectStore` of an S3 Connection (see
    :class:`ObjectStorageHook`); also what a trigger uses with the Connection it fetched with
    ``aget_connection``."""
    from airflow.sdk.log import mask_secret

    from include.mlops_core.storage import ObjectStore, make_s3_client

    extra = conn.extra_dejson
    if conn.password:
        mask_secret(conn.password)
    endpoint = _endpoint(conn)
    client = make_s3_client(endpoint_url=endpoint, access_key=conn.login or None,
                            secret_key=conn.password or None, region=extra.get("region_name"))
    return ObjectStore(client, endpoint=endpoint or "AWS S3",
                       attempts=int(extra.get("attempts", 4)),
                       backoff_seconds=float(extra.get("backoff_seconds", 1)),
                       conn_hint=f"Airflow connection {conn_id!r}")


def _endpoint(conn: Any) -> str | None:
    """The Connection's S3 endpoint (extra ``endpoint_url``, or ``host``); None means AWS S3."""
    extra = conn.extra_dejson
    return extra.get("endpoint_url") or extra.get("host")
