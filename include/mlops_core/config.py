"""The one configuration model: a dataset, how to train on it, and which gates a model must pass.

A dataset config is a YAML file (``include/datasets/<name>.yaml`` or ``$MLOPS_DATASETS_DIR``).
The training DAG receives plain Params; :func:`resolve_config` rebuilds and validates the model
from them inside the task, so a bad value fails the first task with pydantic's message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"

TaskType = Literal["classification", "regression"]
ColumnType = Literal["numeric", "integer", "categorical", "boolean", "datetime"]
ModelFamily = Literal[
    "hist_gradient_boosting", "random_forest", "logistic_regression", "ridge", "linear", "xgboost"
]

# Which metric direction is "better"; used by the gate and champion comparison.
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "roc_auc": True, "log_loss": False,
                    "rmse": False, "mae": False, "r2": True}
CLASSIFICATION_METRICS = ("accuracy", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")

THRESHOLD_PATTERN = \
    r"^\s*([a-z_0-9]+)\s*(>=|<=|>|<)\s*(-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*$"
_THRESHOLD_RE = re.compile(THRESHOLD_PATTERN)
DATASET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class Column(_Frozen):
    """One input column and what valid values look like."""

    name: str
    type: ColumnType
    nullable: bool = False
    max_null_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> Column:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"column {self.name!r}: min {self.min} > max {self.max}")
        if self.categories is not None and self.type != "categorical":
            raise ValueError(f"column {self.name!r}: categories are only allowed on categorical columns")
        return self


class Threshold(_Frozen):
    """``metric op value``, e.g. ``roc_auc >= 0.8``."""

    metric: str
    op: Literal[">=", "<=", ">", "<"]
    value: float

    @classmethod
    def parse(cls, text: str) -> Threshold:
        match = _THRESHOLD_RE.match(text)
        if not match:
            raise ValueError(f"threshold {text!r} is not of the form 'metric >= number'")
        return cls(metric=match[1], op=match[2], value=float(match[3]))

    def holds(self, observed: float) -> bool:
        return {">=": observed >= self.value, "<=": observed <= self.value,
                ">": observed > self.value, "<": observed < self.value}[self.op]

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


def _parse_thresholds(value: Any) -> Any:
    """``["roc_auc >= 0.8", ...]`` in YAML or Params → Threshold models."""
    if isinstance(value, list):
        return [Threshold.parse(v) if isinstance(v, str) else v for v in value]
    return value


class GateConfig(_Frozen):
    """Absolute thresholds plus champion-vs-challenger on the same held-out rows."""

    thresholds: list[Threshold] = Field(
        default_factory=list, description='Bars on held-out metrics, e.g. "roc_auc >= 0.8"')
    champion_metric: str | None = Field(
        None, description="Metric of the champion comparison (default: roc_auc for "
                          "classification, rmse for regression)")
    champion_margin: Annotated[float, Field(ge=0)] = Field(
        0.0, description="The challenger must beat the champion by at least this")
    require_significance: bool = Field(
        False, description="Promote only on evidence: a paired test of challenger vs champion "
                           "on the same held-out rows, whose lower bound must be above "
                           "champion_margin (docs/monitoring.md#significance)")
    significance_confidence: Annotated[float, Field(gt=0.5, lt=1)] = Field(
        0.95, description="Two-sided confidence of that test's interval")
    significance_test: Literal["auto", "bootstrap", "mcnemar", "delong"] = Field(
        "auto", description="auto: McNemar for accuracy, DeLong for binary ROC AUC, a paired "
                            "bootstrap otherwise")
    bootstrap_resamples: Annotated[int, Field(ge=200, le=100_000)] = Field(
        2000, description="Resamples of the paired bootstrap")

    @field_validator("thresholds", mode="before")
    @classmethod
    def _parse_thresholds(cls, value: Any) -> Any:
        return _parse_thresholds(value)


class IntRange(_Frozen):
    """Integers from ``low`` to ``high`` (both included), every ``step``; ``log``: sampled on
    a log scale (for ranges spanning orders of magnitude)."""

    type: Literal["int"]
    low: int
    high: int
    step: Annotated[int, Field(ge=1)] = 1
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"int range: low {self.low} > high {self.high}")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("int range with log: true needs low >= 1 and step 1")
        return self


class FloatRange(_Frozen):
    """Floats from ``low`` to ``high``; ``log``: sampled on a log scale (``low`` > 0)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"float range: low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("float range with log: true needs low > 0")
        return self


