"""Hook for the Optuna study storage: the RDB the tune step's mapped tasks share."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook


class OptunaStorageHook(BaseHook):
    """Owns the connection to the database Optuna keeps its studies in.

    Connection ``mlops_optuna``: type ``postgres`` (``host``, ``port``, ``schema`` = database,
    ``login``, ``password``; the production stack's ``optuna`` database) or type ``sqlite``
    (``host`` = the file's path; the embedded stack's ``.local/optuna.db``), or any type
    with the SQLAlchemy URL in the extra ``url``. The URL holds the password: it is masked in
    task logs and never returned in XCom.

    :param optuna_conn_id: Airflow connection id
    """

    conn_name_attr = "optuna_conn_id"
    default_conn_name = "mlops_optuna"
    conn_type = "generic"
    hook_name = "MLOps Optuna storage"

    def __init__(self, optuna_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.optuna_conn_id = optuna_conn_id

    @cached_property
    def storage_url(self) -> str:
        """The SQLAlchemy URL of the study storage."""
        from airflow.sdk.exceptions import AirflowNotFoundException
        from airflow.sdk.log import mask_secret

        from include.mlops_core.errors import ConfigError

        try:
            conn = self.get_connection(self.optuna_conn_id)
        except AirflowNotFoundException:
            raise ConfigError(
                f"tuning needs the Airflow connection {self.optuna_conn_id!r} to the Optuna "
                "study database (PostgreSQL in production, a SQLite file on one machine); "
                "./deploy.sh creates it, see docs/configuration.md#tuning") from None
        url = storage_url(conn.conn_type, host=conn.host, port=conn.port, schema=conn.schema,
                          login=conn.login, password=conn.password, extra=conn.extra_dejson)
        if conn.password:
            mask_secret(conn.password)
        return url


def storage_url(conn_type: str | None, *, host: str | None, port: int | None,
                schema: str | None, login: str | None, password: str | None,
                extra: dict[str, Any]) -> str:
    """A connection's fields as the SQLAlchemy URL Optuna's RDBStorage takes."""
    from urllib.parse import quote

    from include.mlops_core.errors import ConfigError

    if extra.get("url"):
        return str(extra["url"])
    if conn_type == "sqlite":
        if not host:
            raise ConfigError("the Optuna connection of type sqlite needs the file's path in host")
        return f"sqlite:///{host}"
    if conn_type in ("postgres", "postgresql"):
        auth = f"{quote(login or '', safe='')}:{quote(password or '', safe='')}@" if login else ""
        return (f"postgresql+psycopg://{auth}{host or 'localhost'}:{port or 5432}/"
                f"{schema or 'optuna'}")
    hint = (" (`airflow connections add --conn-type postgres` and the UI store type generic "
            "when the postgres provider is not installed: import the connection from a JSON "
            "file with `airflow connections import`, as ./deploy.sh does)"
            if conn_type == "generic" else "")
    raise ConfigError(f"the Optuna connection has type {conn_type!r}: use postgres or sqlite, or "
                      f"put the SQLAlchemy URL in its extra 'url'{hint}")
