"""Online predictions over HTTP from ``models:/<name>@champion``, JSON in and out.

One server serves one or more registered models (``--model NAME``, repeatable). Routes
(docs/serving.md has request and response examples)::

    POST /models/<name>/predict    predict with model <name>
    POST /predict                  the same, when the server serves exactly one model
    GET  /models/<name>            version, alias, run and the input columns of <name>
    GET  /version                  the version each model serves now
    GET  /health                   ok | degraded | waiting | unavailable, per model

Every response that concerns a model carries the version that produced it, in the body
(``model_version``) and in the ``X-Model-Version`` header (``/health`` and ``/version`` of a
server with several models: ``name=version,...``).

**Hot reload.** A background thread asks the registry every ``poll_seconds`` which version the
alias points at. When it moved (a promotion or a rollback), the new version is downloaded and
loaded beside the old one, then swapped in with one reference assignment: a request uses the
snapshot it started with, so its version in the response is the one that scored it. A load that
fails keeps the old version serving and shows on ``/health`` (``degraded``) until it succeeds.

**Loading.** Only through :func:`include.mlops_core.model_loading.load_local`: a skops file whose
every type is on the allow-list of the model family that the *training run's params* record
(never what the artifact says). Nothing is unpickled and MLflow's pyfunc loader is not used.

**Input.** The columns and types come from the model's signature in its MLmodel file. Unknown or
missing columns, wrong types, a body that is not JSON or more than ``max_rows`` rows are
answered 400/413/422 with a message that says what to send; never a 500 with a traceback.

**Speed.** A raw ASGI app on uvicorn (httptools, uvloop), JSON through msgspec, the rows
turned into numpy columns once. The pipeline's preprocessor runs as a few numpy operations
(:class:`FastInput`, checked bitwise against the pipeline when the model loads). Requests that
arrive while a prediction runs are scored together in one call (at most ``max_batch_rows``
rows), so under concurrency the fixed cost of a model call is paid once per batch. The
BLAS/OpenMP pools are limited to ``threads`` (default 1) per process: on a busy machine more
threads per small request cost far more than they save (docs/benchmarks.md).

This module is plain Python (no Airflow). Heavy imports (numpy, pandas, mlflow, uvicorn)
happen inside functions: ``python -m include.mlops_core.serving check`` (the container's health
check) imports none of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from include.mlops_core.errors import ServingError

log = logging.getLogger("mlops.serving")

DEFAULT_ALIAS = "champion"
DEFAULT_PORT = 8000
DEFAULT_POLL_SECONDS = 5.0
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_BATCH_ROWS = 2_000
MAX_ERROR_CHARS = 400  # of an exception's text in /health and in log lines

# MLflow signature types → what a JSON value of that column may be.
_KINDS = {"double": "number", "float": "number", "long": "integer", "integer": "integer",
          "string": "string", "boolean": "boolean"}
# Body keys that hold the rows, and the one option.
_ROW_KEYS = ("rows", "row", "columns", "dataframe_records", "dataframe_split")
_OPTION_KEYS = ("scores",)
_FORMATS = ('{"rows": [{"column": value, ...}, ...]}, {"row": {"column": value, ...}}, '
            '{"columns": [...], "data": [[...], ...]}, or MLflow\'s dataframe_records / '
            'dataframe_split')


# -- request parsing (pure: no model, no MLflow) --------------------------------------------------
class RequestError(Exception):
    """A request the server refuses: ``status`` (400, 404, 405, 413, 422, 503) and a message
    that says what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.slot: ModelSlot | None = None  # the model the route was for, when there is one


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # number | integer | string | boolean | any
    required: bool = True


@dataclass(frozen=True)
class InputSchema:
    """The model's input columns, in order, from its MLflow signature."""

    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @classmethod
    def from_mlmodel(cls, mlmodel: dict[str, Any], model: Any = None) -> InputSchema:
        """From the ``signature.inputs`` of an MLmodel file (a JSON list of column specs); a
        model logged without a signature falls back to the fitted ``feature_names_in_``, with
        any JSON scalar accepted."""
        inputs = ((mlmodel or {}).get("signature") or {}).get("inputs")
        if inputs:
            specs = json.loads(inputs) if isinstance(inputs, str) else inputs
            named = [s for s in specs if isinstance(s, dict) and s.get("name")]
            if named and len(named) == len(specs):
                return cls(tuple(Column(str(s["name"]), _KINDS.get(str(s.get("type")), "any"),
                                        bool(s.get("required", True))) for s in named))
        names = getattr(model, "feature_names_in_", None)
        if names is None:
            raise ValueError("the model has no input signature and no feature_names_in_: its "
                             "columns are unknown")
        return cls(tuple(Column(str(n), "any") for n in names))

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": c.name, "type": c.kind, "required": c.required} for c in self.columns]


def _decoder() -> Any:
    try:
        import msgspec

        return msgspec.json.decode
    except ImportError:  # pragma: no cover - msgspec comes with Airflow
        return json.loads


def _encoder() -> Any:
    try:
        import msgspec

        return msgspec.json.encode
    except ImportError:  # pragma: no cover
        return lambda obj: json.dumps(obj, allow_nan=False, default=str).encode()


_decode = _decoder()
_encode = _encoder()


def _described(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None \
        else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


_JSON_TYPE = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
              dict: "an object", list: "a list", type(None): "null"}
_EXPECTED = {"number": "a number", "integer": "an integer", "string": "a string",
             "boolean": "true or false", "any": "a JSON scalar"}
_ALLOWED_TYPES = {"number": {int, float, type(None)}, "integer": {int, type(None)},
                  "string": {str, type(None)}, "boolean": {bool, type(None)},
                  "any": {int, float, str, bool, type(None)}}


