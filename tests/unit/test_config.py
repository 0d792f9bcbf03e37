"""include/mlops_core/config.py: the one config model, its validation, Threshold parsing, loading."""

from __future__ import annotations

import copy
import operator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from include.mlops_core.config import (
    CLASSIFICATION_METRICS,
    HIGHER_IS_BETTER,
    REGRESSION_METRICS,
    DatasetConfig,
    GateConfig,
    Threshold,
    deep_merge,
    load_dataset_config,
    resolve_config,
)
from include.mlops_core.errors import ConfigError
from tests.unit.helpers import churn_config, churn_raw, regression_config


@pytest.fixture(autouse=True)
def _shipped_datasets_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here reads include/datasets/ unless it points MLOPS_DATASETS_DIR elsewhere."""
    monkeypatch.delenv("MLOPS_DATASETS_DIR", raising=False)


# -- the shipped config -----------------------------------------------------------------------------
def test_shipped_churn_config_loads_with_derived_properties() -> None:
    config = load_dataset_config("churn_demo")

    assert config.name == "churn_demo"
    assert config.registered_model_name == "churn_demo"
    assert config.task == "classification"
    assert config.comparison_metric == "roc_auc"
    # id, datetime and target columns are never features
    features = [c.name for c in config.feature_columns]
    assert "customer_id" not in features
    assert "event_date" not in features
    assert "churned" not in features
    assert features == [c.name for c in config.columns
                        if c.name not in ("customer_id", "event_date", "churned")]
    assert config.column["age"].min == 18
    assert [str(t) for t in config.gate.thresholds] == ["roc_auc >= 0.7", "accuracy >= 0.65"]
    assert all(isinstance(t, Threshold) for t in config.gate.thresholds)


def test_model_name_overrides_registered_model_name() -> None:
    assert churn_config(model_name="churn_v2").registered_model_name == "churn_v2"


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        pytest.param(lambda: churn_config(gate={"champion_metric": None}), "roc_auc",
                     id="classification-default"),
        pytest.param(lambda: regression_config(gate={"champion_metric": None}), "rmse",
                     id="regression-default"),
        pytest.param(lambda: churn_config(gate={"champion_metric": "log_loss"}), "log_loss",
                     id="explicit"),
    ],
)
def test_comparison_metric(build: Any, expected: str) -> None:
    assert build().comparison_metric == expected


def test_every_reported_metric_has_a_direction() -> None:
    assert set(CLASSIFICATION_METRICS) | set(REGRESSION_METRICS) == set(HIGHER_IS_BETTER)
    assert HIGHER_IS_BETTER["roc_auc"] and not HIGHER_IS_BETTER["log_loss"]
    assert not HIGHER_IS_BETTER["rmse"] and HIGHER_IS_BETTER["r2"]


def test_config_is_frozen() -> None:
    config = churn_config()
    with pytest.raises(ValidationError, match="frozen"):
        config.task = "regression"  # type: ignore[misc]


# -- validation errors ------------------------------------------------------------------------------
def _with(**changes: Any) -> dict[str, Any]:
    raw = churn_raw()
    raw.update(changes)
    return raw


def _columns_plus(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [*churn_raw()["columns"], *extra]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(_with(target="nope"), "target 'nope' must be one of the declared columns",
                     id="target-not-declared"),
        pytest.param(_with(gate={"thresholds": ["rmse <= 3"]}),
                     "gate threshold on 'rmse': a classification model reports accuracy, f1, "
                     "roc_auc, log_loss", id="regression-metric-on-classifier"),
        pytest.param(_with(task="regression", target="monthly_charges",
                           gate={"thresholds": ["roc_auc >= 0.8"], "champion_metric": "rmse"}),
                     "gate threshold on 'roc_auc': a regression model reports rmse, mae, r2",
                     id="classification-metric-on-regressor"),
        pytest.param(_with(gate={"champion_metric": "r2"}), "champion_metric 'r2' is not one of",
                     id="champion-metric-wrong-task"),
        pytest.param(_with(gate={"thresholds": ["roc_auc at least 0.8"]}),
                     "is not of the form 'metric >= number'", id="threshold-unparsable"),
        pytest.param(_with(gate={"champion_margin": -0.1}), "greater than or equal to 0",
                     id="negative-margin"),
        pytest.param(_with(columns=_columns_plus({"name": "age", "type": "numeric"})),
                     "column names must be unique", id="duplicate-column"),
        pytest.param(_with(id_column="account"), "id_column 'account' must be one of",
                     id="id-column-not-declared"),
        pytest.param(_with(slice_column="country"), "slice_column 'country' must be one of",
                     id="slice-column-not-declared"),
        pytest.param(_with(columns=[{"name": "customer_id", "type": "categorical"},
                                    {"name": "event_date", "type": "datetime"},
                                    {"name": "churned", "type": "integer"}], slice_column=None),
                     "no feature columns", id="no-features"),
        pytest.param(_with(columns=_columns_plus({"name": "x", "type": "numeric", "min": 5, "max": 1})),
                     "column 'x': min 5.0 > max 1.0", id="min-above-max"),
        pytest.param(_with(columns=_columns_plus({"name": "x", "type": "numeric",
                                                  "categories": ["a"]})),
                     "categories are only allowed on categorical columns", id="categories-on-numeric"),
        pytest.param(_with(columns=_columns_plus({"name": "x", "type": "complex"})), "type",
                     id="unknown-column-type"),
        pytest.param(_with(max_rows=10), "max_rows must be >= min_rows", id="max-below-min-rows"),
        pytest.param(_with(lookback_days=0), "lookback_days", id="lookback-zero"),
        pytest.param(_with(training={"test_size": 1.0}), "test_size", id="test-size-one"),
        pytest.param(_with(training={"family": "svm"}), "family", id="unknown-family"),
        pytest.param(_with(training={"family": "ridge"}), "model family 'ridge' is for regression",
                     id="ridge-classifier"),
        pytest.param(_with(training={"family": "linear"}), "model family 'linear' is for regression",
                     id="linear-classifier"),
        pytest.param(_with(task="regression", target="monthly_charges",
                           gate={"thresholds": [], "champion_metric": "rmse"},
                           training={"family": "logistic_regression"},
                           monitoring={"performance_floor": []}),
                     "model family 'logistic_regression' is for classification",
                     id="logistic-regressor"),
        pytest.param(_with(task="clustering"), "task", id="unknown-task"),
        pytest.param(_with(name="churn demo!"), "String should match pattern", id="bad-name"),
        pytest.param(_with(targett="churned"), "Extra inputs are not permitted", id="typo-key"),
    ],
)
def test_invalid_config_is_rejected_with_a_clear_message(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        DatasetConfig.model_validate(raw)
    assert message in str(err.value)


# -- Threshold --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "metric", "op", "value"),
    [
        pytest.param("roc_auc >= 0.8", "roc_auc", ">=", 0.8, id="spaced"),
        pytest.param("roc_auc>=0.8", "roc_auc", ">=", 0.8, id="compact"),
        pytest.param("  rmse < 3.5  ", "rmse", "<", 3.5, id="padded"),
        pytest.param("log_loss <= 0.45", "log_loss", "<=", 0.45, id="underscore-metric"),
        pytest.param("r2 > -1e-3", "r2", ">", -0.001, id="negative-exponent"),
        pytest.param("f1 >= 1", "f1", ">=", 1.0, id="integer"),
    ],
)
def test_threshold_parse(text: str, metric: str, op: str, value: float) -> None:
    threshold = Threshold.parse(text)
    assert (threshold.metric, threshold.op, threshold.value) == (metric, op, value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("roc_auc", id="no-operator"),
        pytest.param("roc_auc 0.8", id="missing-operator"),
        pytest.param("roc_auc => 0.8", id="reversed-operator"),
        pytest.param("roc_auc == 0.8", id="equality"),
        pytest.param("ROC_AUC >= 0.8", id="upper-case-metric"),
        pytest.param("roc_auc >= high", id="word-value"),
        pytest.param(">= 0.8", id="no-metric"),
    ],
)
def test_threshold_parse_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="is not of the form 'metric >= number'") as err:
        Threshold.parse(text)
    assert repr(text) in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("roc_auc >= 0.8.1", id="two-dots"),
        pytest.param("roc_auc >= 1e", id="dangling-exponent"),
        pytest.param("roc_auc >= -", id="bare-sign"),
    ],
)
def test_threshold_parse_unparsable_number_names_the_threshold(text: str) -> None:
    """The number matches the regex's character class but float() rejects it: the error must
    still quote the threshold and say what form is expected, like every other parse error."""
    with pytest.raises(ValueError) as err:
        Threshold.parse(text)
    assert repr(text) in str(err.value)
    assert "is not of the form 'metric >= number'" in str(err.value)


_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@pytest.mark.parametrize(
    ("text", "observed", "holds"),
    [
        pytest.param("roc_auc >= 0.8", 0.8, True, id="ge-boundary"),
        pytest.param("roc_auc >= 0.8", 0.79, False, id="ge-below"),
        pytest.param("roc_auc > 0.8", 0.8, False, id="gt-boundary"),
        pytest.param("rmse <= 3", 3.0, True, id="le-boundary"),
        pytest.param("rmse < 3", 3.0, False, id="lt-boundary"),
        pytest.param("rmse < 3", 2.5, True, id="lt-below"),
    ],
)
def test_threshold_holds(text: str, observed: float, holds: bool) -> None:
    assert Threshold.parse(text).holds(observed) is holds


@settings(max_examples=150, deadline=None)
@given(op=st.sampled_from(sorted(_OPS)),
       value=st.floats(allow_nan=False, allow_infinity=False, width=64),
       observed=st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_threshold_parse_round_trips_any_finite_number(op: str, value: float, observed: float) -> None:
    threshold = Threshold.parse(f"accuracy {op} {value!r}")
    assert threshold.value == value
    assert threshold.holds(observed) is _OPS[op](observed, value)


def test_threshold_str() -> None:
    assert str(Threshold.parse("roc_auc>=0.80")) == "roc_auc >= 0.8"


def test_gate_config_accepts_strings_and_mappings() -> None:
    gate = GateConfig(thresholds=["roc_auc >= 0.7", {"metric": "f1", "op": ">", "value": 0.5}])
    assert gate.thresholds == [Threshold(metric="roc_auc", op=">=", value=0.7),
                               Threshold(metric="f1", op=">", value=0.5)]


# -- loading ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        pytest.param("../etc/passwd", id="traversal"),
        pytest.param("a/b", id="slash"),
        pytest.param("", id="empty"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("churn demo", id="space"),
    ],
)
def test_bad_dataset_name_is_rejected_before_touching_the_filesystem(name: str) -> None:
    with pytest.raises(ValueError, match="may only hold letters, digits"):
        load_dataset_config(name)


def test_unknown_dataset_lists_the_known_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "beta.yaml").write_text("task: classification\n")
    (tmp_path / "alpha.yaml").write_text("task: classification\n")
    (tmp_path / "notes.txt").write_text("not a dataset")
    monkeypatch.setenv("MLOPS_DATASETS_DIR", str(tmp_path))

    with pytest.raises(ConfigError) as err:
        load_dataset_config("gamma")
    message = str(err.value)
    assert str(tmp_path / "gamma.yaml") in message
    assert "known datasets: ['alpha', 'beta']" in message


def test_unknown_dataset_in_shipped_dir_names_churn_demo() -> None:
    with pytest.raises(ConfigError, match="'churn_demo'"):
        load_dataset_config("no_such_dataset")


def test_datasets_dir_env_var_is_honoured_and_name_defaults_to_file_stem(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny.yaml").write_text(
        "source_uri: /data/tiny\ntask: regression\ntarget: y\n"
        "columns: [{name: x, type: numeric}, {name: y, type: numeric}]\n")
    monkeypatch.setenv("MLOPS_DATASETS_DIR", str(tmp_path))

    config = load_dataset_config("tiny", {"lookback_days": 4})
    assert (config.name, config.task, config.lookback_days) == ("tiny", "regression", 4)
    assert [c.name for c in config.feature_columns] == ["x"]


def test_empty_yaml_fails_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty.yaml").write_text("")
    monkeypatch.setenv("MLOPS_DATASETS_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"empty\.yaml .* is invalid: source_uri: Field required"):
        load_dataset_config("empty")


# -- deep_merge and resolve_config ------------------------------------------------------------------
def test_deep_merge() -> None:
    base = {"a": 1, "nested": {"x": 1, "y": {"z": 1}}, "items": [1, 2]}
    override = {"nested": {"y": {"w": 2}, "x": None}, "items": [3], "new": "n", "a": None}
    snapshot = copy.deepcopy(base)

    merged = deep_merge(base, override)

    assert merged == {"a": 1, "nested": {"x": 1, "y": {"z": 1, "w": 2}}, "items": [3], "new": "n"}
    assert base == snapshot  # inputs are not mutated


DAG_DEFAULT_PARAMS = {"dataset": "churn_demo", "artifacts_uri": "s3://mlops", "source_uri": None,
                      "partition_date": None, "lookback_days": None, "model_name": None,
                      "training": {}, "gate": {}, "force": False}


@pytest.mark.parametrize(
    "params",
    [pytest.param({}, id="empty"), pytest.param(DAG_DEFAULT_PARAMS, id="dag-defaults")],
)
def test_resolve_config_defaults_equal_the_yaml(params: dict[str, Any]) -> None:
    assert resolve_config(params) == load_dataset_config("churn_demo")


def test_resolve_config_applies_param_overrides() -> None:
    params = {**DAG_DEFAULT_PARAMS, "source_uri": "/data/churn", "lookback_days": 3,
              "model_name": "churn_v2", "training": {"seed": 7, "hyperparameters": {"max_iter": 5}},
              "gate": {"thresholds": ["roc_auc >= 0.9"]}}

    config = resolve_config(params)

    assert config.source_uri == "/data/churn"
    assert config.lookback_days == 3
    assert config.registered_model_name == "churn_v2"
    # nested overrides merge into the YAML instead of replacing whole sections
    assert config.training.seed == 7
    assert config.training.family == "hist_gradient_boosting"
    assert config.training.hyperparameters == {"max_iter": 5, "learning_rate": 0.1,
                                               "max_leaf_nodes": 31}
    assert [str(t) for t in config.gate.thresholds] == ["roc_auc >= 0.9"]  # lists are replaced
    assert config.gate.champion_metric == "roc_auc"


def test_resolve_config_rejects_a_bad_override() -> None:
    with pytest.raises(ConfigError, match=r"is invalid: training\.family: "):
        resolve_config({"training": {"family": "svm"}})


# -- container (the docker trainer) ---------------------------------------------------------------
def test_container_defaults_and_limits() -> None:
    from include.mlops_core.config import ContainerConfig

    default = ContainerConfig()
    assert (default.gpus, default.gpu_fallback) == (0, "cpu")
    assert not default.wants_gpu and default.memory_limit_bytes == 4 * 2**30
    gpu = ContainerConfig(gpus="all", memory_limit="1.5g")
    assert gpu.wants_gpu and gpu.memory_limit_bytes == int(1.5 * 2**30)
    assert ContainerConfig(memory_limit="512m").memory_limit_bytes == 512 * 2**20


@pytest.mark.parametrize("bad", [{"gpus": -1}, {"gpus": "some"}, {"memory_limit": "4 GB"},
                                 {"memory_limit": "lots"}, {"cpus": 0}, {"timeout_minutes": 0},
                                 {"gpu_fallback": "maybe"}])
def test_container_rejects_bad_values(bad: dict) -> None:
    from include.mlops_core.config import ContainerConfig

    with pytest.raises(ValueError):
        ContainerConfig(**bad)


@pytest.mark.parametrize(("key", "where"), [("image", "trainer_image"), ("pull", "trainer_pull")])
def test_a_dataset_config_no_longer_names_the_trainer_image(key: str, where: str) -> None:
    """Which image runs next to the secrets is the deployment's policy, not a dataset's."""
    from include.mlops_core.config import ContainerConfig

    with pytest.raises(ValueError, match=f"container.{key} moved to the deployment's policy: "
                                         f"set {where}"):
        ContainerConfig(**{key: "mlops-trainer:latest"})


def test_another_family_does_not_inherit_the_yamls_hyperparameters() -> None:
    from include.mlops_core import modeling
    from include.mlops_core.config import resolve_config

    forest = resolve_config({"dataset": "churn_demo", "training": {"family": "random_forest"}})
    assert forest.training.hyperparameters == {}
    modeling.build_estimator(forest)  # the YAML's max_iter would be a TypeError here
    xgb = resolve_config({"dataset": "churn_demo",
                          "training": {"family": "xgboost", "hyperparameters": {"max_depth": 3}}})
    assert xgb.training.hyperparameters == {"max_depth": 3}
    same = resolve_config({"dataset": "churn_demo", "training": {"seed": 3}})
    assert same.training.hyperparameters["max_iter"] == 150  # same family: merged as before


# -- candidates and search spaces -------------------------------------------------------------------
def _with_training(**training: object) -> DatasetConfig:
    raw = churn_raw()
    raw["training"] = {"seed": 42, **training}
    return DatasetConfig.model_validate(raw)


def test_one_family_is_one_candidate_and_a_view_trains_only_it() -> None:
    config = _with_training(family="random_forest", hyperparameters={"n_estimators": 10},
                            search_space={"max_depth": {"type": "int", "low": 2, "high": 8}})
    [only] = config.training.all_candidates
    assert (only.label, only.family, only.search_space["max_depth"].high) == (
        "random_forest", "random_forest", 8)
    view = config.candidate_view("random_forest", {"max_depth": 5})
    assert view.training.family == "random_forest"
    assert view.training.hyperparameters == {"n_estimators": 10, "max_depth": 5}
    assert view.training.search_space == {} and view.training.candidates == []


def test_candidates_need_unique_names_and_their_own_hyperparameters() -> None:
    two = [{"family": "random_forest"}, {"name": "lr", "family": "logistic_regression",
                                          "hyperparameters": {"C": 0.5}}]
    config = _with_training(candidates=two)
    assert [c.label for c in config.training.all_candidates] == ["random_forest", "lr"]
    assert config.candidate_view("lr").training.hyperparameters == {"C": 0.5}
    with pytest.raises(ValidationError, match="candidate names must be unique"):
        _with_training(candidates=[{"family": "random_forest"}, {"family": "random_forest"}])
    with pytest.raises(ValidationError, match="put hyperparameters and search_space in each"):
        _with_training(candidates=two, hyperparameters={"max_iter": 3})
    with pytest.raises(ValidationError, match="is for regression"):
        _with_training(candidates=[{"family": "ridge"}])
    from include.mlops_core.errors import ConfigError

    with pytest.raises(ConfigError, match="no candidate 'svm'"):
        config.candidate_view("svm")


@pytest.mark.parametrize(("dimension", "message"), [
    ({"type": "int", "low": 5, "high": 1}, "low 5 > high 1"),
    ({"type": "int", "low": 0, "high": 9, "log": True}, "log: true needs low >= 1"),
    ({"type": "float", "low": 0, "high": 1, "log": True}, "log: true needs low > 0"),
    ({"type": "categorical", "choices": []}, "at least 1 item"),
    ({"type": "normal", "low": 0, "high": 1}, "does not match any of the expected tags"),
])
def test_a_bad_search_dimension_is_a_config_error(dimension: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _with_training(search_space={"max_iter": dimension})


def test_a_parameter_both_fixed_and_searched_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"\['max_iter'\] are both fixed"):
        _with_training(hyperparameters={"max_iter": 100},
                       search_space={"max_iter": {"type": "int", "low": 10, "high": 20}})
