"""What every DAG of the package shares: retry policy from the environment, and the Params of the
trigger form, derived from the deployment's policy and the typed config model.

A DAG's Params are exactly the run conf keys its policy lets a person set (include/mlops_core/
policy.py): a key the policy keeps for the deployment is not in the form. A section Param
(``training``, ``gate``, ...) lists only its allowed fields, each with the type, bounds and
description of the config model, and refuses any other field before the run is created.
The policy is read when the dag-processor parses the file; the workers check every run's conf
against their own reading when the run's first task starts.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Param

from include.mlops_core.config import DATASET_PATTERN, THRESHOLD_PATTERN
from include.mlops_core.policy import ALWAYS, DAG_KEYS, SECTIONS, Policy, load_policy

# Top-level keys: (Param default, JSON schema, description). ``partition_date`` is described by
# each DAG (what its day means there).
_SCALARS: dict[str, tuple[Any, dict[str, Any], str]] = {
    "dataset": ("churn_demo", {"type": "string", "pattern": DATASET_PATTERN},
                "Dataset config: include/datasets/<dataset>.yaml (or $MLOPS_DATASETS_DIR)"),
    "partition_date": (None, {"type": ["null", "string"], "format": "date"},
                       "Run on this day (YYYY-MM-DD) instead of the data interval's"),
    "force": (False, {"type": "boolean"},
              "Retrain even if data, code and params match the champion"),
    "lookback_days": (None, {"type": ["null", "integer"], "minimum": 1},
                      "Days of partitions to train on, ending at the interval"),
    "source_uri": (None, {"type": ["null", "string"]},
                   "Replace the dataset's source_uri (s3://… or a path)"),
    "model_name": (None, {"type": ["null", "string"]},
                   "Registered model name (default: the dataset name)"),
    "to_version": (None, {"type": ["null", "string"], "pattern": "^v?[0-9]+$"},
                   "Version to restore as @champion; empty: the champion before the current "
                   "one, from the audit trail. It must have been @champion before"),
    "reason": ("rolled back by hand", {"type": "string", "minLength": 3, "maxLength": 500},
               "Why: kept in the audit record, the version's tags and the alert"),
}
_SECTION_DESCRIPTIONS = {
    "training": "Deep-merged over the dataset config's training section",
    "gate": "Deep-merged over the dataset config's gate section (a list replaces the list)",
    "rollout": "Deep-merged over the dataset config's rollout section",
    "monitoring": "Deep-merged over the dataset config's monitoring section",
}


def default_args() -> dict[str, Any]:
    """Retries for transient failures (an unreachable service); bad data fails at once anyway.
    A task that fails for good sends an alert where one is configured (mlops_airflow.notifiers)."""
    from mlops_airflow.notifiers import alerts_for

    return {
        "retries": int(os.environ.get("MLOPS_TASK_RETRIES", "2")),
        "retry_delay": timedelta(seconds=int(os.environ.get("MLOPS_RETRY_DELAY_SECONDS", "60"))),
        "retry_exponential_backoff": True,
        "on_failure_callback": alerts_for("task_failed"),
    }


def field_schema(section: str, field: str) -> dict[str, Any]:
    """The JSON schema of one field of a config section, from the pydantic model."""
    model = SECTIONS[section]
    schema = dict(model.model_json_schema()["properties"][field])
    info = model.model_fields[field]
    if field in ("thresholds", "performance_floor"):  # written as "metric >= number" strings
        schema = {"type": "array", "items": {"type": "string", "pattern": THRESHOLD_PATTERN}}
    schema.pop("title", None)
    schema.pop("default", None)
    if info.description:
        schema["description"] = info.description
    return schema


def section_param(section: str, fields: list[str]) -> Param:
    """An object Param for ``section`` with only ``fields``; any other key is refused."""
    properties = {name: field_schema(section, name) for name in fields}
    return Param({}, type="object", properties=properties, additionalProperties=False,
                 description=f"{_SECTION_DESCRIPTIONS[section]}; may set: {', '.join(fields)}")


def run_params(dag: str, policy: Policy | None = None, **descriptions: str) -> dict[str, Param]:
    """The Params of DAG ``dag`` (a key of :data:`include.mlops_core.policy.DAG_KEYS`): every run conf
    key the policy lets a run set, and nothing else. ``descriptions`` override a key's text."""
    policy = policy or load_policy()
    params: dict[str, Param] = {}
    for key in DAG_KEYS[dag]:
        if key in SECTIONS:
            fields = list(SECTIONS[key].model_fields) if policy.allows(key) \
                else policy.allowed_below(key)
            if fields:
                params[key] = section_param(key, fields)
        elif key == "trainer":
            if policy.allows(key):
                params[key] = Param(os.environ.get("MLOPS_TRAINER", "inprocess"),
                                    enum=["inprocess", "docker"],
                                    description=descriptions.get(key) or "Train in the worker "
                                    "process or in the trainer container (docs/gpu-training.md)")
        elif key in ALWAYS or policy.allows(key):
            default, schema, text = _SCALARS[key]
            params[key] = Param(default, **schema, description=descriptions.get(key) or text)
    return params
