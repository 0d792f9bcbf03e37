"""Small builders shared by the unit tests: the shipped churn config with overrides, demo frames."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

import yaml

from include.mlops_core.config import DATASETS_DIR, DatasetConfig, deep_merge

if TYPE_CHECKING:
    import pandas as pd

DAY = date(2025, 1, 1)
# The shipped config trains 150 boosting iterations; a few are enough to test behaviour quickly.
FAST_TRAINING = {"hyperparameters": {"max_iter": 25}}


def churn_raw() -> dict[str, Any]:
    """The shipped ``include/datasets/churn_demo.yaml`` as a dict (independent of env vars)."""
    raw = yaml.safe_load((DATASETS_DIR / "churn_demo.yaml").read_text())
    raw["name"] = "churn_demo"
    return raw


def churn_config(**overrides: Any) -> DatasetConfig:
    """The shipped churn config, deep-merged with ``overrides`` and validated."""
    return DatasetConfig.model_validate(deep_merge(churn_raw(), overrides))


def regression_config(**overrides: Any) -> DatasetConfig:
    """The churn columns, but predicting ``monthly_charges`` (a regression task)."""
    base = {"task": "regression", "target": "monthly_charges", "slice_column": "region",
            "gate": {"thresholds": ["rmse <= 40", "r2 >= 0.1"], "champion_metric": "rmse"},
            "training": {"family": "ridge", "hyperparameters": {}}}
    raw = deep_merge(churn_raw(), base)
    raw["training"]["hyperparameters"] = {}  # the YAML's boosting hyperparameters do not apply
    raw["monitoring"]["performance_floor"] = ["rmse <= 40"]  # the YAML's roc_auc floor neither
    return DatasetConfig.model_validate(deep_merge(raw, overrides))


def demo_frame(config: DatasetConfig, rows: int = 400, day: date = DAY, **kwargs: Any) -> pd.DataFrame:
    """One day of demo data, cast to the declared types exactly as ingest does."""
    from include.mlops_core.demo_data import generate
    from include.mlops_core.ingest import conform

    return conform(generate(day, rows, **kwargs), config, f"memory://{day.isoformat()}")


class Canary:
    """A type on no allow-list whose construction leaves a trace: a loader that builds it (skops
    calls ``__setstate__``) writes ``marker``. Stands in for a type that runs code on load."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state: dict[str, Any]) -> None:
        from pathlib import Path

        Path(state["marker"]).write_text("built by a model loader")
        self.__dict__.update(state)

    def predict(self, x: Any) -> Any:
        return [0] * len(x)


def plant_model(directory: Any, payload: Any, *, trusted: list[str],
                serialization_format: str = "skops", extra_flavor: dict[str, Any] | None = None
                ) -> None:
    """Write an MLflow sklearn model directory by hand, as someone with write access to the
    artifact store could: ``model.skops`` holding ``payload`` and an MLmodel file that lists
    ``trusted`` as its skops trusted types."""
    from pathlib import Path

    import skops.io

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    skops.io.dump(payload, directory / "model.skops")
    flavor = {"pickled_model": "model.skops", "serialization_format": serialization_format,
              "skops_trusted_types": trusted, "sklearn_version": "1.9.1",
              **(extra_flavor or {})}
    (directory / "MLmodel").write_text(yaml.safe_dump({"flavors": {
        "sklearn": flavor,
        "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.skops"}}}))
