"""include/mlops_core/explain.py: SHAP and permutation importance per input column, on real models
trained on small generated data where the informative columns are known."""

from __future__ import annotations

import json
import math
import sys
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest

from include.mlops_core import explain, modeling
from include.mlops_core.config import DatasetConfig
from include.mlops_core.errors import ConfigError
from tests.unit.helpers import churn_config, demo_frame

PNG = b"\x89PNG\r\n\x1a\n"
FAST = {"shap_rows": 150, "permutation_rows": 200, "repeats": 3}
HYPERPARAMETERS = {
    "hist_gradient_boosting": {"max_iter": 30},
    "random_forest": {"n_estimators": 20, "max_depth": 6},
    "xgboost": {"n_estimators": 30, "max_depth": 3},
    "logistic_regression": {},
    "ridge": {},
    "linear": {},
}
INFORMATIVE = ("signal", "group")  # numeric, categorical
NOISE = ("noise", "shade")
TASKS = {"binary": "classification", "multiclass": "classification", "regression": "regression"}


def make_frame(kind: str, rows: int = 800, seed: int = 0) -> pd.DataFrame:
    """``signal`` and ``group`` drive the target, ``noise`` and ``shade`` are pure noise;
    multiclass: three classes cut from the same score."""
    rng = np.random.default_rng(seed)
    signal, noise = rng.normal(size=rows), rng.normal(size=rows)
    group = rng.choice(["a", "b", "c"], size=rows)
    shade = rng.choice(["red", "green", "blue"], size=rows)
    score = signal + 1.5 * (group == "b") - 1.5 * (group == "c") + rng.normal(0, 0.3, rows)
    if kind == "binary":
        label = (score > 0).astype(float)
    elif kind == "multiclass":
        label = np.digitize(score, [-0.8, 0.8]).astype(float)
    else:
        label = 3 * signal + 2 * (group == "b") - 2 * (group == "c") + rng.normal(0, 0.3, rows)
    return pd.DataFrame({"signal": signal, "noise": noise, "group": group, "shade": shade,
                         "label": label})


def make_config(kind: str, family: str, *, metric: str | None = None, seed: int = 42) -> DatasetConfig:
    task = TASKS[kind]
    return DatasetConfig.model_validate({
        "name": f"explain_{kind}", "source_uri": "memory://explain", "task": task,
        "target": "label", "min_rows": 1,
        "columns": [{"name": "signal", "type": "numeric"}, {"name": "noise", "type": "numeric"},
                    {"name": "group", "type": "categorical"},
                    {"name": "shade", "type": "categorical"},
                    {"name": "label", "type": "integer" if task == "classification" else "numeric"}],
        "training": {"family": family, "hyperparameters": HYPERPARAMETERS[family], "seed": seed},
        "gate": {"champion_metric": metric},
    })


@cache
def fitted(kind: str, family: str) -> tuple[Any, pd.DataFrame, DatasetConfig]:
    """(model, held-out rows, config), trained once per module run."""
    config = make_config(kind, family)
    train, test = modeling.split(make_frame(kind), config)
    return modeling.train(train, config), test, config


@cache
def explained(kind: str, family: str) -> dict[str, Any]:
    model, test, config = fitted(kind, family)
    return explain.explain(model, test, config, **FAST)


CASES = [
    pytest.param("binary", "hist_gradient_boosting", "tree", id="binary-hist_gradient_boosting"),
    pytest.param("binary", "random_forest", "tree", id="binary-random_forest"),
    pytest.param("binary", "xgboost", "tree", id="binary-xgboost"),
    pytest.param("binary", "logistic_regression", "permutation", id="binary-logistic_regression"),
    pytest.param("multiclass", "hist_gradient_boosting", "tree", id="multiclass-hist_gradient_boosting"),
    pytest.param("multiclass", "random_forest", "tree", id="multiclass-random_forest"),
    pytest.param("multiclass", "logistic_regression", "permutation", id="multiclass-logistic_regression"),
    pytest.param("regression", "hist_gradient_boosting", "tree", id="regression-hist_gradient_boosting"),
    pytest.param("regression", "xgboost", "tree", id="regression-xgboost"),
    pytest.param("regression", "ridge", "permutation", id="regression-ridge"),
    pytest.param("regression", "linear", "permutation", id="regression-linear"),
]