def _convert(column: Column, values: list[Any] | tuple[Any, ...]) -> Any:
    """One column's JSON values as a numpy array of the type the model was trained on; null is
    a missing value (NaN), which the pipeline's imputers fill."""
    import numpy as np

    types = set(map(type, values))
    allowed = _ALLOWED_TYPES[column.kind]
    bad = types - allowed
    if column.kind == "integer" and bad == {float}:
        if all(v.is_integer() for v in values if type(v) is float):
            bad = set()  # 3.0 is an integer, as JSON writers send it
    if bad:
        row = next(i for i, v in enumerate(values) if type(v) in bad)
        got = values[row]
        raise RequestError(422, f"row {row}, column {column.name!r}: expected "
                                f"{_EXPECTED[column.kind]} (or null), got "
                                f"{_JSON_TYPE.get(type(got), type(got).__name__)} "
                                f"{_described(got)}")
    missing = type(None) in types
    try:
        if column.kind == "number" or (column.kind == "integer" and (missing or float in types)):
            return np.array(values, dtype=np.float64)
        if column.kind == "integer":
            return np.array(values, dtype=np.int64)
    except (OverflowError, ValueError) as err:
        raise RequestError(422, f"column {column.name!r}: a value is out of range "
                                f"({_short(err)})") from None
    if column.kind == "boolean" and not missing:
        return np.array(values, dtype=bool)
    array = np.empty(len(values), dtype=object)
    array[:] = values
    if missing:  # scikit-learn's imputers see NaN as missing, not None
        array[array == None] = np.nan  # noqa: E711 - elementwise
    return array


def _check_columns(present: Any, schema: InputSchema, where: str) -> None:
    names = schema.names
    unknown = [c for c in present if c not in names]
    if unknown:
        raise RequestError(422, f"{where}unknown column{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(map(repr, unknown[:5]))}; the model takes "
                                f"{', '.join(names)}")
    missing = [c.name for c in schema.columns if c.required and c.name not in present]
    if missing:
        raise RequestError(422, f"{where}missing column{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(map(repr, missing[:5]))}; the model takes "
                                f"{', '.join(names)} (a value may be null)")


@dataclass
class ParsedRequest:
    """The rows of one request as columns (numpy arrays, in the schema's order)."""

    columns: dict[str, Any]
    rows: int
    scores: bool = False


def parse_request(body: bytes, schema: InputSchema, *,
                  max_rows: int = DEFAULT_MAX_ROWS) -> ParsedRequest:
    """Parse and check a predict request against the model's input schema; raise
    :class:`RequestError` (400: not JSON or no known shape, 422: rows that do not fit the
    model) with a message that says what to send."""
    if not body.strip():
        raise RequestError(400, f"empty body: send JSON, one of {_FORMATS}")
    try:
        payload = _decode(body)
    except Exception as err:  # noqa: BLE001 - msgspec.DecodeError or ValueError
        raise RequestError(400, f"the body is not valid JSON ({str(err)[:120]}); send one of "
                                f"{_FORMATS}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"the body is a JSON {type(payload).__name__}, not an object; "
                                f"send one of {_FORMATS}")
    keys = set(payload)
    data_keys = [k for k in _ROW_KEYS if k in keys]
    if "columns" in keys and "data" in keys:
        keys.discard("data")
    unknown = sorted(keys - set(_ROW_KEYS) - set(_OPTION_KEYS))
    if unknown or len(data_keys) != 1:
        what = f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown else \
            ("no rows" if not data_keys else f"more than one of {', '.join(data_keys)}")
        raise RequestError(400, f"{what}: send one of {_FORMATS} (and optionally "
                                '"scores": true)')
    scores = payload.get("scores", False)
    if not isinstance(scores, bool):
        raise RequestError(400, '"scores" must be true or false')
    key = data_keys[0]
    if key in ("columns", "dataframe_split"):
        split = payload if key == "columns" else payload[key]
        if not isinstance(split, dict):
            raise RequestError(400, '"dataframe_split" must be an object with "columns" and '
                                    '"data"')
        columns, data = split.get("columns"), split.get("data")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns) \
                or not isinstance(data, list):
            raise RequestError(400, '"columns" must be a list of column names and "data" a '
                                    "list of rows (lists of values, in the order of columns)")
        return _from_split(columns, data, schema, max_rows, scores)
    rows = [payload[key]] if key == "row" else payload[key]
    if key == "row" and not isinstance(payload[key], dict):
        raise RequestError(400, '"row" must be an object: {"column": value, ...}')
    if not isinstance(rows, list):
        raise RequestError(400, f'"{key}" must be a list of objects: [{{"column": value, ...}}]')
    return _from_records(rows, schema, max_rows, scores)


def _count(rows: int, max_rows: int) -> None:
    if rows == 0:
        raise RequestError(422, "no rows to predict: send at least one")
    if rows > max_rows:
        raise RequestError(422, f"{rows} rows in one request; this server takes at most "
                                f"{max_rows} (--max-rows): split the request")


def _from_records(rows: list[Any], schema: InputSchema, max_rows: int,
                  scores: bool) -> ParsedRequest:
    _count(len(rows), max_rows)
    expected = frozenset(schema.names)
    for i, row in enumerate(rows):
        if type(row) is not dict:
            raise RequestError(422, f"row {i} is {_JSON_TYPE.get(type(row), 'not an object')}, "
                                    "not an object of column: value")
        if row.keys() != expected:
            _check_columns(list(row), schema, f"row {i}: ")
    columns = {c.name: _convert(c, [row.get(c.name) for row in rows]) for c in schema.columns}
    return ParsedRequest(columns, len(rows), scores)


def _from_split(names: list[str], data: list[Any], schema: InputSchema, max_rows: int,
                scores: bool) -> ParsedRequest:
    _count(len(data), max_rows)
    if len(set(names)) != len(names):
        raise RequestError(422, "a column name appears twice in \"columns\"")
    _check_columns(names, schema, "")
    width = len(names)
    for i, row in enumerate(data):
        if type(row) is not list or len(row) != width:
            raise RequestError(422, f"row {i} of \"data\" is not a list of {width} values (one "
                                    "per name in \"columns\", in that order)")
    by_name = dict(zip(names, zip(*data, strict=True), strict=True))
    none = (None,) * len(data)
    columns = {c.name: _convert(c, by_name.get(c.name, none)) for c in schema.columns}
    return ParsedRequest(columns, len(data), scores)


