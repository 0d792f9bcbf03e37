"""include/mlops_core/policy.py: what a run's conf may change, what loosens a gate, and how the
deployment's policy file is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from include.mlops_core.config import load_dataset_config, resolve_config
from include.mlops_core.errors import ConfigError, OverrideRefusedError
from include.mlops_core.policy import (
    DAG_KEYS,
    Policy,
    check_gate,
    check_run_conf,
    load_policy,
    loosened,
    own_digest,
    refused_keys,
    resolve,
)

TRAINING = DAG_KEYS["training"]
DIGEST = "sha256:" + "ab" * 32


# -- the run's conf -------------------------------------------------------------------------------
@pytest.mark.parametrize("conf", [
    pytest.param({}, id="empty"),
    pytest.param({"partition_date": "2025-01-02", "lookback_days": 3, "force": True},
                 id="day-and-force"),
    pytest.param({"dataset": "churn_demo", "training": {"hyperparameters": {"max_iter": 9}}},
                 id="hyperparameters"),
    pytest.param({"partition_date": None, "training": {}, "gate": {}, "container": None},
                 id="no-op-values"),  # what a trigger form sends for untouched fields
    pytest.param({"artifacts_uri": "s3://mlops", "trainer": "inprocess", "container": {},
                  "source_uri": None, "force": False},
                 id="older-form"),  # a run from before the policy: every Param at its default
])
def test_the_default_policy_allows(conf: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLOPS_TRAINER", raising=False)
    check_run_conf(conf, Policy(artifacts_uri="s3://mlops"), TRAINING)


@pytest.mark.parametrize(("conf", "key", "why"), [
    pytest.param({"container": {"image": "evil:latest"}}, "container",
                 "never overridable from a run: the trainer container's image",
                 id="container-image"),
    pytest.param({"artifacts_uri": "s3://elsewhere"}, "artifacts_uri",
                 "never overridable from a run: where outputs and audit records go",
                 id="artifacts"),
    pytest.param({"gate": {"thresholds": ["roc_auc >= 0.0"]}}, "gate",
                 "not on the deployment's run_overrides allow-list", id="gate"),
    pytest.param({"training": {"family": "random_forest"}}, "training.family",
                 "not on the deployment's run_overrides allow-list", id="training-family"),
    pytest.param({"rollout": {"mode": "direct"}}, "rollout", "allow-list", id="rollout"),
    pytest.param({"source_uri": "s3://other/data"}, "source_uri", "allow-list", id="source"),
    pytest.param({"model_name": "someone_elses"}, "model_name", "allow-list", id="model-name"),
    pytest.param({"trainer": "docker"}, "trainer", "allow-list", id="trainer"),
    pytest.param({"force": True, "artifacts_uri": "s3://mlops-scratch"}, "artifacts_uri",
                 "never overridable", id="artifacts-elsewhere"),
    pytest.param({"partiton_date": "2025-01-02"}, "partiton_date",
                 "unknown conf key; did you mean 'partition_date'?", id="misspelt"),
])
def test_the_default_policy_refuses(conf: dict[str, Any], key: str, why: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLOPS_TRAINER", raising=False)
    with pytest.raises(OverrideRefusedError) as err:
        check_run_conf(conf, Policy(), TRAINING)
    message = str(err.value)
    assert message.startswith(f"run conf key {key!r} refused: ")
    assert why in message
    assert message.endswith("Nothing ran (runbook: docs/runbooks/refused-by-policy.md)")
    assert "\n" not in message  # one line in the task log


def test_every_refused_key_is_named_in_the_one_line() -> None:
    refused = refused_keys({"gate": {"thresholds": []}, "container": {"gpus": 8},
                            "artifacts_uri": "s3://x", "force": True}, Policy(), TRAINING)
    assert [key for key, _ in refused] == ["gate", "container", "artifacts_uri"]
    with pytest.raises(OverrideRefusedError, match=r"'gate' refused: .* \(and 2 more: "
                                                   r"container, artifacts_uri\)"):
        check_run_conf({"gate": {"thresholds": []}, "container": {"gpus": 8},
                        "artifacts_uri": "s3://x"}, Policy(), TRAINING)


def test_a_listed_section_allows_everything_below_it() -> None:
    policy = Policy(run_overrides=["gate", "training.seed"])
    check_run_conf({"gate": {"thresholds": ["roc_auc >= 0.9"], "champion_margin": 0.01},
                    "training": {"seed": 3}}, policy, TRAINING)
    assert refused_keys({"training": {"seed": 3, "test_size": 0.5}}, policy, TRAINING) == [
        ("training.test_size", refused_keys({"training": {"test_size": 0.5}}, policy,
                                            TRAINING)[0][1])]


def test_keys_of_another_dag_are_unknown_here() -> None:
    assert refused_keys({"force": True}, Policy(), DAG_KEYS["batch_scoring"])[0][1].startswith(
        "unknown conf key")


# -- the policy file --------------------------------------------------------------------------------
def test_without_a_file_the_defaults_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLOPS_POLICY_FILE", raising=False)
    monkeypatch.setenv("MLOPS_ARTIFACTS_URI", "s3://deployment-artifacts")
    monkeypatch.setenv("MLOPS_TRAINER_IMAGE", DIGEST)
    policy = load_policy()
    assert policy.run_overrides == ["partition_date", "lookback_days", "force",
                                    "training.hyperparameters"]
    assert not policy.allow_looser_gates and policy.trainer_pull == "never"
    assert policy.artifacts_uri == "s3://deployment-artifacts"
    assert policy.trainer_image == DIGEST and policy.digests_for(DIGEST) == [DIGEST]


def test_the_file_replaces_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(f"run_overrides: [partition_date, gate.thresholds]\n"
                    f"allow_looser_gates: true\ntrainer_image: mlops-trainer:abc\n"
                    f"trainer_image_digests: ['{DIGEST}']\n")
    monkeypatch.setenv("MLOPS_POLICY_FILE", str(path))
    policy = load_policy()
    assert policy.allows("gate.thresholds") and not policy.allows("gate.champion_metric")
    assert policy.allow_looser_gates
    assert policy.digests_for("mlops-trainer:abc") == [DIGEST]


@pytest.mark.parametrize(("text", "message"), [
    ("run_overrides: [container.image]", "'container.image' can never be overridden by a run"),
    ("run_overrides: [artifacts_uri]", "'artifacts_uri' can never be overridden by a run"),
    ("run_overrides: [training.famly]", "'training.famly' is not a run conf key"),
    ("trainer_image_digests: [latest]", "'latest' is not a digest"),
    ("allow_looser_gate: true", "Extra inputs are not permitted"),
])
def test_a_bad_policy_file_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             text: str, message: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text + "\n")
    monkeypatch.setenv("MLOPS_POLICY_FILE", str(path))
    with pytest.raises(ConfigError, match=f"policy file {path} .* is invalid: .*{message}"):
        load_policy()


def test_a_missing_policy_file_is_a_config_error(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_POLICY_FILE", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_policy()


@pytest.mark.parametrize(("reference", "expected"), [
    (DIGEST, [DIGEST]), (f"registry.example.com/ml/trainer@{DIGEST}", [DIGEST]),
    ("mlops-trainer:latest", []), ("sha256:abc", [])])
def test_an_image_reference_pins_only_its_own_digest(reference: str, expected: list[str]) -> None:
    assert own_digest(reference) == expected


# -- loosened gates -------------------------------------------------------------------------------
BASE = load_dataset_config("churn_demo")  # thresholds roc_auc >= 0.70, accuracy >= 0.65


def effective(**sections: Any) -> Any:
    return resolve_config({"dataset": "churn_demo", **sections})


@pytest.mark.parametrize(("sections", "expected"), [
    pytest.param({"gate": {"thresholds": ["roc_auc >= 0.0", "accuracy >= 0.65"]}},
                 ["gate threshold roc_auc >= 0.7 replaced by roc_auc >= 0"], id="lowered"),
    pytest.param({"gate": {"thresholds": ["accuracy >= 0.65"]}},
                 ["gate threshold roc_auc >= 0.7 replaced by nothing"], id="removed"),
    pytest.param({"gate": {"thresholds": ["roc_auc > 0.7", "accuracy >= 0.65", "f1 >= 0.1"]}},
                 [], id="stricter-op-and-added"),
    pytest.param({"gate": {"thresholds": ["roc_auc >= 0.8", "accuracy >= 0.7"]}}, [],
                 id="raised"),
    pytest.param({"gate": {"champion_metric": "accuracy"}},
                 ["champion metric roc_auc changed to accuracy"], id="metric"),
    pytest.param({"gate": {"champion_margin": 0.05}}, [], id="margin-raised"),
])
def test_what_loosens_the_gate(sections: dict[str, Any], expected: list[str]) -> None:
    assert loosened(BASE, effective(**sections)) == expected


def test_a_lower_margin_and_a_bypassed_rollout_loosen() -> None:
    base = resolve_config({"dataset": "churn_demo", "gate": {"champion_margin": 0.02},
                           "rollout": {"mode": "canary", "canary_share": 0.1}})
    found = loosened(base, base.model_copy(update={
        "gate": base.gate.model_copy(update={"champion_margin": 0.0}),
        "rollout": base.rollout.model_copy(update={"mode": "direct"})}))
    assert found == ["champion margin 0.02 lowered to 0", "rollout canary bypassed (mode direct)"]
    wider = base.model_copy(update={"rollout": base.rollout.model_copy(
        update={"canary_share": 0.5, "confidence": 0.8, "min_labelled_rows": 10})})
    assert loosened(base, wider) == ["A/B confidence 0.95 lowered to 0.8",
                                     "A/B min_labelled_rows 200 lowered to 10",
                                     "canary_share 0.1 raised to 0.5"]


def test_a_loosened_gate_is_refused_unless_the_deployment_allows_it() -> None:
    lower = effective(gate={"thresholds": ["roc_auc >= 0.0"]})
    with pytest.raises(OverrideRefusedError, match=r"run conf loosens the gate of dataset "
                                                   r"'churn_demo': gate threshold roc_auc >= 0.7 "
                                                   r"replaced by roc_auc >= 0"):
        check_gate(BASE, lower, Policy(run_overrides=["gate"]))
    allowed = check_gate(BASE, lower, Policy(run_overrides=["gate"], allow_looser_gates=True))
    assert allowed[0].startswith("gate threshold roc_auc >= 0.7 replaced by")


def test_resolve_returns_the_config_and_its_loosenings() -> None:
    policy = Policy(run_overrides=["gate"], allow_looser_gates=True)
    config, found = resolve({"dataset": "churn_demo", "gate": {"champion_metric": "f1"}}, policy)
    assert config.comparison_metric == "f1" and found == ["champion metric roc_auc changed to f1"]
    assert resolve({"dataset": "churn_demo"}, Policy())[1] == []
