"""What the deployment lets a person who triggers a run change, and which trainer image may run.

Many people share one Airflow: some may only look, some may trigger, few may change Connections.
A run's conf is written by whoever triggers it, so it may change only what the deployment's
policy lists in ``run_overrides``; the image, resource limits, artifact and audit locations
are never a run's to choose (docs/security.md).

The policy is read by the workers when a task starts (and by the dag-processor for the trigger
form): the YAML file named by ``$MLOPS_POLICY_FILE``, else the defaults below. Keys not set in
the file keep their defaults; ``trainer_image`` defaults to ``$MLOPS_TRAINER_IMAGE`` and
``artifacts_uri`` to ``$MLOPS_ARTIFACTS_URI``.

Plain Python, no Airflow import: the operators call :func:`check_run_conf` first thing in every
task, so a refused key fails the run's first task and nothing else runs.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from include.mlops_core.config import (
    DatasetConfig,
    GateConfig,
    MonitoringConfig,
    RolloutConfig,
    Threshold,
    TrainingConfig,
)
from include.mlops_core.errors import ConfigError, OverrideRefusedError

POLICY_ENV = "MLOPS_POLICY_FILE"

# The keys a run's conf may hold, per DAG. Sections are deep-merged over the dataset config's.
RUN_KEYS = ("dataset", "partition_date", "force", "lookback_days", "source_uri", "model_name",
            "trainer", "training", "gate", "rollout", "monitoring", "container", "artifacts_uri",
            "to_version", "reason")
SECTIONS: dict[str, type[BaseModel]] = {"training": TrainingConfig, "gate": GateConfig,
                                        "rollout": RolloutConfig,
                                        "monitoring": MonitoringConfig}
DAG_KEYS: dict[str, tuple[str, ...]] = {
    "training": ("dataset", "partition_date", "force", "lookback_days", "source_uri",
                 "model_name", "trainer", "training", "gate", "rollout", "monitoring"),
    "batch_scoring": ("dataset", "partition_date", "model_name", "monitoring", "rollout"),
    "drift_monitor": ("dataset", "partition_date", "model_name", "monitoring"),
    "performance_monitor": ("dataset", "partition_date", "model_name", "monitoring", "rollout",
                            "gate"),
    "rollback": ("dataset", "model_name", "to_version", "reason"),
}
# Chosen by every trigger: which of the deployment's dataset configs to run (and, for a
# rollback, which version to restore and why: it restores only versions that were champion).
ALWAYS = frozenset({"dataset", "to_version", "reason"})
# Never a run's to choose, whatever the policy says: what runs next to the secrets and with what
# resources, and where outputs and audit records go.
NEVER = {"container": "the trainer container's image, pull policy, GPUs and resource limits "
                      "belong to the deployment (dataset config and policy file)",
         "artifacts_uri": "where outputs and audit records go belongs to the deployment "
                          "(MLOPS_ARTIFACTS_URI or artifacts_uri in the policy file)"}
DEFAULT_OVERRIDES = ("partition_date", "lookback_days", "force", "training.hyperparameters")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def _known_path(path: str) -> bool:
    head, _, rest = path.partition(".")
    if head not in RUN_KEYS:
        return False
    if not rest:
        return True
    model = SECTIONS.get(head)
    return model is not None and rest.split(".")[0] in model.model_fields


class Policy(BaseModel):
    """The deployment's policy (``$MLOPS_POLICY_FILE``); see docs/security.md."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    # Conf keys a run may set: top-level keys (``partition_date``) or dotted paths into a
    # section (``training.hyperparameters``); a listed key allows everything below it.
    run_overrides: list[str] = Field(default_factory=lambda: list(DEFAULT_OVERRIDES))
    # A run whose overrides loosen a gate (lower a threshold, change the champion metric or
    # margin, bypass the configured rollout) is refused unless this is true; when it is, the
    # model is tagged, audited and carded as promoted under a loosened gate.
    allow_looser_gates: bool = False
    # Where run outputs, snapshots and audit records go.
    artifacts_uri: str = Field(default_factory=lambda: os.environ.get("MLOPS_ARTIFACTS_URI")
                               or "s3://mlops", min_length=1)
    # The trainer image to run (trainer=docker): an image id (sha256:…), a registry digest
    # reference (repo@sha256:…), or a tag when trainer_image_digests lists what it may be.
    trainer_image: str | None = Field(
        default_factory=lambda: os.environ.get("MLOPS_TRAINER_IMAGE") or None)
    # The digests (image ids or registry digests) the trainer image may have; empty: the digest
    # in trainer_image itself.
    trainer_image_digests: list[str] = Field(default_factory=list)
    # Pull a digest-pinned trainer image that the engine lacks (never a tag).
    trainer_pull: Literal["missing", "never"] = "never"

    @field_validator("run_overrides")
    @classmethod
    def _check_overrides(cls, value: list[str]) -> list[str]:
        for path in value:
            head = path.split(".")[0]
            if head in NEVER:
                raise ValueError(f"{path!r} can never be overridden by a run: {NEVER[head]}")
            if not _known_path(path):
                raise ValueError(f"{path!r} is not a run conf key; known: "
                                 f"{', '.join(k for k in RUN_KEYS if k not in NEVER)} or a "
                                 f"field of {', '.join(SECTIONS)} (e.g. training.hyperparameters)")
        return value

    @field_validator("trainer_image_digests")
    @classmethod
    def _check_digests(cls, value: list[str]) -> list[str]:
        for digest in value:
            if not _DIGEST.match(digest):
                raise ValueError(f"{digest!r} is not a digest of the form sha256:<64 hex digits>")
        return value

    def allows(self, path: str) -> bool:
        """Whether a run may set ``path`` (itself, or because a section above it is listed)."""
        if path.split(".")[0] in ALWAYS:
            return True
        return any(path == key or path.startswith(key + ".") for key in self.run_overrides)

    def allowed_below(self, path: str) -> list[str]:
        """The allowed sub-keys of ``path`` (``["hyperparameters"]`` for ``training``)."""
        return sorted({key[len(path) + 1:].split(".")[0] for key in self.run_overrides
                       if key.startswith(path + ".")})

    def digests_for(self, reference: str) -> list[str]:
        """The digests the trainer image ``reference`` may have: the allow-list
        ``trainer_image_digests``, else the digest the reference names itself."""
        return list(self.trainer_image_digests) or own_digest(reference)