def assert_no_nan(value: Any) -> None:
    json.dumps(value, allow_nan=False)  # raises on NaN / inf and on anything not JSON


def assert_informative_first(result: dict[str, Any]) -> None:
    shap, perm = result["shap"], result["permutation"]
    for good in INFORMATIVE:
        for bad in NOISE:
            assert shap[good] > shap[bad], (good, bad, shap)
            assert perm[good]["mean"] > perm[bad]["mean"], (good, bad, perm)


# -- what explain returns -------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "family", "method"), CASES)
def test_informative_columns_rank_above_noise_in_shap_and_permutation(
        kind: str, family: str, method: str) -> None:
    result = explained(kind, family)

    assert result["method"] == method
    assert result["approximate"] is False
    assert result["notes"] == []
    assert_informative_first(result)
    assert [row["column"] for row in result["top_features"]][:2] in (list(INFORMATIVE),
                                                                    list(INFORMATIVE)[::-1])


@pytest.mark.parametrize(("kind", "family", "method"), CASES)
def test_output_is_json_without_nan_and_top_features_cover_every_column(
        kind: str, family: str, method: str) -> None:
    result = explained(kind, family)
    _, test, config = fitted(kind, family)
    columns = [c.name for c in config.feature_columns]

    assert_no_nan(result)
    assert json.loads(json.dumps(result)) == result
    assert set(result) >= {"method", "shap", "permutation", "top_features", "rows", "seconds"}
    assert list(result["shap"]) == columns and list(result["permutation"]) == columns
    top = result["top_features"]
    assert sorted(row["column"] for row in top) == sorted(columns)
    assert [row["rank"] for row in top] == list(range(1, len(columns) + 1))
    assert [row["shap"] for row in top] == sorted((row["shap"] for row in top), reverse=True)
    assert all(row["shap"] == result["shap"][row["column"]] for row in top)
    assert all(row["shap"] >= 0 and row["permutation_std"] >= 0 for row in top)
    assert result["rows"] == {"shap": min(len(test), FAST["shap_rows"]),
                              "permutation": min(len(test), FAST["permutation_rows"])}
    assert all(s >= 0 for s in result["seconds"].values())
    assert result["seed"] == config.training.seed


@pytest.mark.parametrize(("kind", "scoring"), [("binary", "roc_auc"), ("multiclass", "roc_auc_ovr"),
                                               ("regression", "neg_root_mean_squared_error")])
def test_permutation_scores_with_the_comparison_metric_default(kind: str, scoring: str) -> None:
    assert explained(kind, "hist_gradient_boosting")["scoring"] == scoring


@pytest.mark.parametrize(("kind", "family", "metric", "scoring"), [
    pytest.param("binary", "logistic_regression", "log_loss", "neg_log_loss", id="log_loss"),
    pytest.param("binary", "logistic_regression", "f1", "f1", id="f1-binary"),
    pytest.param("multiclass", "logistic_regression", "f1", "f1_macro", id="f1-multiclass"),
    pytest.param("multiclass", "logistic_regression", "accuracy", "accuracy", id="accuracy"),
    pytest.param("regression", "ridge", "mae", "neg_mean_absolute_error", id="mae"),
    pytest.param("regression", "ridge", "r2", "r2", id="r2"),
])
def test_permutation_scoring_follows_the_configured_comparison_metric(
        kind: str, family: str, metric: str, scoring: str) -> None:
    model, test, _ = fitted(kind, family)
    config = make_config(kind, family, metric=metric)

    result = explain.explain(model, test, config, **FAST)

    assert result["scoring"] == scoring
    assert_no_nan(result)
    for bad in NOISE:
        assert result["permutation"]["signal"]["mean"] > result["permutation"][bad]["mean"]


