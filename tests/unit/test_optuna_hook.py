"""The Optuna study storage URL built from the mlops_optuna connection's fields."""

from __future__ import annotations

import pytest

from include.mlops_core.errors import ConfigError
from mlops_airflow.hooks.optuna import storage_url


def _url(conn_type, **fields):
    base = {"host": None, "port": None, "schema": None, "login": None, "password": None,
            "extra": {}}
    return storage_url(conn_type, **{**base, **fields})


def test_postgres_fields_make_a_psycopg_url_with_the_password_quoted():
    assert _url("postgres", host="db", port=6432, schema="studies", login="optuna",
                password="p@ss/word:1") == \
        "postgresql+psycopg://optuna:p%40ss%2Fword%3A1@db:6432/studies"
    assert _url("postgresql", host="db") == "postgresql+psycopg://db:5432/optuna"


def test_sqlite_takes_the_file_from_host_and_the_extra_url_wins():
    assert _url("sqlite", host="/data/optuna.db") == "sqlite:////data/optuna.db"
    assert _url("generic", host="ignored", extra={"url": "sqlite:///x.db"}) == "sqlite:///x.db"
    with pytest.raises(ConfigError, match="needs the file's path in host"):
        _url("sqlite")


def test_a_generic_connection_says_how_to_store_a_postgres_one():
    with pytest.raises(ConfigError) as err:
        _url("generic", host="db", schema="optuna")
    assert "has type 'generic'" in str(err.value)
    assert "airflow connections import" in str(err.value)
    with pytest.raises(ConfigError) as other:
        _url("mysql", host="db")
    assert "has type 'mysql'" in str(other.value) and "connections import" not in str(other.value)
