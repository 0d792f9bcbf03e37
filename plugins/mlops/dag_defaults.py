"""What every DAG of the package shares: retry policy from the environment and the Params that
pick the dataset, the model and where outputs go. Cheap to import (DAG files parse fast)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Param

DATASET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def default_args() -> dict[str, Any]:
    """Retries for transient failures (an unreachable service); bad data fails at once anyway."""
    return {
        "retries": int(os.environ.get("MLOPS_TASK_RETRIES", "2")),
        "retry_delay": timedelta(seconds=int(os.environ.get("MLOPS_RETRY_DELAY_SECONDS", "60"))),
        "retry_exponential_backoff": True,
    }


def common_params(*, partition_date: str, artifacts: str = "Where run outputs go",
                  **extra: Param) -> dict[str, Param]:
    """dataset, artifacts_uri, partition_date, model_name, then the DAG's own Params."""
    return {
        "dataset": Param("churn_demo", type="string", pattern=DATASET_PATTERN,
                         description="Dataset config: include/datasets/<dataset>.yaml"),
        "artifacts_uri": Param(os.environ.get("MLOPS_ARTIFACTS_URI", "s3://mlops"), type="string",
                               description=artifacts),
        "partition_date": Param(None, type=["null", "string"], format="date",
                                description=partition_date),
        "model_name": Param(None, type=["null", "string"],
                            description="Registered model name (default: the dataset name)"),
        **extra,
    }


def overrides(example: str) -> Param:
    """An object Param deep-merged into one section of the dataset config for this run."""
    return Param({}, type="object", description=f"Overrides, e.g. {example}")