# -- models and the registry ---------------------------------------------------------------------
@dataclass(frozen=True)
class ServedModel:
    """One loaded model version: an immutable snapshot that a request holds while it runs."""

    name: str
    version: str
    alias: str
    run_id: str | None
    family: str
    model: Any
    schema: InputSchema
    loaded_at: float
    load_seconds: float
    fast: FastInput | None = None  # the preprocessor in numpy, when verified equal

    @property
    def scores_available(self) -> bool:
        classes = getattr(self.model, "classes_", None)
        return hasattr(self.model, "predict_proba") and classes is not None and len(classes) == 2


def predict(served: ServedModel, columns: dict[str, Any], *, scores: bool = False
            ) -> tuple[list[Any], list[float] | None]:
    """Predictions (and the positive-class probability) for rows given as columns."""
    if scores and not served.scores_available:
        raise RequestError(422, f"model {served.name} v{served.version} gives no scores (it "
                                "is not a binary classifier): leave out \"scores\"")
    if served.fast is not None:
        model, rows = served.fast.estimator, served.fast.transform(columns)
    else:
        import pandas as pd

        model = served.model
        rows = pd.DataFrame(columns, columns=list(served.schema.names), copy=False)
    predictions = model.predict(rows).tolist()
    return predictions, model.predict_proba(rows)[:, 1].tolist() if scores else None


class FastInput:
    """The fitted preprocessor of this project's pipelines (``modeling.build_preprocessor``:
    median imputer + standard scaler on the numeric columns, constant imputer + one-hot encoder
    on the categorical ones) as a few numpy operations on the request's columns, and the
    pipeline's last step that takes the result.

    scikit-learn's ColumnTransformer costs about 4 ms per call whatever the rows (pandas column
    selection, validation in each of its five steps); this costs 0.04 ms for one row. The same
    arithmetic in the same order, so the output is bitwise the same: :meth:`build` checks that
    on synthetic rows (missing values and unknown categories included) against the pipeline's
    own ``transform`` and ``predict``, and any other pipeline shape, or a difference, leaves
    the model on its own path (``None``)."""

    def __init__(self, numeric: list[str], categorical: list[str], *, fill: Any,
                 mean: Any, scale: Any, categories: list[dict[Any, int]],
                 missing: list[Any], estimator: Any) -> None:
        self.numeric, self.categorical = numeric, categorical
        self.fill, self.mean, self.scale = fill, mean, scale
        self.categories, self.missing = categories, missing
        self.width = len(numeric) + sum(len(c) for c in categories)
        self.estimator = estimator

    def transform(self, columns: dict[str, Any]) -> Any:
        import numpy as np

        rows = len(columns[(self.numeric or self.categorical)[0]])
        out = np.zeros((rows, self.width))
        k = len(self.numeric)
        if k:
            x = np.empty((rows, k))
            for j, name in enumerate(self.numeric):
                x[:, j] = columns[name]
            nan = np.isnan(x)
            if nan.any():
                x[nan] = np.take(self.fill, np.nonzero(nan)[1])
            if self.mean is not None:
                x -= self.mean
            if self.scale is not None:
                x /= self.scale
            out[:, :k] = x
        offset = k
        for name, lookup, filler in zip(self.categorical, self.categories, self.missing,
                                        strict=True):
            index = np.fromiter((lookup.get(filler if v != v else v, -1)
                                 for v in columns[name]), dtype=np.intp, count=rows)
            known = index >= 0
            out[np.nonzero(known)[0], offset + index[known]] = 1.0
            offset += len(lookup)
        return out

    @classmethod
    def build(cls, model: Any, schema: InputSchema) -> FastInput | None:
        """The fast path of ``model``, or None when it is not exactly this shape or does not
        give the same numbers."""
        try:
            fast = cls._from(model, schema)
            if fast is not None and not fast._same_as(model, schema):
                return None
            return fast
        except Exception:  # noqa: BLE001 - any surprise: the pipeline's own path
            return None

    @classmethod
    def _from(cls, model: Any, schema: InputSchema) -> FastInput | None:
        import numpy as np
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        if type(model) is not Pipeline or len(model.steps) != 2:
            return None
        ct, estimator = model.steps[0][1], model.steps[1][1]
        if type(ct) is not ColumnTransformer or getattr(ct, "sparse_output_", False)                 or getattr(estimator, "feature_names_in_", None) is not None:
            return None
        kinds = {c.name: c.kind for c in schema.columns}
        numeric: list[str] = []
        categorical: list[str] = []
        parts = []
        for _, transformer, names in ct.transformers_:
            if transformer == "drop" or len(names) == 0:
                continue
            if type(transformer) is not Pipeline or len(transformer.steps) != 2                     or not all(isinstance(n, str) and n in kinds for n in names):
                return None
            imputer, last = transformer.steps[0][1], transformer.steps[1][1]
            if type(imputer) is not SimpleImputer or imputer.add_indicator                     or not (isinstance(imputer.missing_values, float)
                            and np.isnan(imputer.missing_values)):
                return None
            if type(last) is StandardScaler and not numeric and not categorical                     and all(kinds[n] in ("number", "integer") for n in names):
                fill = np.asarray(imputer.statistics_, dtype=np.float64)
                if fill.shape != (len(names),) or np.isnan(fill).any():
                    return None
                numeric = list(names)
                parts.append((fill, last.mean_ if last.with_mean else None,
                              last.scale_ if last.with_std else None))
            elif type(last) is OneHotEncoder and not categorical                     and all(kinds[n] == "string" for n in names)                     and last.handle_unknown == "ignore" and last.drop is None                     and not last.sparse_output and last.dtype in (np.float64, float)                     and last.min_frequency is None and last.max_categories is None                     and imputer.strategy == "constant":
                categorical = list(names)
                lookups = [{value: i for i, value in enumerate(cats.tolist())}
                           for cats in last.categories_]
                parts.append(([imputer.statistics_[i] for i in range(len(names))], lookups))
            else:
                return None
        if not numeric and not categorical:
            return None
        if numeric and ct.transformers_[0][2] != numeric:
            return None  # the numeric block must come first, as build_preprocessor puts it
        num = parts[0] if numeric else (None, None, None)
        cat = parts[-1] if categorical else ([], [])
        return cls(numeric, categorical, fill=num[0], mean=num[1], scale=num[2],
                   categories=cat[1], missing=cat[0], estimator=estimator)

    def _same_as(self, model: Any, schema: InputSchema) -> bool:
        """Bitwise the same matrix and predictions as the pipeline on 64 synthetic rows."""
        import warnings

        import numpy as np
        import pandas as pd

        rng = np.random.default_rng(0)
        rows = 64
        columns: dict[str, Any] = {}
        for j, name in enumerate(self.numeric):
            centre = self.mean[j] if self.mean is not None else self.fill[j]
            spread = self.scale[j] if self.scale is not None else 1.0
            values = centre + spread * rng.normal(0, 2, rows)
            values[rng.random(rows) < 0.1] = np.nan
            columns[name] = values
        for name, lookup in zip(self.categorical, self.categories, strict=True):
            choices = [*lookup, "__unseen__", np.nan]
            picked = np.empty(rows, dtype=object)
            picked[:] = [choices[i] for i in rng.integers(0, len(choices), rows)]
            columns[name] = picked
        for column in schema.columns:
            if column.name not in columns:
                columns[column.name] = np.full(rows, np.nan) if column.kind != "string"                     else np.array(["x"] * rows, dtype=object)
        frame = pd.DataFrame(columns, columns=list(schema.names))
        ours = self.transform(columns)
        with warnings.catch_warnings():  # "Found unknown categories": planted on purpose
            warnings.simplefilter("ignore", UserWarning)
            theirs = model.steps[0][1].transform(frame)
            expected = model.predict(frame)
        if not np.array_equal(ours, np.asarray(theirs, dtype=np.float64), equal_nan=True):
            return False
        return bool(np.array_equal(np.asarray(self.estimator.predict(ours)),
                                   np.asarray(expected)))