class Categorical(_Frozen):
    """One of ``choices`` (strings, numbers, booleans or null)."""

    type: Literal["categorical"]
    choices: Annotated[list[str | int | float | bool | None], Field(min_length=1)]


SearchDimension = Annotated[IntRange | FloatRange | Categorical, Field(discriminator="type")]


class Candidate(_Frozen):
    """One model family to train: fixed hyperparameters, and optionally a search space that
    the tune step explores on top of them (``{name: {type: int|float|categorical, ...}}``)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)] | None = None
    family: ModelFamily
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    search_space: dict[str, SearchDimension] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.family

    @model_validator(mode="after")
    def _check(self) -> Candidate:
        both = sorted(set(self.hyperparameters) & set(self.search_space))
        if both:
            raise ValueError(f"candidate {self.label}: {both} are both fixed hyperparameters and "
                             "searched; keep each in one place")
        return self


class TuningConfig(_Frozen):
    """The tune step's budget (docs/configuration.md): on for every candidate with a search
    space. Trials are cross-validated on the training rows and pruned fold by fold."""

    n_trials: Annotated[int, Field(ge=1, le=10_000)] = Field(
        20, description="Finished trials (complete or pruned) per candidate")
    timeout_minutes: Annotated[float, Field(gt=0, le=7 * 24 * 60)] = Field(
        30, description="Each tune task stops starting trials after this long")
    parallel_tasks: Annotated[int, Field(ge=1, le=32)] = Field(
        1, description="Mapped tune tasks per candidate sharing its study (one per worker slot)")
    cv_folds: Annotated[int, Field(ge=2, le=10)] = Field(
        3, description="Cross-validation folds per trial; a poor trial is pruned after a fold")
    max_rows: Annotated[int, Field(ge=100)] | None = Field(
        20_000, description="Trials cross-validate on at most this many training rows (a "
                            "seeded sample, stratified for classification); the best params "
                            "then train on all of them. null: every row")


class TrainingConfig(_Frozen):
    family: ModelFamily = Field("hist_gradient_boosting", description="Estimator family")
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the estimator, e.g. "
                                          '{"max_iter": 200}')
    search_space: dict[str, SearchDimension] = Field(
        default_factory=dict, description="Hyperparameters the tune step searches for family "
                                          '(e.g. {"max_depth": {"type": "int", "low": 2, '
                                          '"high": 12}}); empty: no tuning')
    candidates: list[Candidate] = Field(
        default_factory=list, description="Several families trained side by side (each with "
                                          "its hyperparameters and search space); select keeps "
                                          "the best. Empty: family alone")
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    seed: int = Field(42, description="Random seed of the split and the estimator")
    test_size: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.2, description="Share of rows held out for evaluation")

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        labels = [c.label for c in self.candidates]
        if len(set(labels)) != len(labels):
            raise ValueError(f"candidate names must be unique: {labels}; give two candidates of "
                             "the same family a name each")
        if self.candidates and (self.search_space or self.hyperparameters):
            raise ValueError("with candidates, put hyperparameters and search_space in each "
                             "candidate, not in training")
        both = sorted(set(self.hyperparameters) & set(self.search_space))
        if both:
            raise ValueError(f"{both} are both fixed hyperparameters and searched; keep each in "
                             "one place")
        return self

    @property
    def all_candidates(self) -> list[Candidate]:
        """The candidates to train: ``candidates``, or the one of ``family``."""
        return list(self.candidates) or [Candidate(
            family=self.family, hyperparameters=self.hyperparameters,
            search_space=self.search_space)]


class ContainerConfig(_Frozen):
    """How the training DAG's ``trainer=docker`` path runs its container (docs/gpu-training.md).

    ``gpus``: 0 trains on CPU; a count or ``"all"`` asks the engine for NVIDIA GPUs. When none
    is visible, ``gpu_fallback`` ``cpu`` trains on CPU and says so loudly, ``fail`` fails the
    task. Memory and CPU are hard limits (the kernel kills the container above
    ``memory_limit``); a container still running after ``timeout_minutes`` is stopped. Which
    image runs is the deployment's (``trainer_image`` of the policy, include/mlops_core/policy.py),
    never a dataset's or a run's.
    """

    gpus: Annotated[int, Field(ge=0)] | Literal["all"] = 0
    gpu_fallback: Literal["cpu", "fail"] = "cpu"
    memory_limit: Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?[bkmgBKMG]?$")] = "4g"
    cpus: Annotated[float, Field(gt=0, le=1024)] = 2.0
    timeout_minutes: Annotated[float, Field(gt=0)] = 120

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        for key, where in (("image", "trainer_image"), ("pull", "trainer_pull")):
            if isinstance(data, dict) and key in data:
                raise ValueError(f"container.{key} moved to the deployment's policy: set {where} "
                                 "in the policy file ($MLOPS_POLICY_FILE) or MLOPS_TRAINER_IMAGE "
                                 "(docs/security.md)")
        return data

    @property
    def wants_gpu(self) -> bool:
        return self.gpus != 0

    @property
    def memory_limit_bytes(self) -> int:
        units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
        text = self.memory_limit.lower()
        unit = units.get(text[-1], 1)
        return int(float(text.rstrip("bkmg")) * unit)


class RolloutConfig(_Frozen):
    """How an approved model reaches production.

    ``direct``: it becomes ``champion`` at once. ``shadow``: it becomes ``challenger`` and scores
    every row beside the champion, never served. ``canary``: as shadow, and ``canary_share`` of
    the rows (chosen by a hash of the id column, so the same entity always gets the same arm)
    are served by the challenger. In both, the A/B decision (performance_monitor DAG) promotes,
    keeps or rejects the challenger once labels arrive.
    """

    mode: Literal["direct", "shadow", "canary"] = Field(
        "direct", description="direct: approved models become @champion at once; shadow / "
                              "canary: @challenger first, promoted by the A/B decision")
    canary_share: Annotated[float, Field(ge=0, le=0.5)] = Field(
        0.1, description="Share of rows (by a hash of the id) the canary challenger serves")
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = Field(
        0.95, description="Two-sided confidence of the bootstrap interval of the improvement")
    min_labelled_rows: Annotated[int, Field(ge=10)] = Field(
        200, description="Labelled rows per arm before any A/B decision")
    bootstrap_resamples: Annotated[int, Field(ge=200, le=100_000)] = Field(
        2000, description="Bootstrap resamples of the A/B interval")
    max_trial_days: Annotated[int, Field(ge=1, le=365)] = Field(
        14, description="A challenger still undecided after this many days is rejected")


class MonitoringConfig(_Frozen):
    """Scoring inputs, drift thresholds, delayed labels and retraining triggers."""

    scoring_uri: str | None = Field(
        None, description="Rows to score, one partition per day (same partition_template); "
                          "default: source_uri")
    labels_uri: str | None = Field(
        None, description="Delayed labels: partitions of id_column + target, arriving after "
                          "the predictions")
    label_delay_days: Annotated[int, Field(ge=0, le=365)] = Field(
        1, description="Labels of day D are complete this many days later")
    drift_share: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5, description="Dataset drift when at least this share of the checked columns "
                         "drifted")
    retrain_cooldown_hours: Annotated[float, Field(ge=0)] = Field(
        24, description="At most one alert-triggered retrain per model in this window")
    retrain_lookback_days: Annotated[int, Field(ge=1, le=3660)] = Field(
        3, description="Days of partitions (ending with the alert's day) an alert-triggered "
                       "retrain learns from")
    performance_floor: list[Threshold] = Field(
        default_factory=list, description='Bars on live metrics, e.g. "roc_auc >= 0.7"; below '
                                          "one: an alert and a performance_degraded event")

    @field_validator("performance_floor", mode="before")
    @classmethod
    def _parse_floor(cls, value: Any) -> Any:
        return _parse_thresholds(value)


class ApprovalConfig(_Frozen):
    """Whether a person approves each promotion of this dataset's models (docs/alerts.md)."""

    required: bool = Field(
        False, description="A model that passed the gate waits for a person's Approve (Airflow "
                           "UI or REST) before it is promoted; Reject or no answer in time: "
                           "not promoted")
    timeout_hours: Annotated[float, Field(gt=0, le=720)] = Field(
        24, description="Hours to wait for the answer; then the default outcome, Reject, applies")