def test_the_same_seed_gives_the_same_result_and_another_seed_other_samples() -> None:
    model, test, config = fitted("binary", "hist_gradient_boosting")
    small = {"shap_rows": 60, "permutation_rows": 80, "repeats": 2}

    first = explain.explain(model, test, config, seed=3, **small)
    again = explain.explain(model, test, config, seed=3, **small)
    other = explain.explain(model, test, config, seed=4, **small)

    def timeless(result: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in result.items() if k != "seconds"}

    assert timeless(first) == timeless(again)
    assert first["shap"] != other["shap"] and first["permutation"] != other["permutation"]
    assert first["seed"] == 3


def test_the_default_seed_is_the_training_seed() -> None:
    model, test, config = fitted("regression", "ridge")
    small = {"shap_rows": 50, "permutation_rows": 60, "repeats": 2}

    default = explain.explain(model, test, config, **small)
    explicit = explain.explain(model, test, config, seed=config.training.seed, **small)

    assert default["seed"] == 42
    assert default["shap"] == explicit["shap"] and default["permutation"] == explicit["permutation"]


def test_the_churn_demo_ranks_its_strongest_driver_first_and_maps_one_hot_columns_back() -> None:
    config = churn_config(training={"hyperparameters": {"max_iter": 25}})
    train, test = modeling.split(demo_frame(config, rows=1200), config)
    model = modeling.train(train, config)

    result = explain.explain(model, test, config, **FAST)

    assert list(result["shap"]) == [c.name for c in config.feature_columns]  # input columns only
    assert result["top_features"][0]["column"] == "contract"  # the demo's largest coefficients
    assert result["shap"]["contract"] > result["shap"]["region"]
    assert result["shap_output"] == "log-odds"
    assert_no_nan(result)


def test_trees_too_costly_for_exact_shap_get_fewer_rows_then_approximate_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, test, config = fitted("binary", "random_forest")
    shap = explain._import_shap()
    work = explain._tree_work(shap.TreeExplainer(model.named_steps["model"]))
    assert work > 0
    monkeypatch.setattr(explain, "MIN_EXACT_ROWS", 10)

    monkeypatch.setattr(explain, "TREE_SHAP_BUDGET", work * 20)
    cut = explain.explain(model, test, config, **FAST)
    monkeypatch.setattr(explain, "TREE_SHAP_BUDGET", work * 5)
    approximate = explain.explain(model, test, config, **FAST)

    assert (cut["rows"]["shap"], cut["approximate"], cut["notes"]) == (20, False, [])
    assert approximate["rows"]["shap"] == FAST["shap_rows"] and approximate["approximate"] is True
    assert approximate["method"] == "tree"
    assert any("approximate per-path attributions (Saabas)" in n for n in approximate["notes"])
    for result in (cut, approximate):
        assert_informative_first(result)
        assert_no_nan(result)


def test_a_constant_column_and_a_single_class_sample_give_zeros_and_notes_never_nan() -> None:
    model, test, config = fitted("binary", "logistic_regression")
    one_class = test[test["label"] == 1].assign(shade="red")

    result = explain.explain(model, one_class, config, **FAST)

    assert_no_nan(result)
    assert all(v == {"mean": 0.0, "std": 0.0} for v in result["permutation"].values())
    assert any("permutation importance (roc_auc) needs two classes" in n for n in result["notes"])
    assert any("constant in the sampled rows: ['shade']" in n for n in result["notes"])
    # the background rows come from the same sample: a column constant there changes nothing
    assert result["shap"]["shade"] == 0.0
    assert result["shap"]["signal"] > 0


def test_a_model_the_tree_explainer_cannot_read_falls_back_to_the_permutation_explainer() -> None:
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import Pipeline

    _, test, config = fitted("binary", "hist_gradient_boosting")
    train, _ = modeling.split(make_frame("binary"), config)
    features = [c.name for c in config.feature_columns]
    model = Pipeline([("features", modeling.build_preprocessor(modeling.feature_plan(config))),
                      ("model", GaussianNB())]).fit(train[features], modeling.target(train, config))

    result = explain.explain(model, test, config, shap_rows=40, permutation_rows=150, repeats=3)

    assert result["method"] == "permutation" and result["approximate"] is True
    assert result["shap_output"] == "probability"
    assert any("tree explainer failed" in n for n in result["notes"])
    assert result["rows"]["shap"] == 40
    assert_informative_first(result)
    assert_no_nan(result)
    state = np.random.get_state()[1].copy()
    explain.explain(model, test, config, shap_rows=20, permutation_rows=20, repeats=1)
    assert (np.random.get_state()[1] == state).all()  # numpy's global generator left as it was


