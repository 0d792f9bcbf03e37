"""plugins/mlops_airflow/hooks: connections come from AIRFLOW_CONN_* variables, looked up on first use."""

from __future__ import annotations

import json
import os
from typing import Any
from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowNotFoundException

from mlops_airflow.hooks.mlflow import MlflowHook
from mlops_airflow.hooks.object_storage import ObjectStorageHook


def conn_env(conn_id: str, **fields: Any) -> dict[str, str]:
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(fields)}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"conn_type": "http", "host": "http://mlflow:5000/"}, "http://mlflow:5000",
                     id="url-in-host"),
        pytest.param({"conn_type": "http", "host": "mlflow", "port": 5000}, "http://mlflow:5000",
                     id="host-and-port"),
        pytest.param({"conn_type": "http", "host": "mlflow.example.com", "schema": "https"},
                     "https://mlflow.example.com", id="schema"),
        pytest.param({"conn_type": "https", "host": "mlflow.example.com", "port": 8443},
                     "https://mlflow.example.com:8443", id="https-conn-type"),
    ],
)
def test_mlflow_tracking_uri_from_connection(fields: dict[str, Any], expected: str) -> None:
    with mock.patch.dict(os.environ, conn_env("mlflow_unit", **fields)):
        assert MlflowHook("mlflow_unit").tracking_uri == expected


def test_object_storage_hook_builds_a_store_from_the_connection() -> None:
    env = conn_env("s3_unit", conn_type="aws", login="AKIAUNIT", password="unit-secret",
                   extra={"endpoint_url": "http://127.0.0.1:8333", "region_name": "eu-west-1",
                          "attempts": 2, "backoff_seconds": 0.5})
    with mock.patch.dict(os.environ, env):
        store = ObjectStorageHook("s3_unit").store  # builds a boto3 client; no request is sent

    assert store.endpoint == "http://127.0.0.1:8333"
    assert (store.attempts, store.backoff_seconds) == (2, 0.5)
    assert store.conn_hint == "Airflow connection 's3_unit'"
    client = store._s3
    assert client.meta.endpoint_url == "http://127.0.0.1:8333"
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.s3 == {"addressing_style": "path"}
    # The connection's key signs the requests (a presigned URL is signed locally: no request).
    url = client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    assert url.startswith("http://127.0.0.1:8333/b/k?")
    assert "AWSAccessKeyId=AKIAUNIT&" in url or "X-Amz-Credential=AKIAUNIT%2F" in url, url


def test_hook_without_connection_fails_on_first_use_naming_it() -> None:
    hook = ObjectStorageHook("no_such_connection_unit")  # constructing is fine
    with pytest.raises(AirflowNotFoundException, match="`no_such_connection_unit` isn't defined"):
        _ = hook.store


def test_container_environment_keeps_secrets_apart() -> None:
    env = {**conn_env("s3_unit", conn_type="aws", login="AKIAUNIT", password="unit-secret",
                      extra={"endpoint_url": "http://127.0.0.1:8333", "region_name": "eu-west-1"}),
           **conn_env("mlflow_unit", conn_type="http", host="http://mlflow:5000", login="bot",
                      password="mlflow-secret")}
    with mock.patch.dict(os.environ, env):
        s3_public, s3_secret = ObjectStorageHook("s3_unit").container_environment()
        mlflow_public, mlflow_secret = MlflowHook("mlflow_unit").container_environment()

    assert s3_public == {"AWS_DEFAULT_REGION": "eu-west-1",
                         "MLOPS_S3_ENDPOINT_URL": "http://127.0.0.1:8333",
                         "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:8333"}
    assert s3_secret == {"AWS_ACCESS_KEY_ID": "AKIAUNIT", "AWS_SECRET_ACCESS_KEY": "unit-secret"}
    assert mlflow_public == {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert mlflow_secret == {"MLFLOW_TRACKING_USERNAME": "bot",
                             "MLFLOW_TRACKING_PASSWORD": "mlflow-secret"}
    assert "secret" not in json.dumps([s3_public, mlflow_public])


@pytest.mark.parametrize(("gpus", "count"), [("all", -1), (1, 1), (4, 4)])
def test_gpu_device_request_is_what_docker_run_gpus_sends(gpus: Any, count: int) -> None:
    from mlops_airflow.hooks.docker_engine import gpu_device_requests

    (request,) = gpu_device_requests(gpus)
    # `docker run --gpus all` / `--gpus 4`: the NVIDIA driver chosen by the "gpu" capability.
    assert dict(request) == {"Driver": "", "Count": count, "DeviceIDs": [],
                             "Capabilities": [["gpu"]], "Options": {}}