def own_digest(reference: str) -> list[str]:
    """The digest an image reference names itself (``sha256:…`` or ``repo@sha256:…``); none for
    a tag, which can be moved."""
    digest = reference.rpartition("@")[2]
    return [digest] if _DIGEST.match(digest) else []


def load_policy() -> Policy:
    """The deployment's policy: ``$MLOPS_POLICY_FILE`` if set, else the defaults."""
    path = os.environ.get(POLICY_ENV)
    if not path:
        return Policy()
    import yaml

    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"policy file {file} ({POLICY_ENV}) cannot be read: {err}",
                          runbook="refused-by-policy.md") from None
    try:
        return Policy.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'policy'}: {e['msg']}"
                             for e in err.errors())
        raise ConfigError(f"policy file {file} ({POLICY_ENV}) is invalid: {problems}",
                          runbook="refused-by-policy.md") from None


# -- a run's conf ---------------------------------------------------------------------------------
def _noop(value: Any) -> bool:
    return value is None or value == {}


def _deployment_value(path: str, policy: Policy) -> Any:
    """What the deployment itself uses for a top-level key (a conf repeating it changes nothing:
    runs triggered from an older trigger form carry every Param, and can still be cleared)."""
    return {"artifacts_uri": policy.artifacts_uri, "force": False,
            "trainer": os.environ.get("MLOPS_TRAINER") or "inprocess"}.get(path, _UNSET)


_UNSET = object()


