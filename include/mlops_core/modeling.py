"""Features, training and evaluation with scikit-learn.

The ColumnTransformer is part of the model Pipeline, so it is fitted on training rows only and
travels with the model: scoring can never apply different transformations.
"""

from __future__ import annotations

import io
import logging
import os
from typing import TYPE_CHECKING, Any

from include.mlops_core import metrics as metric_module
from include.mlops_core.config import DatasetConfig
from include.mlops_core.errors import ConfigError, DataError
from include.mlops_core.ingest import SOURCE_COLUMN

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)


# -- split and features ---------------------------------------------------------------------------
def split(frame: pd.DataFrame, config: DatasetConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic train/test split (stratified for classification when every class allows)."""
    from sklearn.model_selection import train_test_split

    frame = frame.reset_index(drop=True)
    # Which file each held-out row came from stays with the test rows (never a feature): the
    # champion comparison leaves out rows from partitions the champion was trained on.
    source = frame.pop(SOURCE_COLUMN).astype(str) if SOURCE_COLUMN in frame else None
    stratify = None
    if config.task == "classification":
        counts = frame[config.target].value_counts()
        if (counts >= 2).all() and len(counts) >= 2:
            stratify = frame[config.target]
    train, test = train_test_split(frame, test_size=config.training.test_size,
                                   random_state=config.training.seed, stratify=stratify)
    if config.task == "classification" and train[config.target].nunique() < 2:
        raise DataError(f"target {config.target!r} has a single class in the training rows "
                        f"({train[config.target].unique().tolist()}); a classifier needs two or more",
                        runbook="validation-failed.md")
    if source is not None:
        test = test.assign(**{SOURCE_COLUMN: source.loc[test.index].to_numpy()})
    return train.reset_index(drop=True), test.reset_index(drop=True)


def feature_plan(config: DatasetConfig) -> dict[str, list[str]]:
    """Which columns go through which transformer; from the declared schema, not the data."""
    plan: dict[str, list[str]] = {"numeric": [], "categorical": []}
    for column in config.feature_columns:
        plan["categorical" if column.type == "categorical" else "numeric"].append(column.name)
    return plan


def build_preprocessor(plan: dict[str, list[str]]) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
             plan["numeric"]),
            ("categorical", make_pipeline(
                SimpleImputer(strategy="constant", fill_value="__missing__"),
                OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
             plan["categorical"]),
        ],
        remainder="drop",
        verbose_feature_names_out=True,
    )


def training_device() -> str:
    """``cuda`` when the trainer container was given a GPU (the operator probes for one and sets
    ``MLOPS_TRAINER_DEVICE``), else ``cpu``. Only the xgboost family uses it."""
    return "cuda" if os.environ.get("MLOPS_TRAINER_DEVICE", "cpu").lower() == "cuda" else "cpu"


def _xgboost_factory(classification: bool, seed: int) -> tuple[Any, dict[str, Any]]:
    try:
        import xgboost
    except ImportError as err:
        raise ConfigError("model family 'xgboost' needs the xgboost package (the trainer image "
                          "has it; pip install xgboost-cpu for CPU-only hosts)") from err
    cls = xgboost.XGBClassifier if classification else xgboost.XGBRegressor
    # tree_method hist runs on both devices; without a GPU XGBoost itself falls back to CPU
    # with a warning, so device="cuda" never fails a run on a CPU-only host.
    return cls, {"random_state": seed, "tree_method": "hist", "device": training_device(),
                 "n_estimators": 200, "learning_rate": 0.1, "max_depth": 6}


def build_estimator(config: DatasetConfig) -> Any:
    from sklearn import ensemble, linear_model

    family, seed = config.training.family, config.training.seed
    classification = config.task == "classification"
    factories = {
        "hist_gradient_boosting": (ensemble.HistGradientBoostingClassifier if classification
                                   else ensemble.HistGradientBoostingRegressor, {"random_state": seed}),
        "random_forest": (ensemble.RandomForestClassifier if classification
                          else ensemble.RandomForestRegressor, {"random_state": seed, "n_jobs": 1}),
        "logistic_regression": (linear_model.LogisticRegression, {"max_iter": 1000}),
        "ridge": (linear_model.Ridge, {"random_state": seed}),
        "linear": (linear_model.LinearRegression, {}),
    }
    # family vs task is checked by DatasetConfig; xgboost is imported only when used
    cls, defaults = (_xgboost_factory(classification, seed) if family == "xgboost"
                     else factories[family])
    try:
        return cls(**{**defaults, **config.training.hyperparameters})
    except TypeError as err:
        raise ConfigError(f"bad hyperparameters for {family}: {err}") from err


def target(frame: pd.DataFrame, config: DatasetConfig) -> pd.Series:
    y = frame[config.target]
    if config.task == "classification" and y.dtype.kind == "f" and (y.dropna() % 1 == 0).all():
        return y.astype("int64")  # ingest casts numbers to float; class labels are integers
    return y


def train(train_frame: pd.DataFrame, config: DatasetConfig) -> Pipeline:
    """Fit features + estimator on ``train_frame``; deterministic for a given seed."""
    from sklearn.pipeline import Pipeline

    model = Pipeline([("features", build_preprocessor(feature_plan(config))),
                      ("model", build_estimator(config))])
    features = [c.name for c in config.feature_columns]
    y = target(train_frame, config)
    if config.training.family == "xgboost" and config.task == "classification" \
            and (y.dtype.kind not in "iub" or sorted(y.unique()) != list(range(y.nunique()))):
        raise DataError(f"model family 'xgboost' needs class labels 0..n-1 in {config.target!r}; "
                        f"found {sorted(map(str, y.unique()))[:10]}. Encode the target as "
                        "integers or pick another family", runbook="bad-data.md")
    model.fit(train_frame[features], y)
    estimator = model.named_steps["model"]
    if "device" in estimator.get_params():
        # Served on CPU hosts (batch scoring, the evaluate task): the fitted trees are the same.
        estimator.set_params(device="cpu")
    return model


# -- evaluation -----------------------------------------------------------------------------------
def metrics(model: Any, frame: pd.DataFrame, config: DatasetConfig) -> dict[str, float]:
    """Held-out metrics (:mod:`include.mlops_core.metrics`): accuracy, F1, ROC AUC, log loss
    (classification, binary or multi-class) or RMSE, MAE, R²."""
    return metric_module.compute(config.task, target(frame, config), scores(model, frame, config))


def scores(model: Any, frame: pd.DataFrame, config: DatasetConfig) -> metric_module.Scores:
    """What ``model`` says about ``frame``'s rows: predictions and class probabilities."""
    return metric_module.scores_from_model(model, frame[[c.name for c in config.feature_columns]])


def slice_metrics(model: Any, frame: pd.DataFrame, config: DatasetConfig) -> dict[str, dict[str, float]]:
    """Metrics per value of the declared slice column (with the row count as ``n``)."""
    if not config.slice_column:
        return {}
    out = {}
    for value, part in frame.groupby(config.slice_column, dropna=False, observed=True):
        label = "__missing__" if value is None or value != value else str(value)
        out[label] = {"n": float(len(part)), **metrics(model, part, config)}
    return out


def plot(model: Any, frame: pd.DataFrame, config: DatasetConfig) -> bytes:
    """Confusion matrix (classification) or residual plot (regression), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features = [c.name for c in config.feature_columns]
    y = target(frame, config)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    try:
        if config.task == "classification":
            from sklearn.metrics import ConfusionMatrixDisplay

            ConfusionMatrixDisplay.from_predictions(y, model.predict(frame[features]), ax=ax,
                                                    colorbar=False)
            ax.set_title(f"{config.registered_model_name}: confusion matrix (held-out)")
        else:
            pred = model.predict(frame[features])
            ax.scatter(pred, y - pred, s=4, alpha=0.4)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xlabel("predicted")
            ax.set_ylabel("residual (actual - predicted)")
            ax.set_title(f"{config.registered_model_name}: residuals (held-out)")
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)


def untrusted_types(model: Any) -> list[str]:
    """Types skops refuses to load by default; we trust them because we just built the model."""
    skops = skops_io()

    return sorted(skops.get_untrusted_types(data=skops.dumps(model)))


def skops_io() -> Any:
    """``skops.io``, imported without the noise of its import-time scan: it looks its types up
    with ``getattr`` on every loaded module, and in an Airflow process each deprecated attribute
    of ``airflow.utils.*`` that it touches warns (thousands of log lines per task). Only the
    warnings raised from inside skops's scan are ignored, and only during the import."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"skops\.io\._utils")
        import skops.io
    return skops.io
