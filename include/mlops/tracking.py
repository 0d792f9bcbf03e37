"""MLflow 3 tracking and registry helpers (client API only: no fluent active-run state, so a task
never ends or starts a run by accident).

One MLflow run per DAG run, found by tags (``airflow.dag_id`` + ``airflow.run_id``), so a retried
task resumes the same run. Promotion uses aliases only (stages are deprecated).
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

DAG_ID_TAG = "airflow.dag_id"
RUN_ID_TAG = "airflow.run_id"
CHAMPION = "champion"


def _not_found(err: Exception) -> bool:
    code = getattr(err, "error_code", "") or ""
    return "RESOURCE_DOES_NOT_EXIST" in code or "NOT_FOUND" in code


def ensure_experiment(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created concurrently by another task
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def find_or_create_run(client: Any, *, experiment: str, dag_id: str, dag_run_id: str,
                       tags: dict[str, str], run_name: str) -> str:
    """The MLflow run of this DAG run: found by tag, created on first use, resumed on retry."""
    experiment_id = ensure_experiment(client, experiment)
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{DAG_ID_TAG}` = '{_quote(dag_id)}' and "
                      f"tags.`{RUN_ID_TAG}` = '{_quote(dag_run_id)}'",
        max_results=2, order_by=["attributes.start_time ASC"])
    if found:
        run = found[0]
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={DAG_ID_TAG: dag_id, RUN_ID_TAG: dag_run_id, **tags})
    return run.info.run_id


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def finish_run(client: Any, run_id: str, *, outcome: str, failed: bool = False) -> None:
    client.set_tag(run_id, "mlops.outcome", outcome)
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def _denied(err: Exception) -> bool:
    code = getattr(err, "get_http_status_code", lambda: None)()
    return code == 403 or "PERMISSION_DENIED" in str(getattr(err, "error_code", ""))


def champion_version(client: Any, model_name: str, alias: str = CHAMPION) -> Any | None:
    """The model version behind ``alias``, or None when the model or alias does not exist."""
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except Exception as err:
        if _not_found(err) or "not found" in str(err).lower():
            return None
        # MLflow's basic-auth answers 403 for a model that does not exist (it has no permission
        # to look up); a 404 from the model itself says which it was.
        if _denied(err) and not _model_exists(client, model_name):
            return None
        raise


def _model_exists(client: Any, model_name: str) -> bool:
    try:
        client.get_registered_model(model_name)
        return True
    except Exception as err:
        if _not_found(err):
            return False
        raise


def load_version(client: Any, model_name: str, version: str | int) -> Any:
    """Load a registered model version through the fixed type allow-list of the model family its
    training run recorded (:mod:`include.mlops.model_loading`): the family comes from the
    tracking store, never from the artifact."""
    from include.mlops.model_loading import load_model, refuse

    mv = client.get_model_version(model_name, str(version))
    family = client.get_run(mv.run_id).data.params.get("family") if mv.run_id else None
    what = f"models:/{model_name}/{version}"
    if not family:
        raise refuse(what, f"its training run {mv.run_id} records no model family")
    return load_model(what, family)


def alias_lookup(tracking_uri: str, model_name: str, alias: str = CHAMPION, *,
                 auth: tuple[str, str] | None = None, timeout: float = 15) -> dict[str, Any] | None:
    """The model version behind ``alias`` through MLflow's REST API, without importing mlflow
    (2.5 s): ``{"version", "run_id", "tags"}``, or None when the model or alias does not exist."""
    import requests

    from include.mlops.errors import CredentialsError

    base = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/registered-models"
    response = requests.get(f"{base}/alias", params={"name": model_name, "alias": alias},
                            auth=auth, timeout=timeout)
    if response.status_code == 404 or (
            response.status_code == 400 and "alias" in response.text and "not found" in response.text):
        return None
    if response.status_code == 403:
        # MLflow's basic-auth answers 403 for a model that does not exist; ask the model itself.
        exists = requests.get(f"{base}/get", params={"name": model_name}, auth=auth,
                              timeout=timeout)
        if exists.status_code == 404:
            return None
    if response.status_code in (401, 403):
        raise CredentialsError(f"MLflow at {tracking_uri} rejected the credentials "
                               f"(HTTP {response.status_code})")
    response.raise_for_status()
    version = response.json()["model_version"]
    return {"version": str(version["version"]), "run_id": version.get("run_id"),
            "tags": {t["key"]: t["value"] for t in version.get("tags", [])}}


def log_sklearn_model(*, run_id: str, model: Any, name: str, input_example: Any,
                      trusted_types: list[str]) -> Any:
    """Log a fitted sklearn pipeline with its signature and explicit requirements.

    The signature is inferred from ``input_example`` and the model's predictions on it (so the
    example is known to predict). The example itself is not logged with the model: MLflow then
    checks it by loading the model back through its own loader, which this project switches off
    (``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``; models load only through
    ``model_loading``), so every `train` logged a 20-line warning about a load that is refused
    on purpose, and MLflow's flavor offers no argument to skip that check."""
    from importlib import metadata

    import mlflow.sklearn
    from mlflow.models import infer_signature

    requirements = [f"{pkg}=={metadata.version(pkg)}" for pkg in
                    ("mlflow-skinny", "scikit-learn", "skops", "pandas", "numpy", "scipy")]
    if any(name.startswith("xgboost.") for name in trusted_types):
        # CPU hosts install xgboost-cpu, GPU images xgboost: one version, either distribution.
        for dist in ("xgboost", "xgboost-cpu"):
            try:
                requirements.append(f"xgboost=={metadata.version(dist)}")
                break
            except metadata.PackageNotFoundError:
                continue
    signature = infer_signature(input_example, model.predict(input_example))
    return mlflow.sklearn.log_model(
        model, name=name, run_id=run_id, signature=signature,
        pip_requirements=requirements,  # explicit: inferring them costs ~5 s per model
        skops_trusted_types=trusted_types,
    )