# -- the permutation explainer is exact for the linear families ----------------------------------
def two_column_frame(kind: str, rows: int = 300, seed: int = 1) -> pd.DataFrame:
    """One numeric and one categorical column, both driving the target, with missing values in
    each (imputed column by column: the pipeline stays additive in its input columns)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    c = rng.choice(["a", "b", "c"], size=rows).astype(object)
    score = 2 * x + 1.0 * (c == "b") - 1.0 * (c == "c") + rng.normal(0, 0.5, rows)
    x[::17] = np.nan
    c[::13] = None  # as ingest writes a missing category
    label = {"binary": (score > 0).astype(float), "multiclass": np.digitize(score, [-1, 1]),
             "regression": score}[kind]
    return pd.DataFrame({"x": x, "c": c, "label": label.astype(float)})


def two_column_config(kind: str, family: str) -> DatasetConfig:
    task = TASKS[kind]
    return DatasetConfig.model_validate({
        "name": f"exact_{kind}", "source_uri": "memory://exact", "task": task, "target": "label",
        "min_rows": 1,
        "columns": [{"name": "x", "type": "numeric"}, {"name": "c", "type": "categorical"},
                    {"name": "label", "type": "integer" if task == "classification" else "numeric"}],
        "training": {"family": family, "hyperparameters": {}, "seed": 42},
    })


@pytest.mark.parametrize(("kind", "family"), [("binary", "logistic_regression"),
                                              ("multiclass", "logistic_regression"),
                                              ("regression", "ridge"), ("regression", "linear")])
def test_permutation_shap_of_a_linear_model_equals_linear_shap_summed_per_input_column(
        kind: str, family: str) -> None:
    config = two_column_config(kind, family)
    frame = two_column_frame(kind)
    model = modeling.train(frame, config)
    shap = explain._import_shap()
    rows, background = frame[["x", "c"]].iloc[:60], frame[["x", "c"]].iloc[100:130]

    values = explain._agnostic_values(shap, model, rows, background, config, 7, pairs=1)

    # shap's own linear explainer on the transformed features, the same background, interventional
    preprocessor, estimator = model.named_steps["features"], model.named_steps["model"]
    masker = shap.maskers.Independent(preprocessor.transform(background), max_samples=len(background))
    linear = explain._per_output(
        shap.LinearExplainer(estimator, masker).shap_values(preprocessor.transform(rows)),
        len(rows), len(preprocessor.get_feature_names_out()))
    owners = explain.input_owners(preprocessor, ["x", "c"])
    assert sorted(set(owners.tolist())) == [0, 1]
    signed = np.stack([linear[:, owners == j].sum(axis=1) for j in (0, 1)], axis=1)  # signed sums
    assert values.shape == signed.shape == (60, 2, 3 if kind == "multiclass" else 1)
    np.testing.assert_allclose(values, signed, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.abs(values).mean(axis=0), np.abs(signed).mean(axis=0), rtol=1e-6)
    assert (np.abs(values).mean(axis=0).max(axis=-1) > 0.1).all()  # both columns matter
    # and explain() reports it as exact SHAP of the model's raw output
    result = explain.explain(model, frame, config, shap_rows=40, permutation_rows=60, repeats=1)
    assert (result["method"], result["approximate"], result["notes"]) == ("permutation", False, [])
    assert result["shap_output"] == ("prediction" if kind == "regression" else "log-odds")


def test_permutation_shap_with_one_pair_is_the_same_whatever_the_seed_for_a_linear_model() -> None:
    model, test, config = fitted("binary", "logistic_regression")
    shap = explain._import_shap()
    features = ["signal", "noise", "group", "shade"]
    rows, background = test[features].iloc[:30], test[features].iloc[100:140]

    first = explain._agnostic_values(shap, model, rows, background, config, 1, pairs=1)
    other = explain._agnostic_values(shap, model, rows, background, config, 2, pairs=1)

    np.testing.assert_allclose(first, other, rtol=1e-9, atol=1e-12)  # orderings do not matter


def test_missing_shap_is_a_config_error_that_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    model, test, config = fitted("regression", "ridge")
    monkeypatch.setitem(sys.modules, "shap", None)  # what `import shap` sees when it is absent

    with pytest.raises(ConfigError, match=r"need the shap package.*pip install shap"):
        explain.explain(model, test, config)


@pytest.mark.parametrize("bad", [{"shap_rows": 0}, {"permutation_rows": 0}, {"repeats": 0}])
def test_sample_sizes_must_be_positive(bad: dict[str, int]) -> None:
    model, test, config = fitted("regression", "ridge")

    with pytest.raises(ValueError, match="at least 1"):
        explain.explain(model, test, config, **bad)


# -- mapping transformed columns back to input columns --------------------------------------------
def test_one_hot_columns_map_to_their_input_even_when_names_are_prefixes_of_each_other() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.DataFrame({"a": ["b_x", "b_y", "z", "z"], "a_b": ["x", "y", "y", "x"],
                          "n": [1.0, 2.0, 3.0, 4.0]})
    transformer = ColumnTransformer(
        [("numeric", "passthrough", ["n"]),
         ("categorical", OneHotEncoder(sparse_output=False), ["a", "a_b"])],
        verbose_feature_names_out=True).fit(frame)
    # names alone are ambiguous: categorical__a_b_x is category "b_x" of a, or "x" of a_b
    assert list(transformer.get_feature_names_out()) == [
        "numeric__n", "categorical__a_b_x", "categorical__a_b_y", "categorical__a_z",
        "categorical__a_b_x", "categorical__a_b_y"]

    owners = explain.input_owners(transformer, ["a", "a_b", "n"])

    assert owners.tolist() == [2, 0, 0, 0, 1, 1]


def test_the_project_preprocessor_maps_every_transformed_column() -> None:
    model, _, config = fitted("multiclass", "hist_gradient_boosting")
    features = [c.name for c in config.feature_columns]

    owners = explain.input_owners(model.named_steps["features"], features)

    assert [features[i] for i in owners] == ["signal", "noise"] + ["group"] * 3 + ["shade"] * 3


# -- plot and ranking -----------------------------------------------------------------------------
def test_summary_plot_is_a_png() -> None:
    import matplotlib.pyplot as plt

    figures = plt.get_fignums()
    png = explain.summary_plot(explained("binary", "hist_gradient_boosting"), "explain test")

    assert png.startswith(PNG) and len(png) > 1000
    assert plt.get_fignums() == figures  # the figure is closed
    assert explain.summary_plot({}, "nothing").startswith(PNG)


def test_importance_ranking_is_normalised_mean_abs_shap() -> None:
    result = explained("regression", "hist_gradient_boosting")

    ranking = explain.importance_ranking(result)

    assert math.isclose(sum(ranking.values()), 1.0)
    assert set(ranking) == set(result["shap"])
    total = sum(result["shap"].values())
    assert all(math.isclose(ranking[c], v / total) for c, v in result["shap"].items())
    assert max(ranking, key=ranking.get) in INFORMATIVE


@pytest.mark.parametrize(("explanation", "expected"), [
    pytest.param(None, {}, id="none"),
    pytest.param({}, {}, id="empty"),
    pytest.param({"shap": {"a": 0.0, "b": 0.0}}, {"a": 0.0, "b": 0.0}, id="all-zero"),
    pytest.param({"shap": {"a": 3.0, "b": 1.0, "c": float("nan")}}, {"a": 0.75, "b": 0.25, "c": 0.0},
                 id="nan-is-unknown"),
])
def test_importance_ranking_of_missing_or_zero_explanations(
        explanation: dict[str, Any] | None, expected: dict[str, float]) -> None:
    assert explain.importance_ranking(explanation) == expected


def test_explain_imports_no_heavy_library_at_module_level() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(explain.__file__).read_text())
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)
           for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert top.isdisjoint({"shap", "sklearn", "matplotlib", "numpy", "pandas", "airflow"})
