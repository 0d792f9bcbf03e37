"""scripts/stack.py: the local stack's secrets (.env) and who gets which key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from stack import (
    AIRFLOW_PROCESS_SECRETS,
    SECRETS,
    airflow_connections,
    ensure_env_file,
    read_env_file,
    s3_identities,
    simple_auth_users,
)


def test_a_new_env_file_holds_every_secret_private(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    said = ensure_env_file(path)
    assert said == f"Created {path} (random secrets, mode 600)"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = read_env_file(path)
    assert set(values) == set(SECRETS)
    assert all(len(value) >= 16 for value in values.values())
    assert len(set(values.values())) == len(values)  # nothing shared between parties
    assert ensure_env_file(path) == "" and read_env_file(path) == values  # idempotent


def test_an_older_env_file_gets_the_missing_keys_and_keeps_its_values(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("# old\nMLOPS_AIRFLOW_ADMIN_PASSWORD=kept-as-it-was\nMLOPS_S3_ACCESS_KEY=old\n")
    path.chmod(0o644)
    said = ensure_env_file(path)
    assert said.startswith("Added MLOPS_AIRFLOW_OPERATOR_PASSWORD, ")
    assert said.endswith(f" to {path} (random secrets, mode 600)")
    values = read_env_file(path)
    assert values["MLOPS_AIRFLOW_ADMIN_PASSWORD"] == "kept-as-it-was"
    assert set(SECRETS) <= set(values)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_each_party_gets_its_own_s3_key_and_places() -> None:
    secrets = {key: make() for key, make in SECRETS.items()}
    identities = {i["name"]: i for i in s3_identities(secrets)}
    assert identities["admin"]["actions"] == ["Admin", "Read", "Write", "List", "Tagging"]
    assert identities["mlflow"]["actions"] == ["Read:mlflow", "Write:mlflow", "List:mlflow"]
    worker = identities["airflow-worker"]["actions"]
    assert "Write:mlops" in worker and "Read:mlops-data" in worker
    assert not [a for a in worker if a.endswith(":mlflow") or a == "Write:mlops-data"]
    keys = [i["credentials"][0]["accessKey"] for i in identities.values()]
    assert len(set(keys)) == 3


def test_the_workers_connections_hold_only_the_workers_credentials() -> None:
    secrets = {key: make() for key, make in SECRETS.items()}
    conns = airflow_connections(secrets, mlflow_url="http://m", s3_url="http://s")
    assert conns["mlflow_default"]["login"] == "airflow-worker"
    assert conns["mlflow_default"]["password"] == secrets["MLOPS_MLFLOW_WORKER_PASSWORD"]
    assert conns["mlops_s3"]["login"] == secrets["MLOPS_S3_WORKER_ACCESS_KEY"]
    text = repr(conns)
    for key in ("MLOPS_MLFLOW_ADMIN_PASSWORD", "MLOPS_S3_ADMIN_SECRET_KEY",
                "MLOPS_S3_MLFLOW_SECRET_KEY", "MLOPS_AIRFLOW_ADMIN_PASSWORD"):
        assert secrets[key] not in text


@pytest.mark.parametrize(("user", "role"), [("admin", "admin"), ("operator", "user"),
                                            ("viewer", "viewer")])
def test_airflow_users_and_roles(user: str, role: str) -> None:
    """Nobody gets OP: only the admin changes Connections, Variables and pools."""
    assert f"{user}:{role}" in simple_auth_users().split(",")
    assert "op" not in {entry.split(":")[1] for entry in simple_auth_users().split(",")}
    assert set(AIRFLOW_PROCESS_SECRETS) <= set(SECRETS)


def test_a_loose_mode_is_restricted(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    ensure_env_file(path)
    path.chmod(0o644)
    assert ensure_env_file(path) == f"Restricted {path} to mode 600"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