class RollbackConfig(_Frozen):
    """When ``@champion`` is rolled back without a person (dags/rollback.py does it by hand)."""

    auto_window_hours: Annotated[float, Field(ge=0, le=24 * 90)] = Field(
        0, description="A champion promoted within this many hours whose live performance falls "
                       "below monitoring.performance_floor is rolled back to the champion before "
                       "it by performance_monitor; 0: never automatically")


class DataWaitConfig(_Frozen):
    """How long a run on the data interval waits for partitions that are not there yet."""

    timeout_minutes: Annotated[int, Field(ge=0, le=7 * 24 * 60)] = Field(
        0, description="A scheduled or interval run whose partition is missing waits this long "
                       "for it, in the triggerer (no worker slot), then fails with the "
                       "missing-partition line; 0: fail at once. A run given a partition_date "
                       "never waits")
    poll_seconds: Annotated[int, Field(ge=5, le=3600)] = Field(
        60, description="How often the wait lists the missing partitions")


class DatasetConfig(_Frozen):
    """Everything the pipeline needs to know about one dataset; see docs/configuration.md."""

    name: Annotated[str, Field(pattern=DATASET_PATTERN)]
    source_uri: str  # s3://bucket/prefix or a local directory; partitions below it
    partition_template: str = "date={date}"  # {date} is YYYY-MM-DD
    format: Literal["auto", "csv", "parquet"] = "auto"
    lookback_days: Annotated[int, Field(ge=1, le=3660)] = 1
    task: TaskType
    target: str
    columns: list[Column]
    id_column: str | None = None
    slice_column: str | None = None
    min_rows: Annotated[int, Field(ge=1)] = 50
    max_rows: int | None = None
    model_name: str | None = None
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    container: ContainerConfig = Field(default_factory=ContainerConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    data_wait: DataWaitConfig = Field(default_factory=DataWaitConfig)
    approval: ApprovalConfig = Field(default_factory=ApprovalConfig)
    rollback: RollbackConfig = Field(default_factory=RollbackConfig)

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("column names must be unique")
        if self.target not in names:
            raise ValueError(f"target {self.target!r} must be one of the declared columns {names}")
        for extra in ("id_column", "slice_column"):
            value = getattr(self, extra)
            if value is not None and value not in names:
                raise ValueError(f"{extra} {value!r} must be one of the declared columns {names}")
        if not self.feature_columns:
            raise ValueError("no feature columns: declare at least one column besides the target")
        allowed = CLASSIFICATION_METRICS if self.task == "classification" else REGRESSION_METRICS
        for threshold in self.gate.thresholds:
            if threshold.metric not in allowed:
                raise ValueError(f"gate threshold on {threshold.metric!r}: a {self.task} model "
                                 f"reports {', '.join(allowed)}")
        for threshold in self.monitoring.performance_floor:
            if threshold.metric not in allowed:
                raise ValueError(f"performance floor on {threshold.metric!r}: a {self.task} model "
                                 f"reports {', '.join(allowed)}")
        if self.rollout.mode == "canary" and self.id_column is None:
            raise ValueError("rollout mode 'canary' assigns rows to arms by id_column; declare one")
        if self.gate.champion_metric is not None and self.gate.champion_metric not in allowed:
            raise ValueError(f"champion_metric {self.gate.champion_metric!r} is not one of {allowed}")
        test = self.gate.significance_test
        if test == "mcnemar" and self.comparison_metric != "accuracy":
            raise ValueError(f"significance_test mcnemar compares accuracy; the champion metric "
                             f"is {self.comparison_metric} (use auto or bootstrap)")
        if test == "delong" and self.comparison_metric != "roc_auc":
            raise ValueError(f"significance_test delong compares ROC AUC; the champion metric "
                             f"is {self.comparison_metric} (use auto or bootstrap)")
        for family in {c.family for c in self.training.all_candidates}:
            if self.task == "classification" and family in ("ridge", "linear"):
                raise ValueError(f"model family {family!r} is for regression; use "
                                 "logistic_regression, random_forest, hist_gradient_boosting or "
                                 "xgboost for classification")
            if self.task == "regression" and family == "logistic_regression":
                raise ValueError("model family 'logistic_regression' is for classification; use "
                                 "ridge, linear, random_forest, hist_gradient_boosting or xgboost")
        if self.max_rows is not None and self.max_rows < self.min_rows:
            raise ValueError("max_rows must be >= min_rows")
        return self

    @property
    def registered_model_name(self) -> str:
        return self.model_name or self.name

    @property
    def feature_columns(self) -> list[Column]:
        skip = {self.target, self.id_column}
        return [c for c in self.columns if c.name not in skip and c.type != "datetime"]

    @property
    def column(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns}

    @property
    def scoring_uri(self) -> str:
        return self.monitoring.scoring_uri or self.source_uri

    def scoring_view(self) -> DatasetConfig:
        """This config as the scoring input: rows under ``scoring_uri``, label not required."""
        columns = [c for c in self.columns if c.name != self.target]
        return self.model_copy(update={"source_uri": self.scoring_uri, "columns": columns})

    def labels_view(self) -> DatasetConfig:
        """This config as the delayed-labels input: ``id_column`` + target under ``labels_uri``."""
        if not self.monitoring.labels_uri or not self.id_column:
            from include.mlops_core.errors import ConfigError

            raise ConfigError(f"dataset {self.name!r}: delayed labels need monitoring.labels_uri "
                              "and id_column in the dataset config")
        columns = [self.column[self.id_column], self.column[self.target]]
        return self.model_copy(update={"source_uri": self.monitoring.labels_uri,
                                       "columns": columns})

    def candidate_view(self, label: str, tuned: dict[str, Any] | None = None) -> DatasetConfig:
        """This config training only candidate ``label``, with ``tuned`` (the tune step's best
        params) over its fixed hyperparameters: what train, evaluate and the trainer use."""
        found = {c.label: c for c in self.training.all_candidates}
        if label not in found:
            from include.mlops_core.errors import ConfigError

            raise ConfigError(f"no candidate {label!r} in dataset {self.name!r}; candidates: "
                              f"{sorted(found)}")
        candidate = found[label]
        training = self.training.model_copy(update={
            "family": candidate.family, "candidates": [], "search_space": {},
            "hyperparameters": {**candidate.hyperparameters, **(tuned or {})}})
        return self.model_copy(update={"training": training})

    @property
    def comparison_metric(self) -> str:
        if self.gate.champion_metric:
            return self.gate.champion_metric
        return "roc_auc" if self.task == "classification" else "rmse"


DEFAULT_DATASET = "churn_demo"


def datasets_dir() -> Path:
    return Path(os.environ.get("MLOPS_DATASETS_DIR") or DATASETS_DIR)


def load_dataset_config(name: str, overrides: dict[str, Any] | None = None) -> DatasetConfig:
    """Read ``<datasets_dir>/<name>.yaml``, deep-merge ``overrides`` and validate."""
    import yaml

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"dataset name {name!r} may only hold letters, digits, '_', '.', '-'")
    path = datasets_dir() / f"{name}.yaml"
    if not path.is_file():
        from include.mlops_core.errors import ConfigError

        known = sorted(p.stem for p in datasets_dir().glob("*.yaml"))
        raise ConfigError(f"no dataset config {path}; known datasets: {known}. "
                                "Add a YAML file there (see docs/configuration.md).")
    from pydantic import ValidationError

    from include.mlops_core.errors import ConfigError

    raw = yaml.safe_load(path.read_text()) or {}
    raw.setdefault("name", name)
    training = (overrides or {}).get("training") or {}
    base_training = raw.get("training") or {}
    if training.get("family") and training["family"] != base_training.get("family"):
        # Hyperparameters belong to a family: another family starts from its own defaults
        # (plus the override's hyperparameters), not from e.g. max_iter of gradient boosting.
        raw["training"] = {**base_training, "hyperparameters": {}, "search_space": {}}
    try:
        return DatasetConfig.model_validate(deep_merge(raw, overrides or {}))
    except ValidationError as err:
        # One line per problem, all on the exception's last line: what the task log ends with.
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}"
                             for e in err.errors())
        raise ConfigError(f"dataset config {path} (with the run's Param overrides) is invalid: "
                          f"{problems}") from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_config(params: dict[str, Any]) -> DatasetConfig:
    """Build the validated config from the training DAG's Params."""
    overrides: dict[str, Any] = {}
    if params.get("source_uri"):
        overrides["source_uri"] = params["source_uri"]
    if params.get("model_name"):
        overrides["model_name"] = params["model_name"]
    if params.get("training"):
        overrides["training"] = params["training"]
    if params.get("gate"):
        overrides["gate"] = params["gate"]
    if params.get("lookback_days"):
        overrides["lookback_days"] = params["lookback_days"]
    for section in ("rollout", "monitoring", "container"):
        if params.get(section):
            overrides[section] = params[section]
    return load_dataset_config(params.get("dataset") or DEFAULT_DATASET, overrides)