def _column_spec(column: Any) -> Any | None:
    """The MLflow ``ColSpec`` of a numeric, boolean or all-string column, read from its dtype:
    what MLflow's own inference gives, without its look at every value in Python (about 1.7 s
    per 100,000 rows x 12 columns). None for any other column."""
    import numpy as np
    import pandas as pd
    from mlflow.types import ColSpec, DataType

    if not isinstance(column.dtype, np.dtype):  # an extension dtype: left to MLflow
        return None
    kind = column.dtype.kind
    simple = {("b", 1): DataType.boolean, ("i", 4): DataType.integer, ("i", 8): DataType.long,
              ("f", 4): DataType.float, ("f", 8): DataType.double}
    if (kind, column.dtype.itemsize) in simple:
        spec = simple[(kind, column.dtype.itemsize)]
    elif kind == "O" and pd.api.types.infer_dtype(column, skipna=True) == "string":
        spec = DataType.string
    else:
        return None
    return ColSpec(spec, name=column.name, required=not bool(column.isna().any()))


def dataset_input(frame: Any, *, source: str, name: str, targets: str, digest: str,
                  context: str) -> Any:
    """``frame`` as an MLflow run input (``client.log_inputs``): name, digest, source, schema and
    profile, exactly as ``mlflow.data.from_pandas`` describes it. When every column is numeric,
    boolean or all strings, the schema is read from the dtypes (:func:`_column_spec`);
    otherwise MLflow infers it."""
    import json

    import mlflow.data
    from mlflow.data.dataset import Dataset as DatasetBase
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import Schema

    dataset = mlflow.data.from_pandas(frame, source=source, name=name, targets=targets,
                                      digest=digest)
    described = DatasetBase.to_dict(dataset)  # name, digest, source, source type (no schema)
    specs = [_column_spec(frame[column]) for column in frame.columns]
    schema = Schema(specs) if all(spec is not None for spec in specs) else dataset.schema
    return DatasetInput(Dataset(
        name=described["name"], digest=described["digest"],
        source_type=described["source_type"], source=described["source"],
        schema=json.dumps({"mlflow_colspec": schema.to_dict()}) if schema else None,
        profile=json.dumps(dataset.profile)), tags=[InputTag("mlflow.data.context", context)])


def registered_version(client: Any, model_name: str, run_id: str) -> Any | None:
    """The version already registered from ``run_id`` (a retried register task reuses it)."""
    try:
        versions = client.search_model_versions(f"name = '{_quote(model_name)}' and "
                                                f"run_id = '{run_id}'")
    except Exception as err:
        if _not_found(err):
            return None
        raise
    return min(versions, key=lambda v: int(v.version)) if versions else None


def register(client: Any, *, model_name: str, model_uri: str, run_id: str,
             tags: dict[str, str], description: str, timeout_s: float = 120) -> str:
    """Register ``model_uri`` once per run (idempotent) and wait until the version is READY."""
    existing = registered_version(client, model_name, run_id)
    if existing is None:
        try:
            client.create_registered_model(model_name)
        except Exception as err:  # already exists
            if "RESOURCE_ALREADY_EXISTS" not in str(getattr(err, "error_code", "")) \
                    and "already exists" not in str(err):
                raise
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        existing = client.create_model_version(model_name, source=model_uri, run_id=run_id,
                                               tags=tags, description=description,
                                               model_id=model_id)
        log.info("Registered %s version %s from run %s", model_name, existing.version, run_id)
    else:
        log.info("Run %s is already registered as %s version %s; reusing it",
                 run_id, model_name, existing.version)
    deadline = time.monotonic() + timeout_s
    while existing.status != "READY":
        if existing.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RuntimeError(f"{model_name} version {existing.version} is {existing.status}: "
                               f"{existing.status_message}")
        time.sleep(0.5)
        existing = client.get_model_version(model_name, existing.version)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, existing.version, key, value)
    return str(existing.version)
