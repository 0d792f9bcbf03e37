"""docker-compose.yaml against what generates its inputs: every variable it requires is a secret
that ``scripts/stack.py secrets --compose`` writes to .env.compose (or has a default), every
service has a health check, a memory limit and a restart policy, only the UIs are published, the
Docker socket reaches the proxy alone, and every image it names is one scripts/build_images.py
builds. The running stack: tests/integration/test_compose_stack.py."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import build_images  # noqa: E402
from stack import COMPOSE_SECRETS, SECRETS, ensure_env_file, read_env_file  # noqa: E402

COMPOSE_TEXT = (REPO / "docker-compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]


def test_every_required_variable_is_a_generated_secret() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE_TEXT))
    assert required, "docker-compose.yaml requires no variable: the check reads nothing"
    assert required <= set(COMPOSE_SECRETS), required - set(COMPOSE_SECRETS)
    bare = set(re.findall(r"\$\{(\w+)\}", COMPOSE_TEXT))
    assert not bare, f"variables without a default or a required marker: {bare}"


def test_compose_secrets_file_is_private_complete_and_stable(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    path = tmp_path / ".env.compose"
    said = ensure_env_file(path, COMPOSE_SECRETS, "the production stack")
    assert said.startswith("Created") and path.stat().st_mode & 0o777 == 0o600
    values = read_env_file(path)
    assert set(values) == set(COMPOSE_SECRETS) > set(SECRETS)
    assert len(set(values.values())) == len(values)  # every secret its own value
    Fernet(values["AIRFLOW__CORE__FERNET_KEY"].encode())  # a valid key, made without cryptography
    # URL-safe: the compose file puts passwords into database and broker URLs unescaped.
    for key in ("MLOPS_DB_AIRFLOW_PASSWORD", "MLOPS_DB_MLFLOW_PASSWORD",
                "MLOPS_DB_OPTUNA_PASSWORD", "MLOPS_REDIS_PASSWORD"):
        assert re.fullmatch(r"[A-Za-z0-9_-]{24,}", values[key]), key
    assert ensure_env_file(path, COMPOSE_SECRETS, "the production stack") == ""
    assert read_env_file(path) == values


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_health_memory_and_restart(name: str) -> None:
    service = SERVICES[name]
    assert service.get("mem_limit"), f"{name}: no memory limit"
    if name == "airflow-init":  # one-shot: the others wait for it to exit 0
        assert service["restart"] == "no"
        return
    assert service.get("healthcheck", {}).get("test"), f"{name}: no health check"
    assert service.get("restart") == "unless-stopped", name


def test_only_the_uis_are_published_and_only_to_a_chosen_address() -> None:
    published = {name: service["ports"] for name, service in SERVICES.items()
                 if service.get("ports")}
    assert set(published) == {"airflow-apiserver", "mlflow"}
    for ports in published.values():
        (port,) = ports
        assert port.startswith("${MLOPS_COMPOSE_BIND:-127.0.0.1}:"), port
        assert ":5432" not in port and ":6379" not in port


def test_the_docker_socket_reaches_the_proxy_alone() -> None:
    with_socket = {name for name, service in SERVICES.items()
                   if any("docker.sock" in str(volume) for volume in service.get("volumes", []))}
    assert with_socket == {"docker-proxy"}
    with_engine = {name for name, service in SERVICES.items()
                   if "DOCKER_HOST" in (service.get("environment") or {})}
    assert with_engine == {"airflow-worker-gpu"}
    gpu = SERVICES["airflow-worker-gpu"]
    assert gpu["command"][:5] == ["airflow", "celery", "worker", "--queues", "gpu"]
    assert set(gpu["profiles"]) == set(SERVICES["docker-proxy"]["profiles"]) == {"gpu"}


def test_every_image_is_one_build_images_makes() -> None:
    named = {re.fullmatch(r"\$\{(\w+):-mlops-([\w-]+):latest\}", service["image"]).groups()
             for service in SERVICES.values()}
    assert {variable for variable, _ in named} == {
        build_images.image_variable(image) for _, image in named}
    assert {image for _, image in named} <= set(build_images.IMAGES)
    for _, image in named:
        files = build_images.image_files(image, None)
        assert "Dockerfile" in files and "extra-ca.crt" in files, image
    airflow = build_images.image_files("airflow", None)
    for needed in ("requirements.txt", "dags/training.py", "scripts/compose_entry.py",
                   "plugins/mlops_airflow/celery_config.py", "include/mlops_core/pipeline.py"):
        assert needed in airflow, needed


def test_the_task_supervisor_interval_is_the_embedded_stacks() -> None:
    """Both stacks bound the supervisor's wait for an exited task the same way (one value,
    scripts/stack.py MIN_HEARTBEAT_INTERVAL; why: docs/scaling.md)."""
    from stack import MIN_HEARTBEAT_INTERVAL, local_settings

    assert SERVICES["airflow-worker"]["environment"]["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] \
        == MIN_HEARTBEAT_INTERVAL == local_settings({})["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"]


@pytest.mark.parametrize("name", ["airflow-worker", "airflow-worker-gpu", "airflow-scheduler"])
def test_every_airflow_process_has_the_tasks_environment(name: str) -> None:
    """MLflow's loaders that trust the artifact stay off, and MLflow's records reach the task
    log at their own level, on the production stack as on the embedded one (one declaration,
    scripts/stack.py TASK_ENV)."""
    from stack import TASK_ENV

    environment = SERVICES[name]["environment"]
    assert {key: str(environment.get(key)) for key in TASK_ENV} == TASK_ENV


@pytest.mark.parametrize("name", ["airflow-worker", "airflow-worker-gpu"])
def test_workers_hold_no_database_password_and_no_signing_or_encryption_key(name: str) -> None:
    """A task reaches the metadata through the Execution API only: the workers get the broker's
    password (Celery's results too go to Redis) and the api secret key their log server checks
    requests with, no other generated secret."""
    environment = SERVICES[name]["environment"]
    used = {var for value in environment.values()
            for var in re.findall(r"\$\{(\w+)", str(value)) if var in COMPOSE_SECRETS}
    assert used == {"MLOPS_REDIS_PASSWORD", "AIRFLOW__API__SECRET_KEY"}, used
    assert not {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY",
                "AIRFLOW__API_AUTH__JWT_SECRET"} & set(environment)
    assert environment["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("redis://")
    # The other Airflow services keep them.
    assert "AIRFLOW__CORE__FERNET_KEY" in SERVICES["airflow-scheduler"]["environment"]