class MlflowRegistry:
    """Where versions come from: the alias lookup (one REST call) and the download + trusted
    load of a version. The login comes from MLFLOW_TRACKING_USERNAME/PASSWORD (read-only is
    enough)."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import mlflow

            # models:/ URIs are resolved against the process's registry URI, whose default is a
            # local SQLite file: point both at this server first.
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri,
                                               registry_uri=self.tracking_uri)
        return self._client

    def resolve(self, name: str, alias: str) -> tuple[str, str | None] | None:
        """(version, run id) behind ``alias``, or None when the model or alias does not exist."""
        from include.mlops_core.tracking import alias_version

        found = alias_version(self.client, name, alias)
        return None if found is None else (str(found.version), found.run_id)

    def load(self, name: str, version: str, alias: str) -> ServedModel:
        import tempfile
        from pathlib import Path

        import mlflow.artifacts
        import yaml

        from include.mlops_core.model_loading import load_local, refuse

        started = time.monotonic()
        what = f"models:/{name}/{version}"
        mv = self.client.get_model_version(name, version)
        family = self.client.get_run(mv.run_id).data.params.get("family") if mv.run_id else None
        if not family:
            raise refuse(what, f"its training run {mv.run_id} records no model family")
        with tempfile.TemporaryDirectory(prefix="mlops-serving-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=what, dst_path=tmp, tracking_uri=self.tracking_uri,
                registry_uri=self.tracking_uri))
            model = load_local(local, family, what=what)
            mlmodel = yaml.safe_load((local / "MLmodel").read_text()) or {}
        schema = InputSchema.from_mlmodel(mlmodel, model)
        fast = FastInput.build(model, schema)
        return ServedModel(name, str(version), alias, mv.run_id, family, model, schema,
                           time.time(), time.monotonic() - started, fast)


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def _stamp(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass
class ModelSlot:
    """The version a model serves now, and what the last look at the registry found.

    ``current`` is replaced as a whole (one reference assignment): the swap is atomic for the
    requests, which each read it once."""

    name: str
    alias: str = DEFAULT_ALIAS
    retry_seconds: float = 30.0  # before a version whose load failed is tried again
    current: ServedModel | None = None
    alias_version: str | None = None
    checked: bool = False
    last_check: float | None = None
    check_error: str | None = None  # the registry did not answer
    load_error: str | None = None  # the alias's version could not be loaded
    _failed: tuple[str, float] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refresh(self, registry: Any) -> ServedModel | None:
        """Look up the alias; load and swap in its version when it moved. Never raises: what
        went wrong is kept for /health (and logged once per new message)."""
        with self._lock:
            now = time.time()
            try:
                found = registry.resolve(self.name, self.alias)
            except Exception as err:  # noqa: BLE001 - the registry is away; keep serving
                self._note("check_error", f"looking up @{self.alias} failed: {_short(err)}")
                self.last_check, self.checked = now, True
                return self.current
            self.last_check, self.checked = now, True
            self._note("check_error", None)
            if found is None:
                self.alias_version = None
                if self.current is not None:
                    self._note("load_error", f"alias @{self.alias} no longer exists; still "
                                             f"serving v{self.current.version}")
                else:
                    self._note("load_error", None)
                return self.current
            version, _ = found
            self.alias_version = version
            if self.current is not None and self.current.version == version:
                self._note("load_error", None)
                return self.current
            if self._failed and self._failed[0] == version and \
                    now - self._failed[1] < self.retry_seconds:
                return self.current
            was = self.current.version if self.current else None
            log.info("%s: @%s is v%s%s; loading it", self.name, self.alias, version,
                     f" (serving v{was})" if was else "")
            try:
                served = registry.load(self.name, version, self.alias)
            except Exception as err:  # noqa: BLE001 - keep the old version serving
                self._failed = (version, now)
                keep = f"; still serving v{was}" if was else "; nothing to serve"
                self._note("load_error", f"loading v{version} failed: {_short(err)}{keep}",
                           level=logging.ERROR)
                return self.current
            self._failed = None
            self.current = served  # the swap
            self._note("load_error", None)
            log.info("%s: serving v%s (@%s, family %s, run %s, %s input path), loaded in "
                     "%.1fs%s", self.name, version, self.alias, served.family, served.run_id,
                     "numpy" if served.fast else "pipeline", served.load_seconds,
                     f"; was v{was}" if was else "")
            return served

    def _note(self, attr: str, message: str | None, level: int = logging.WARNING) -> None:
        if message and message != getattr(self, attr):
            log.log(level, "%s: %s", self.name, message)
        elif not message and getattr(self, attr):
            log.info("%s: %s cleared", self.name, attr.replace("_", " "))
        setattr(self, attr, message)

    @property
    def status(self) -> str:
        if self.current is not None:
            return "degraded" if (self.check_error or self.load_error) else "ok"
        if not self.checked:
            return "starting"
        if self.check_error or self.load_error:
            return "unavailable"
        return "waiting"  # the alias does not exist yet: nothing was promoted

    def describe(self) -> dict[str, Any]:
        served = self.current
        info: dict[str, Any] = {
            "status": self.status, "alias": self.alias,
            "version": served.version if served else None,
            "alias_version": self.alias_version,
            "run_id": served.run_id if served else None,
            "loaded_at": _stamp(served.loaded_at) if served else None,
            "last_check": _stamp(self.last_check),
        }
        errors = [e for e in (self.check_error, self.load_error) if e]
        if errors:
            info["error"] = "; ".join(errors)
        elif served is None and self.checked:
            info["error"] = (f"no version of {self.name} has alias @{self.alias} yet: train "
                             "and promote one; it is picked up within a poll")
        return info


def unavailable_message(slot: ModelSlot) -> str:
    info = slot.describe()
    return (f"model {slot.name} has no version loaded ({info['status']}): "
            f"{info.get('error') or 'still starting'}")


# -- the ASGI app ----------------------------------------------------------------------------------
@dataclass
class _Pending:
    served: ServedModel
    request: ParsedRequest
    future: Any  # asyncio.Future of (predictions, scores)


class _Batcher:
    """Scores the requests of one model in the event loop, together when they queue: a request
    does not predict at once but schedules a drain for the loop's next turn, so every request
    that arrived meanwhile (they queue in the socket while a prediction holds the loop) is
    parsed first and joins the same call (same model version, at most ``max_rows`` rows). With
    one client that costs one turn of the loop; no thread is involved, so no hand-off of the
    GIL either."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.pending: list[_Pending] = []
        self.scheduled = False

    def submit(self, served: ServedModel, request: ParsedRequest) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append(_Pending(served, request, future))
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self._drain)
        return future

    def _take(self) -> list[_Pending]:
        first = self.pending[0]
        batch, rows, rest = [], 0, []
        for item in self.pending:
            if item.served is first.served and (not batch or
                                                rows + item.request.rows <= self.max_rows):
                batch.append(item)
                rows += item.request.rows
            else:
                rest.append(item)
        self.pending = rest
        return batch

    def _drain(self) -> None:
        """One batch per turn of the loop: what is left waits for the next turn, after the
        loop has answered and read its sockets."""
        self.scheduled = False
        if not self.pending:
            return
        batch = self._take()
        if self.pending:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)
        for item, result in zip(batch, _score_batch(batch), strict=True):
            if item.future.done():  # the client went away
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)


