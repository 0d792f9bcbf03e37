"""What a restore must bring back, read from a running stack (the compose stack's and the
embedded stack's backup tests): Airflow runs and task states, MLflow runs (params, metrics,
tags), model versions and aliases, and every S3 object (name and sha256)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import Any

import requests
from summary import AirflowApi


def stack_snapshot(airflow: AirflowApi, mlflow_url: str, mlflow_admin_password: str,
                   s3_tar: bytes) -> dict[str, Any]:
    """``airflow``: an admin's client of the api-server; ``s3_tar``: the stack's
    ``scripts/backup.py s3-export`` output."""
    snap: dict[str, Any] = {}
    runs = airflow.json("GET", "/api/v2/dags/training/dagRuns", params={"limit": 100})["dag_runs"]
    for run in runs:
        tis = airflow.json("GET", f"/api/v2/dags/training/dagRuns/{run['dag_run_id']}/taskInstances"
                           )["task_instances"]
        snap[f"run {run['dag_run_id']}"] = (run["state"], sorted(
            (ti["task_id"], ti["state"], ti["try_number"]) for ti in tis))
    mlflow = f"{mlflow_url}/api/2.0/mlflow"
    admin = ("admin", mlflow_admin_password)
    experiments = requests.post(f"{mlflow}/experiments/search", json={"max_results": 100},
                                auth=admin, timeout=30).json()["experiments"]
    runs = requests.post(f"{mlflow}/runs/search", auth=admin, timeout=30,
                         json={"experiment_ids": [e["experiment_id"] for e in experiments],
                               "max_results": 1000}).json().get("runs", [])
    for run in runs:
        data = run["data"]
        snap[f"mlflow run {run['info']['run_id']}"] = (
            run["info"]["status"], sorted((p["key"], p["value"]) for p in data.get("params", [])),
            sorted((m["key"], m["value"]) for m in data.get("metrics", [])),
            sorted((t["key"], t["value"]) for t in data.get("tags", [])))
    versions = requests.get(f"{mlflow}/model-versions/search", params={"max_results": 1000},
                            auth=admin, timeout=30).json().get("model_versions", [])
    for version in versions:
        snap[f"model {version['name']} v{version['version']}"] = (
            version["run_id"], version["source"], version.get("status"))
    models = requests.get(f"{mlflow}/registered-models/search", params={"max_results": 1000},
                          auth=admin, timeout=30).json().get("registered_models", [])
    for model in models:  # the version search does not return aliases; the model does
        snap[f"aliases {model['name']}"] = sorted(
            (alias["alias"], alias["version"]) for alias in model.get("aliases", []))
    with tarfile.open(fileobj=io.BytesIO(s3_tar), mode="r|") as tar:
        for member in tar:
            handle = tar.extractfile(member)
            snap[f"s3 {member.name}"] = hashlib.sha256(handle.read()).hexdigest()
    return snap
