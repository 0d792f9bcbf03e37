"""MLflow 3 tracking and registry helpers (client API only: no fluent active-run state, so a task
never ends or starts a run by accident).

One MLflow run per DAG run, found by tags (``airflow.dag_id`` + ``airflow.run_id``), so a retried
task resumes the same run. Promotion uses aliases only (stages are deprecated).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DAG_ID_TAG = "airflow.dag_id"
RUN_ID_TAG = "airflow.run_id"
CHAMPION, CHALLENGER = "champion", "challenger"  # the registry aliases (and the scoring arms)


def is_not_found(err: Exception) -> bool:
    """Whether ``err``, an MLflow error (``MlflowException`` or :class:`RegistryError`), says
    that what was asked for does not exist."""
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


def alias_version(client: Any, model_name: str, alias: str = CHAMPION) -> Any | None:
    """The model version behind ``alias`` of ``model_name``, or None when the model or the alias
    does not exist. The one alias lookup of the project.

    ``client`` is an ``mlflow.MlflowClient``, or a :class:`RestRegistry` where mlflow must not be
    imported (``check_changed``); either answers with an object that has ``version``, ``run_id``
    and ``tags``. Rejected credentials (401, or 403 for a model that exists) raise
    ``CredentialsError``: a retry cannot help."""
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except Exception as err:
        if is_not_found(err) or "not found" in str(err).lower():
            return None
        status = _http_status(err)
        if status not in (401, 403):
            raise
        if status == 403:
            # MLflow's basic-auth answers 403 for a model that does not exist (there is no
            # permission to look up); a 404 from the model itself says which it was.
            try:
                client.get_registered_model(model_name)
            except Exception as missing:
                if is_not_found(missing):
                    return None
                if _http_status(missing) not in (401, 403):
                    raise
        from include.mlops_core.errors import CredentialsError

        where = getattr(client, "tracking_uri", None) or "the tracking server"
        raise CredentialsError(f"MLflow at {where} rejected the credentials "
                               f"(HTTP {status})") from err


def _http_status(err: Exception) -> int | None:
    return getattr(err, "get_http_status_code", lambda: None)()


@dataclass(frozen=True)
class RegistryVersion:
    """A model version as :class:`RestRegistry` reads it (the fields of mlflow's
    ``ModelVersion`` that an alias lookup needs)."""

    version: str
    run_id: str | None
    tags: dict[str, str]


class RegistryError(Exception):
    """An error answer of MLflow's REST API, carrying what mlflow's ``MlflowException`` carries
    (``error_code``, ``get_http_status_code()``), so :func:`alias_version` reads both alike."""

    # mlflow's own names for an answer whose body is not MLflow's JSON (a proxy, basic-auth)
    _CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
              404: "ENDPOINT_NOT_FOUND"}

    def __init__(self, status: int, body: str) -> None:
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        answer = answer if isinstance(answer, dict) else {}
        self.status = status
        self.error_code = answer.get("error_code") or self._CODES.get(status, f"HTTP_{status}")
        super().__init__(f"{self.error_code}: {answer.get('message') or body}")

    def get_http_status_code(self) -> int:
        return self.status


class RestRegistry:
    """The two registry reads of :func:`alias_version` over MLflow's REST API with ``requests``,
    for a caller that must not import mlflow (about 2.5 s): ``check_changed``, whose unchanged
    run costs a listing and this one lookup (docs/architecture.md)."""

    def __init__(self, tracking_uri: str, *, auth: tuple[str, str] | None = None,
                 timeout: float = 15) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        self.auth, self.timeout = auth, timeout

    def _get(self, endpoint: str, params: dict[str, str]) -> dict[str, Any]:
        import requests

        response = requests.get(f"{self.tracking_uri}/api/2.0/mlflow/registered-models/{endpoint}",
                                params=params, auth=self.auth, timeout=self.timeout)
        if response.status_code != 200:
            raise RegistryError(response.status_code, response.text)
        return response.json()

    def get_model_version_by_alias(self, name: str, alias: str) -> RegistryVersion:
        version = self._get("alias", {"name": name, "alias": alias})["model_version"]
        return RegistryVersion(version=str(version["version"]), run_id=version.get("run_id"),
                               tags={t["key"]: t["value"] for t in version.get("tags", [])})

    def get_registered_model(self, name: str) -> dict[str, Any]:
        return self._get("get", {"name": name})["registered_model"]


def load_version(client: Any, model_name: str, version: str | int) -> Any:
    """Load a registered model version through the fixed type allow-list of the model family its
    training run recorded (:mod:`include.mlops_core.model_loading`): the family comes from the
    tracking store, never from the artifact."""
    from include.mlops_core.model_loading import load_model, refuse

    mv = client.get_model_version(model_name, str(version))
    family = client.get_run(mv.run_id).data.params.get("family") if mv.run_id else None
    what = f"models:/{model_name}/{version}"
    if not family:
        raise refuse(what, f"its training run {mv.run_id} records no model family")
    return load_model(what, family)


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
        if is_not_found(err):
            return None
        raise
    return min(versions, key=lambda v: int(v.version)) if versions else None


def register(client: Any, *, model_name: str, model_uri: str, run_id: str,
             tags: dict[str, str], description: str, timeout_s: int = 300) -> str:
    """Register ``model_uri`` once per run (idempotent) and wait until the version is READY.

    A new version waits in ``create_model_version(await_creation_for=timeout_s)`` (300 s is
    MLflow's own default), which logs MLflow's INFO ``Waiting up to … seconds`` and raises
    ``MlflowException`` when the version fails or stays pending. A retried task finds the
    version of this run instead of creating another (``RuntimeError`` when that one failed or
    stays pending)."""
    existing = registered_version(client, model_name, run_id)
    if existing is None:
        try:
            client.create_registered_model(model_name)
        except Exception as err:  # already exists
            if "RESOURCE_ALREADY_EXISTS" not in str(getattr(err, "error_code", "")) \
                    and "already exists" not in str(err):
                raise
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        # Returns once the version is READY (raises otherwise); the object it returns is the
        # version as created, so its status may still read PENDING_REGISTRATION.
        existing = client.create_model_version(model_name, source=model_uri, run_id=run_id,
                                               tags=tags, description=description,
                                               model_id=model_id,
                                               await_creation_for=timeout_s)
        log.info("Registered %s version %s from run %s", model_name, existing.version, run_id)
    else:
        log.info("Run %s is already registered as %s version %s; reusing it",
                 run_id, model_name, existing.version)
        # Created by an earlier try, which may have died while MLflow still had it pending: wait
        # for it here, as create_model_version does for the version it creates.
        deadline = time.monotonic() + timeout_s
        while existing.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
            time.sleep(0.5)
            existing = client.get_model_version(model_name, existing.version)
        if existing.status != "READY":
            raise RuntimeError(f"{model_name} version {existing.version} is {existing.status}: "
                               f"{existing.status_message}")
    for key, value in tags.items():
        client.set_model_version_tag(model_name, existing.version, key, value)
    return str(existing.version)