def _score_batch(batch: list[_Pending]) -> list[Any]:
    """One predict call for the whole batch; when it fails, each request alone (so only the
    request that cannot be scored gets the error)."""
    if len(batch) > 1:
        import numpy as np

        served = batch[0].served
        names = served.schema.names
        columns = {n: np.concatenate([item.request.columns[n] for item in batch]) for n in names}
        scores = any(item.request.scores for item in batch) and served.scores_available
        try:
            predictions, probabilities = predict(served, columns, scores=scores)
        except Exception:  # noqa: BLE001 - retried one by one below
            pass
        else:
            out, start = [], 0
            for item in batch:
                end = start + item.request.rows
                out.append((predictions[start:end],
                            probabilities[start:end] if item.request.scores and probabilities
                            is not None else None))
                start = end
            return out
    results: list[Any] = []
    for item in batch:
        try:
            results.append(predict(item.served, item.request.columns,
                                   scores=item.request.scores))
        except Exception as err:  # noqa: BLE001 - the request's own answer
            results.append(err)
    return results


def _limit_threads(threads: int) -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
    except Exception:  # noqa: BLE001, S110 - threadpoolctl missing: the env variables apply
        pass


@dataclass
class ServingConfig:
    """What one server process serves and how (``serve``'s options)."""

    tracking_uri: str
    models: list[str]
    alias: str = DEFAULT_ALIAS
    poll_seconds: float = DEFAULT_POLL_SECONDS
    max_rows: int = DEFAULT_MAX_ROWS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS
    threads: int = 1