def refused_keys(conf: dict[str, Any], policy: Policy, dag_keys: tuple[str, ...]
                 ) -> list[tuple[str, str]]:
    """``(key, why)`` for every key of ``conf`` that this run may not set."""
    refused: list[tuple[str, str]] = []

    def visit(path: str, value: Any) -> None:
        head = path.split(".")[0]
        if _noop(value) or value == _deployment_value(path, policy):
            return
        if head in NEVER:
            refused.append((path, f"never overridable from a run: {NEVER[head]}"))
        elif policy.allows(path):
            return
        elif isinstance(value, dict) and policy.allowed_below(path):
            for key, sub in value.items():
                visit(f"{path}.{key}", sub)
        else:
            listed = ", ".join(sorted(ALWAYS | set(policy.run_overrides)))
            refused.append((path, "not on the deployment's run_overrides allow-list "
                                  f"({listed}); ask an admin to allow it in the policy file "
                                  f"({POLICY_ENV}) or to change the dataset config"))

    for key, value in conf.items():
        if key not in dag_keys and key not in NEVER:
            if _noop(value):
                continue
            near = difflib.get_close_matches(key, [*dag_keys, *NEVER], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else \
                f"; this DAG takes {', '.join(dag_keys)}"
            refused.append((key, f"unknown conf key{hint}"))
            continue
        visit(key, value)
    return refused


def check_run_conf(conf: dict[str, Any] | None, policy: Policy, dag_keys: tuple[str, ...]) -> None:
    """Raise :class:`OverrideRefusedError` naming the first key of ``conf`` the run may not set
    (and how many more there are)."""
    refused = refused_keys(conf or {}, policy, dag_keys)
    if refused:
        key, why = refused[0]
        more = f" (and {len(refused) - 1} more: {', '.join(k for k, _ in refused[1:])})" \
            if len(refused) > 1 else ""
        raise OverrideRefusedError(f"run conf key {key!r} refused: {why}{more}. Nothing ran")


# -- loosened gates -------------------------------------------------------------------------------
def _stricter_or_equal(new: Threshold, old: Threshold) -> bool:
    """``new`` passes no value that ``old`` fails (same metric and direction)."""
    if new.metric != old.metric:
        return False
    lower_bound = {">=", ">"}
    if (old.op in lower_bound) != (new.op in lower_bound):
        return False
    if old.op in lower_bound:
        return new.value > old.value or (new.value == old.value and
                                         (new.op == old.op or new.op == ">"))
    return new.value < old.value or (new.value == old.value and (new.op == old.op or new.op == "<"))


def loosened(base: DatasetConfig, effective: DatasetConfig) -> list[str]:
    """How ``effective`` (the dataset config with a run's overrides) is easier to pass than
    ``base`` (the dataset config as the deployment wrote it): one sentence per loosening."""
    found: list[str] = []
    for old in base.gate.thresholds:
        if not any(_stricter_or_equal(new, old) for new in effective.gate.thresholds):
            same = [str(t) for t in effective.gate.thresholds if t.metric == old.metric]
            found.append(f"gate threshold {old} replaced by "
                         f"{', '.join(same) if same else 'nothing'}")
    if base.comparison_metric != effective.comparison_metric:
        found.append(f"champion metric {base.comparison_metric} changed to "
                     f"{effective.comparison_metric}")
    if effective.gate.champion_margin < base.gate.champion_margin:
        found.append(f"champion margin {base.gate.champion_margin:g} lowered to "
                     f"{effective.gate.champion_margin:g}")
    old_g, new_g = base.gate, effective.gate
    if old_g.require_significance and not new_g.require_significance:
        found.append("require_significance turned off")
    if old_g.require_significance and new_g.require_significance:
        if new_g.significance_confidence < old_g.significance_confidence:
            found.append(f"significance confidence {old_g.significance_confidence:g} lowered to "
                         f"{new_g.significance_confidence:g}")
        if new_g.significance_test != old_g.significance_test:
            found.append(f"significance test {old_g.significance_test} changed to "
                         f"{new_g.significance_test}")
    old_r, new_r = base.rollout, effective.rollout
    if old_r.mode != "direct" and new_r.mode == "direct":
        found.append(f"rollout {old_r.mode} bypassed (mode direct)")
    if new_r.confidence < old_r.confidence:
        found.append(f"A/B confidence {old_r.confidence:g} lowered to {new_r.confidence:g}")
    if new_r.min_labelled_rows < old_r.min_labelled_rows:
        found.append(f"A/B min_labelled_rows {old_r.min_labelled_rows} lowered to "
                     f"{new_r.min_labelled_rows}")
    if new_r.mode == "canary" and new_r.canary_share > old_r.canary_share and \
            old_r.mode == "canary":
        found.append(f"canary_share {old_r.canary_share:g} raised to {new_r.canary_share:g}")
    if old_r.mode == "shadow" and new_r.mode == "canary":
        found.append("rollout shadow changed to canary (the challenger serves rows)")
    return found


def check_gate(base: DatasetConfig, effective: DatasetConfig, policy: Policy) -> list[str]:
    """The loosenings of this run (``[]`` for none); refused unless the policy allows them."""
    found = loosened(base, effective)
    if found and not policy.allow_looser_gates:
        raise OverrideRefusedError(
            f"run conf loosens the gate of dataset {base.name!r}: {'; '.join(found)}. The "
            "deployment does not allow looser gates (allow_looser_gates in the policy file "
            f"{POLICY_ENV}); tighten instead, or ask an admin. Nothing ran")
    return found


def resolve(params: dict[str, Any], policy: Policy) -> tuple[DatasetConfig, list[str]]:
    """The run's dataset config (the YAML plus the run's overrides) and its gate loosenings;
    refuses loosenings the policy does not allow."""
    from include.mlops_core.config import DEFAULT_DATASET, load_dataset_config, resolve_config

    effective = resolve_config(params)
    base = load_dataset_config(params.get("dataset") or DEFAULT_DATASET)
    return effective, check_gate(base, effective, policy)