class ServingApp:
    """The ASGI application. ``registry`` has ``resolve(name, alias)`` and
    ``load(name, version, alias)`` (:class:`MlflowRegistry`; tests pass their own)."""

    def __init__(self, config: ServingConfig, registry: Any | None = None) -> None:
        if not config.models:
            raise ValueError("serve at least one model (--model NAME)")
        self.config = config
        self.registry = registry if registry is not None else MlflowRegistry(config.tracking_uri)
        self.slots = {name: ModelSlot(name, config.alias,
                                      retry_seconds=max(30.0, 6 * config.poll_seconds))
                      for name in config.models}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._batchers = {name: _Batcher(max(1, config.max_batch_rows)) for name in self.slots}

    # -- lifecycle
    def start(self) -> None:
        """Load every model once (the server listens after this), then poll in the background."""
        for slot in self.slots.values():
            slot.refresh(self.registry)
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name="alias-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.wait(self.config.poll_seconds):
            for slot in self.slots.values():
                if self._stop.is_set():
                    return
                slot.refresh(self.registry)

    # -- ASGI
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        slot: ModelSlot | None = None
        try:
            slot, status, body = await self._route(scope, receive)
        except RequestError as err:
            slot, status, body = err.slot, err.status, self._error_body(err.message, err.slot)
        except Exception as err:  # noqa: BLE001 - answer, log one line, no traceback out
            log.error("%s %s failed: %s", scope.get("method"), scope.get("path"), _short(err))
            status = 500
            body = self._error_body(f"internal error ({type(err).__name__}); the server log "
                                    "has the details", slot)
        await self._send(send, status, body, slot)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _limit_threads(max(1, self.config.threads))  # predictions run on this thread
                try:
                    await asyncio.get_running_loop().run_in_executor(None, self.start)
                except Exception as err:  # noqa: BLE001
                    await send({"type": "lifespan.startup.failed", "message": _short(err)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _error_body(self, message: str, slot: ModelSlot | None) -> dict[str, Any]:
        body: dict[str, Any] = {"error": message}
        if slot is not None:
            body["model_name"] = slot.name
            body["model_version"] = slot.current.version if slot.current else None
        return body

    def _version_header(self, slot: ModelSlot | None) -> str | None:
        if slot is not None:
            return slot.current.version if slot.current else None
        if len(self.slots) == 1:
            (only,) = self.slots.values()
            return only.current.version if only.current else None
        return ",".join(f"{s.name}={s.current.version if s.current else ''}"
                        for s in self.slots.values())

    async def _send(self, send: Any, status: int, body: Any, slot: ModelSlot | None) -> None:
        data = body if isinstance(body, bytes) else _encode(body)
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(data)).encode())]
        version = self._version_header(slot)
        if version is not None:
            headers.append((b"x-model-version", version.encode()))
        if slot is not None:
            headers.append((b"x-model-name", slot.name.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _route(self, scope: dict[str, Any], receive: Any) -> tuple[Any, int, Any]:
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        if path == "/health":
            self._method(method, "GET", path)
            models = {name: slot.describe() for name, slot in self.slots.items()}
            statuses = {m["status"] for m in models.values()}
            overall = next(s for s in ("unavailable", "starting", "waiting", "degraded", "ok")
                           if s in statuses)
            serving = all(slot.current is not None for slot in self.slots.values())
            return None, 200 if serving else 503, {"status": overall, "models": models}
        if path == "/version":
            self._method(method, "GET", path)
            return None, 200, {"models": {
                name: {"version": s.current.version if s.current else None, "alias": s.alias,
                       "run_id": s.current.run_id if s.current else None}
                for name, s in self.slots.items()}}
        if path == "/predict":
            if len(self.slots) != 1:
                raise RequestError(404, "this server serves several models: POST to "
                                   + ", ".join(f"/models/{n}/predict" for n in self.slots))
            (slot,) = self.slots.values()
            return slot, *await self._on_model(slot, self._predict, method, "POST", path,
                                               scope, receive)
        parts = path.split("/")
        if len(parts) in (3, 4) and parts[1] == "models":
            name = urllib.parse.unquote(parts[2])
            slot = self.slots.get(name)
            if slot is None:
                raise RequestError(404, f"this server does not serve model {name!r}; it serves "
                                        f"{', '.join(self.slots)}")
            if len(parts) == 3:
                return slot, *await self._on_model(slot, self._model_info, method, "GET", path,
                                                   scope, receive)
            if parts[3] == "predict":
                return slot, *await self._on_model(slot, self._predict, method, "POST", path,
                                                   scope, receive)
        raise RequestError(404, f"no route {method} {scope['path']}; routes: POST /predict, "
                                "POST /models/<name>/predict, GET /models/<name>, "
                                "GET /version, GET /health")

    @staticmethod
    def _method(method: str, allowed: str, path: str) -> None:
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            raise RequestError(405, f"{path} takes {allowed}, not {method}")

    async def _on_model(self, slot: ModelSlot, handler: Any, method: str, allowed: str,
                        path: str, scope: dict[str, Any], receive: Any) -> tuple[int, Any]:
        """Run a model's route; a refusal names the model and the version it serves."""
        try:
            self._method(method, allowed, path)
            return await handler(slot, scope, receive)
        except RequestError as err:
            err.slot = slot
            raise

    async def _model_info(self, slot: ModelSlot, scope: dict[str, Any],
                          receive: Any) -> tuple[int, Any]:
        info: dict[str, Any] = {"model_name": slot.name, **slot.describe()}
        served = slot.current
        info["model_version"] = served.version if served else None
        if served is not None:
            info["family"] = served.family
            info["columns"] = served.schema.describe()
            info["scores"] = served.scores_available
        return 200, info

    async def _body(self, scope: dict[str, Any], receive: Any) -> bytes:
        limit = self.config.max_body_bytes
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                raise RequestError(413, f"the body has {int(value)} bytes; this server takes at "
                                        f"most {limit} (--max-body-bytes): split the request")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "the client went away before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"the body is larger than {limit} bytes "
                                        "(--max-body-bytes): split the request")
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _predict(self, slot: ModelSlot, scope: dict[str, Any],
                       receive: Any) -> tuple[int, bytes]:
        body = await self._body(scope, receive)
        served = slot.current
        if served is None:
            raise RequestError(503, unavailable_message(slot))
        request = parse_request(body, served.schema, max_rows=self.config.max_rows)
        if request.scores and not served.scores_available:  # before it joins a batch
            raise RequestError(422, f"model {served.name} v{served.version} gives no scores "
                                    "(it is not a binary classifier): leave out \"scores\"")
        try:
            if self.config.max_batch_rows > 0:
                predictions, scores = await self._batchers[slot.name].submit(served, request)
            else:  # every request alone, at once
                predictions, scores = predict(served, request.columns, scores=request.scores)
        except RequestError:
            raise
        except Exception as err:  # noqa: BLE001 - the model refused these values
            raise RequestError(422, f"model {served.name} v{served.version} could not score "
                                    f"these rows: {_short(err)}") from None
        out: dict[str, Any] = {"model_name": served.name, "model_version": served.version,
                               "alias": served.alias, "predictions": predictions}
        if scores is not None:
            out["scores"] = scores
        return 200, _encode(out)


# -- running the server ----------------------------------------------------------------------------
def _configure_logging() -> None:
    """This module's lines at INFO, every library's from WARNING up (MLflow, alembic, boto)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)


def _process_defaults(threads: int) -> None:
    """Environment of a server process, set before numpy or MLflow is imported: BLAS/OpenMP
    pools of ``threads``, MLflow's own loaders off, MLflow's HTTP retries short (a poll that
    fails is simply tried again at the next one)."""
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[key] = str(threads)
    for key, value in (("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false"),
                       ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
                       ("MLFLOW_CONFIGURE_LOGGING", "false"),
                       ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
                       ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                       ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")):
        os.environ.setdefault(key, value)


def app_from_env() -> ServingApp:
    """The app of one uvicorn worker process (``--workers`` > 1), from ``MLOPS_SERVING_CONFIG``."""
    _configure_logging()
    return ServingApp(ServingConfig(**json.loads(os.environ["MLOPS_SERVING_CONFIG"])))


def safe_uri(uri: str) -> str:
    """``uri`` without a user or password, for log lines."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return uri


def serve(config: ServingConfig, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          workers: int = 1) -> None:
    """Run the server until SIGINT/SIGTERM: uvicorn with ``workers`` processes, each with its
    own copy of the models and its own alias poller."""
    from dataclasses import asdict

    _process_defaults(config.threads)
    _configure_logging()
    import uvicorn

    log.info("Serving %s from MLflow at %s on http://%s:%d (%d worker process%s, alias "
             "checked every %gs)", ", ".join(f"{m}@{config.alias}" for m in config.models),
             safe_uri(config.tracking_uri), host, port, workers, "es" if workers > 1 else "",
             config.poll_seconds)
    options = {"host": host, "port": port, "log_level": "warning", "access_log": False,
               "lifespan": "on", "timeout_graceful_shutdown": 10, "server_header": False}
    if workers > 1:
        os.environ["MLOPS_SERVING_CONFIG"] = json.dumps(asdict(config))
        uvicorn.run("include.mlops_core.serving:app_from_env", factory=True, workers=workers,
                    **options)
    else:
        uvicorn.run(ServingApp(config), **options)


def check(url: str, *, timeout: float = 5.0) -> tuple[bool, str]:
    """The container's health check: healthy when ``url``/health answers 200 (every model has a
    version loaded; ``degraded`` included: it serves the old one), or 503 only because a model
    waits for its first promoted version (a fresh stack). Unhealthy when the server does not
    answer or a model has no version because its load or the registry failed."""
    try:
        status, _, body = _http("GET", f"{url.rstrip('/')}/health", timeout=timeout)
        health = json.loads(body)
    except (OSError, ValueError) as err:
        return False, f"{url}/health: {_short(err)}"
    models = health.get("models") or {}
    summary = ", ".join(f"{name} {m.get('status')} "
                        f"{'v' + m['version'] if m.get('version') else '(no version)'}"
                        for name, m in models.items())
    if status == 200:
        return True, f"{health.get('status')}: {summary}"
    if status == 503 and models and all(m.get("status") in ("ok", "degraded", "waiting")
                                        for m in models.values()):
        return True, f"waiting for a promoted version: {summary}"
    problems = "; ".join(f"{name}: {m.get('error')}" for name, m in models.items()
                         if m.get("error"))
    return False, f"HTTP {status} {health.get('status')}: {problems or summary}"


# -- the smoke test (the rollback DAG calls it) ----------------------------------------------------
def _http(method: str, url: str, body: bytes | None = None, *,
          timeout: float = 10.0) -> tuple[int, Any, bytes]:
    """(status, headers, body); an HTTP error status is an answer, not an exception. OSError
    (refused, timed out, no such host: requests' errors are OSErrors) when nothing answered.
    No proxy from the environment: the servers are internal."""
    import requests

    with requests.Session() as session:
        session.trust_env = False
        response = session.request(method, url, data=body, timeout=timeout, headers={
            "Content-Type": "application/json", "Accept": "application/json"})
        return response.status_code, response.headers, response.content


def _health_note(base: str, model_name: str) -> str:
    try:
        _, _, body = _http("GET", f"{base}/health", timeout=5)
        info = (json.loads(body).get("models") or {}).get(model_name) or {}
    except (OSError, ValueError):
        return ""
    note = f"; its /health says {info.get('status')}, serving v{info.get('version')}, " \
           f"@{info.get('alias')} at v{info.get('alias_version')}"
    return note + (f": {info['error']}" if info.get("error") else "")


def served_models(url: str, *, timeout: float = 10.0) -> dict[str, str | None]:
    """The models the server at ``url`` serves and the version each serves now (``GET
    /version``); :class:`~include.mlops_core.errors.ServingError` (``unreachable`` or
    ``bad_response``) when it does not answer as the server does."""
    base = url.rstrip("/")
    try:
        status, _, body = _http("GET", f"{base}/version", timeout=timeout)
    except OSError as err:
        raise ServingError(f"serving endpoint {base}: GET /version got no answer "
                           f"({_short(err)}); is the server running and is the URL right?",
                           reason="unreachable") from None
    try:
        models = json.loads(body)["models"]
        assert status == 200 and isinstance(models, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ServingError(f"serving endpoint {base}: GET /version answered HTTP {status} "
                           f"{body[:200]!r}, not the server's JSON",
                           reason="bad_response") from None
    return {name: (info or {}).get("version") for name, info in models.items()}


def smoke_test(url: str, *, model_name: str, expected_version: str, rows: list[dict],
               timeout: float = 60.0) -> dict:
    """Wait until the server at ``url`` serves ``expected_version`` of ``model_name``, then
    predict ``rows`` and check the answer.

    Polls ``GET {url}/version`` until it reports ``expected_version`` for ``model_name``, then
    POSTs the rows to ``{url}/models/{model_name}/predict`` until an answer comes from that
    version (a server with several worker processes switches them one by one, each within a
    poll), and checks it holds ``len(rows)`` predictions. Returns ``{"url", "model_name",
    "version", "predictions", "latency_ms"}`` (the latency of the answer that passed).

    Raises :class:`~include.mlops_core.errors.ServingError` when ``timeout`` seconds pass with no
    answer (``unreachable``) or with another version served (``wrong_version``), or at once on
    an error status or an answer that is not what the server sends (``bad_response``).
    """
    if not rows:
        raise ValueError("smoke_test needs at least one row to predict")
    base, expected = url.rstrip("/"), str(expected_version)
    started = time.monotonic()
    deadline = started + timeout

    def left() -> float:
        return deadline - time.monotonic()

    def fail(reason: str, what: str) -> ServingError:
        waited = f" after {time.monotonic() - started:.0f}s" if reason != "bad_response" else ""
        return ServingError(f"serving smoke test of {model_name} v{expected} at {base} "
                            f"failed{waited}: {what}", reason=reason)

    seen: Any = None
    problem = "no answer yet"
    while True:  # 1. the version the server reports
        try:
            status, _, body = _http("GET", f"{base}/version", timeout=max(1.0, min(10.0, left())))
        except OSError as err:
            if left() <= 0:
                raise fail("unreachable", f"GET {base}/version got no answer "
                                          f"({_short(err)}); is the server running and is "
                                          "the URL right?") from None
            problem = _short(err)
        else:
            try:
                models = json.loads(body)["models"]
                assert status == 200 and isinstance(models, dict)
            except (ValueError, KeyError, TypeError, AssertionError):
                raise fail("bad_response", f"GET {base}/version answered HTTP {status} "
                                           f"{body[:200]!r}, not the server's JSON") from None
            if model_name not in models:
                raise fail("bad_response", f"the server does not serve model {model_name!r} "
                                           f"(it serves {', '.join(models) or 'none'})")
            seen = (models[model_name] or {}).get("version")
            if seen == expected:
                break
            problem = f"it serves v{seen}" if seen else "it has no version loaded"
        if left() <= 0:
            if seen is None and problem != "it has no version loaded":
                raise fail("unreachable", f"GET {base}/version got no answer ({problem})")
            raise fail("wrong_version", f"{problem}, not v{expected}, within the {timeout:g}s "
                                        f"timeout{_health_note(base, model_name)}")
        time.sleep(max(0.0, min(0.5, left())))

    predict_url = f"{base}/models/{urllib.parse.quote(model_name, safe='')}/predict"
    payload = json.dumps({"rows": rows}).encode()
    while True:  # 2. an answer from that version
        began = time.perf_counter()
        try:
            status, headers, body = _http("POST", predict_url, payload,
                                          timeout=max(1.0, min(30.0, left())))
        except OSError as err:
            if left() <= 0:
                raise fail("unreachable", f"POST {predict_url} got no answer "
                                          f"({_short(err)})") from None
            time.sleep(max(0.0, min(0.5, left())))
            continue
        latency_ms = (time.perf_counter() - began) * 1000
        try:
            answer = json.loads(body)
            assert isinstance(answer, dict)
        except (ValueError, AssertionError):
            raise fail("bad_response", f"POST {predict_url} answered HTTP {status} with "
                                       f"{body[:200]!r}, not JSON") from None
        version = str(answer.get("model_version"))
        header = headers.get("X-Model-Version")
        if status == 503 or (status == 200 and version != expected):
            if left() <= 0:  # a worker that has not switched (or loaded) yet
                raise fail("wrong_version", f"POST {predict_url} was answered by "
                                            f"v{answer.get('model_version')} (HTTP {status}), "
                                            f"not v{expected}{_health_note(base, model_name)}")
            time.sleep(max(0.0, min(0.5, left())))
            continue
        if status != 200:
            raise fail("bad_response", f"POST {predict_url} answered HTTP {status}: "
                                       f"{answer.get('error') or repr(body[:300])}")
        predictions = answer.get("predictions")
        if header != expected:
            raise fail("bad_response", f"the answer's X-Model-Version header is {header!r}, "
                                       f"its body says v{version}")
        if not isinstance(predictions, list) or len(predictions) != len(rows):
            count = len(predictions) if isinstance(predictions, list) else "no"
            raise fail("bad_response", f"{count} predictions for {len(rows)} rows")
        return {"url": base, "model_name": model_name, "version": expected,
                "predictions": predictions, "latency_ms": round(latency_ms, 1)}


# -- command line ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.mlops_core.serving",
        description="Serve models:/<name>@champion over HTTP (docs/serving.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the server (foreground; SIGINT/SIGTERM stop it)")
    run.add_argument("--model", action="append", default=[], metavar="NAME",
                     help="registered model to serve; repeat it (or separate names by commas) "
                          "for several. Default: $MLOPS_SERVING_MODELS")
    run.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                     help="the MLflow server (default $MLFLOW_TRACKING_URI); the login comes "
                          "from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
    run.add_argument("--alias", default=DEFAULT_ALIAS, help="alias to serve (champion)")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=DEFAULT_PORT)
    run.add_argument("--workers", type=int, default=1,
                     help="worker processes, each with its own copy of the models (1)")
    run.add_argument("--threads", type=int, default=1,
                     help="BLAS/OpenMP threads per worker process (1)")
    run.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS,
                     help="how often the alias is looked up (5)")
    run.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS,
                     help="rows per request (10000)")
    run.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                     help="request body size (32 MiB)")
    run.add_argument("--max-batch-rows", type=int, default=DEFAULT_MAX_BATCH_ROWS,
                     help="rows of queued requests scored in one call (2000); 0 scores each "
                          "request alone")
    probe = sub.add_parser("check", help="health check: exit 0 when the server serves (or waits "
                                         "for its first promoted version)")
    probe.add_argument("--url", default=f"http://127.0.0.1:{DEFAULT_PORT}")
    args = parser.parse_args(argv)

    if args.command == "check":
        healthy, line = check(args.url)
        print(line, flush=True)
        return 0 if healthy else 1
    names = [n.strip() for value in (args.model or [os.environ.get("MLOPS_SERVING_MODELS", "")])
             for n in value.split(",") if n.strip()]
    if not names:
        parser.error("no model to serve: pass --model NAME (or set MLOPS_SERVING_MODELS)")
    if not args.tracking_uri:
        parser.error("no MLflow server: pass --tracking-uri URL (or set MLFLOW_TRACKING_URI)")
    for option in ("workers", "threads", "max_rows", "max_body_bytes"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.poll_seconds <= 0 or args.max_batch_rows < 0:
        parser.error("--poll-seconds must be above 0 and --max-batch-rows at least 0")
    config = ServingConfig(tracking_uri=args.tracking_uri, models=list(dict.fromkeys(names)),
                           alias=args.alias, poll_seconds=args.poll_seconds,
                           max_rows=args.max_rows, max_body_bytes=args.max_body_bytes,
                           max_batch_rows=args.max_batch_rows, threads=args.threads)
    serve(config, host=args.host, port=args.port, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
