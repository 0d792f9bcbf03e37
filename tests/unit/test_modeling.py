"""include/mlops_core/modeling.py: split, features fitted on training rows only, deterministic
training, held-out and per-slice metrics, on small demo frames."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from include.mlops_core import modeling
from include.mlops_core.config import DatasetConfig
from include.mlops_core.errors import ConfigError, DataError
from include.mlops_core.ingest import SOURCE_COLUMN
from tests.unit.helpers import FAST_TRAINING, churn_config, demo_frame, regression_config

CLASSIFICATION_KEYS = {"accuracy", "f1", "roc_auc", "log_loss"}
REGRESSION_KEYS = {"rmse", "mae", "r2"}

FAMILIES = {
    "hist_gradient_boosting": {"max_iter": 25},
    "random_forest": {"n_estimators": 15, "max_depth": 6},
    "logistic_regression": {},
}


def classifier_config(family: str = "hist_gradient_boosting", seed: int = 42,
                      **overrides: Any) -> DatasetConfig:
    config = churn_config(training={"family": family, "seed": seed}, **overrides)
    # the YAML's boosting hyperparameters do not apply to other families: replace, not merge
    training = config.training.model_copy(update={"hyperparameters": FAMILIES[family]})
    return config.model_copy(update={"training": training})


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    data = demo_frame(churn_config(), rows=600)
    data[SOURCE_COLUMN] = "memory://2025-01-01"
    return data


@pytest.fixture(scope="module")
def split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return modeling.split(frame, classifier_config())


@pytest.fixture(scope="module")
def fitted(split: tuple[pd.DataFrame, pd.DataFrame]) -> Any:
    return modeling.train(split[0], classifier_config())


def features(config: DatasetConfig) -> list[str]:
    return [c.name for c in config.feature_columns]


# -- split ------------------------------------------------------------------------------------------
def test_split_is_deterministic_stratified_and_keeps_the_source_only_on_test_rows(
        frame: pd.DataFrame) -> None:
    config = classifier_config()
    train, test = modeling.split(frame, config)
    again_train, again_test = modeling.split(frame, config)

    pd.testing.assert_frame_equal(train, again_train)
    pd.testing.assert_frame_equal(test, again_test)
    assert (len(train), len(test)) == (450, 150)  # test_size 0.25
    # The source file stays with the held-out rows only (for the champion comparison).
    assert SOURCE_COLUMN not in train.columns and SOURCE_COLUMN in test.columns
    by_id = dict(zip(frame["customer_id"], frame[SOURCE_COLUMN].astype(str), strict=True))
    assert [by_id[c] for c in test["customer_id"]] == test[SOURCE_COLUMN].tolist()
    assert set(train["customer_id"]).isdisjoint(test["customer_id"])
    rate = frame["churned"].mean()
    assert abs(train["churned"].mean() - rate) < 0.01
    assert abs(test["churned"].mean() - rate) < 0.01


def test_split_depends_on_the_seed(frame: pd.DataFrame) -> None:
    _, test_a = modeling.split(frame, classifier_config(seed=1))
    _, test_b = modeling.split(frame, classifier_config(seed=2))
    assert set(test_a["customer_id"]) != set(test_b["customer_id"])


def test_split_refuses_a_single_class_target(frame: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="target 'churned' has a single class in the training rows"):
        modeling.split(frame.assign(churned=1.0), classifier_config())


def test_feature_plan_comes_from_the_schema() -> None:
    assert modeling.feature_plan(churn_config()) == {
        "numeric": ["tenure_months", "monthly_charges", "total_charges", "support_calls", "age"],
        "categorical": ["contract", "payment_method", "internet_service", "region"],
    }


# -- training ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", [pytest.param(f, id=f) for f in FAMILIES])
def test_training_is_deterministic_for_a_seed(split: tuple[pd.DataFrame, pd.DataFrame],
                                              family: str) -> None:
    train, test = split
    config = classifier_config(family, seed=7)

    first = modeling.train(train, config).predict_proba(test[features(config)])
    second = modeling.train(train, config).predict_proba(test[features(config)])

    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("family", [pytest.param("hist_gradient_boosting"),
                                    pytest.param("random_forest")])
def test_seed_reaches_the_estimator(split: tuple[pd.DataFrame, pd.DataFrame], family: str) -> None:
    model = modeling.train(split[0], classifier_config(family, seed=123))
    assert model.named_steps["model"].random_state == 123


def test_another_seed_may_give_another_model(split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """Different seeds are allowed to differ; for a bagged forest they do."""
    train, test = split
    x = test[features(classifier_config("random_forest"))]
    a = modeling.train(train, classifier_config("random_forest", seed=1)).predict_proba(x)
    b = modeling.train(train, classifier_config("random_forest", seed=2)).predict_proba(x)
    assert not np.array_equal(a, b)


def test_features_are_fitted_on_training_rows_only(frame: pd.DataFrame) -> None:
    config = classifier_config()
    train = frame[frame["region"] != "west"].reset_index(drop=True)
    test = frame[frame["region"] == "west"].reset_index(drop=True)

    model = modeling.train(train, config)

    transformer = model.named_steps["features"]
    plan = modeling.feature_plan(config)
    encoder = transformer.named_transformers_["categorical"].named_steps["onehotencoder"]
    categories = dict(zip(plan["categorical"], encoder.categories_, strict=True))
    assert set(categories["region"]) == {"north", "south", "east"}  # "west" only in test rows
    imputer = transformer.named_transformers_["numeric"].named_steps["simpleimputer"]
    np.testing.assert_allclose(imputer.statistics_, train[plan["numeric"]].median().to_numpy())
    assert not np.allclose(imputer.statistics_, frame[plan["numeric"]].median().to_numpy())

    # The unseen category is ignored (all-zero one-hot), not an error.
    encoded = pd.DataFrame(transformer.transform(test[features(config)]),
                           columns=transformer.get_feature_names_out())
    region_columns = [c for c in encoded.columns if c.startswith("categorical__region_")]
    assert sorted(region_columns) == ["categorical__region_east", "categorical__region_north",
                                      "categorical__region_south"]
    assert (encoded[region_columns] == 0).all().all()
    proba = model.predict_proba(test[features(config)])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_missing_values_are_imputed(split: tuple[pd.DataFrame, pd.DataFrame], fitted: Any) -> None:
    test = split[1].copy()
    test.loc[:9, ["total_charges", "age"]] = np.nan
    test.loc[:9, "contract"] = None
    proba = fitted.predict_proba(test[features(churn_config())])
    assert not np.isnan(proba).any()


def test_bad_hyperparameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bad hyperparameters for hist_gradient_boosting") as err:
        modeling.build_estimator(churn_config(training={"hyperparameters": {"n_trees": 5}}))
    assert "n_trees" in str(err.value)


def test_integral_float_target_becomes_integer_labels_for_classification(frame: pd.DataFrame) -> None:
    assert frame["churned"].dtype == "float64"  # ingest casts numbers to float
    assert modeling.target(frame, churn_config()).dtype == "int64"
    assert modeling.target(frame, regression_config()).dtype == "float64"


# -- metrics ----------------------------------------------------------------------------------------
def test_classification_metrics(split: tuple[pd.DataFrame, pd.DataFrame], fitted: Any) -> None:
    test = split[1]
    config = churn_config()

    metrics = modeling.metrics(fitted, test, config)

    assert set(metrics) == CLASSIFICATION_KEYS
    assert all(isinstance(v, float) for v in metrics.values())
    predicted = fitted.predict(test[features(config)])
    assert metrics["accuracy"] == pytest.approx((predicted == test["churned"]).mean())
    assert 0.6 < metrics["roc_auc"] <= 1.0  # the demo target is learnable
    assert 0 < metrics["f1"] <= 1 and metrics["log_loss"] > 0


def test_multiclass_metrics() -> None:
    config = churn_config(target="contract", gate={"thresholds": []},
                          training=FAST_TRAINING)
    data = demo_frame(config, rows=400)
    train, test = modeling.split(data, config)
    metrics = modeling.metrics(modeling.train(train, config), test, config)
    assert set(metrics) == CLASSIFICATION_KEYS
    assert not any(math.isnan(v) for v in metrics.values())


@pytest.mark.parametrize(
    ("family", "hyperparameters"),
    [pytest.param("ridge", {"alpha": 1.0}, id="ridge"), pytest.param("linear", {}, id="linear"),
     pytest.param("hist_gradient_boosting", {"max_iter": 25}, id="hist_gradient_boosting"),
     pytest.param("random_forest", {"n_estimators": 15}, id="random_forest")],
)
def test_regression_metrics(frame: pd.DataFrame, family: str, hyperparameters: dict[str, Any]) -> None:
    config = regression_config(training={"family": family, "hyperparameters": hyperparameters})
    train, test = modeling.split(frame, config)

    model = modeling.train(train, config)
    metrics = modeling.metrics(model, test, config)

    assert set(metrics) == REGRESSION_KEYS
    residuals = test["monthly_charges"].to_numpy() - model.predict(test[features(config)])
    assert metrics["rmse"] == pytest.approx(float(np.sqrt(np.mean(residuals ** 2))))
    assert metrics["mae"] == pytest.approx(float(np.mean(np.abs(residuals))))
    assert metrics["rmse"] >= metrics["mae"] > 0
    assert 0.2 < metrics["r2"] <= 1.0  # fiber internet drives charges: learnable


def test_slice_metrics_per_value(split: tuple[pd.DataFrame, pd.DataFrame], fitted: Any) -> None:
    test = split[1].copy()
    test.loc[:9, "region"] = None

    slices = modeling.slice_metrics(fitted, test, churn_config())

    expected = {str(v) for v in test["region"].dropna().unique()} | {"__missing__"}
    assert set(slices) == expected
    assert slices["__missing__"]["n"] == 10
    assert sum(s["n"] for s in slices.values()) == len(test)
    for values in slices.values():
        assert set(values) == CLASSIFICATION_KEYS | {"n"}
    north = test[test["region"] == "north"]
    assert slices["north"] == {"n": float(len(north)),
                               **modeling.metrics(fitted, north, churn_config())}


@pytest.mark.filterwarnings("ignore:Only one class is present in y_true")
def test_single_class_slice_reports_nan_auc_instead_of_failing(
        split: tuple[pd.DataFrame, pd.DataFrame], fitted: Any) -> None:
    test = split[1].copy()
    test.loc[test["region"] == "east", "churned"] = 0.0
    east = modeling.slice_metrics(fitted, test, churn_config())["east"]
    assert math.isnan(east["roc_auc"])
    assert 0 <= east["accuracy"] <= 1 and not math.isnan(east["log_loss"])


def test_regression_slice_metrics(frame: pd.DataFrame) -> None:
    config = regression_config()
    train, test = modeling.split(frame, config)
    slices = modeling.slice_metrics(modeling.train(train, config), test, config)
    assert set(slices) == set(test["region"].unique())
    assert all(set(v) == REGRESSION_KEYS | {"n"} for v in slices.values())


def test_no_slice_column_means_no_slices(split: tuple[pd.DataFrame, pd.DataFrame], fitted: Any) -> None:
    config = churn_config().model_copy(update={"slice_column": None})  # overrides skip None
    assert modeling.slice_metrics(fitted, split[1], config) == {}


# -- artifacts --------------------------------------------------------------------------------------
def test_plot_is_a_png(split: tuple[pd.DataFrame, pd.DataFrame], fitted: Any) -> None:
    png = modeling.plot(fitted, split[1], churn_config())
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_untrusted_types_name_the_boosting_predictor(fitted: Any) -> None:
    types = modeling.untrusted_types(fitted)
    assert "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor" in types
    assert types == sorted(types)


def test_unseen_by_leaves_out_the_champions_training_partitions(frame: pd.DataFrame) -> None:
    from include.mlops_core.pipeline import unseen_by

    test = pd.DataFrame({"x": range(200), SOURCE_COLUMN: ["s3://b/src/date=2025-01-01/part-0.csv"] * 100
                         + ["s3://b/src/date=2025-01-02/part-0.csv"] * 100})
    rows, left_out = unseen_by(test, "date=2025-01-01")
    assert left_out == ["date=2025-01-01"] and rows["x"].tolist() == list(range(100, 200))
    assert unseen_by(test, "date=2024-12-31")[1] == []  # no overlap: every row
    assert unseen_by(test, "")[1] == []
    # Fewer than 50 rows would remain: compare on all rows rather than on noise.
    rows, left_out = unseen_by(test.iloc[:140], "date=2025-01-01")
    assert left_out == [] and len(rows) == 140


# -- xgboost (the GPU-capable family) -------------------------------------------------------------
XGB = {"family": "xgboost", "hyperparameters": {"n_estimators": 30, "max_depth": 4}}


def test_xgboost_trains_deterministically_and_serves_on_cpu(frame: pd.DataFrame) -> None:
    config = churn_config(training=XGB)
    config = config.model_copy(update={"training": config.training.model_copy(
        update={"hyperparameters": XGB["hyperparameters"]})})
    train, test = modeling.split(frame, config)
    first, second = modeling.train(train, config), modeling.train(train, config)
    assert first.named_steps["model"].get_params()["device"] == "cpu"
    assert modeling.metrics(first, test, config) == modeling.metrics(second, test, config)
    assert modeling.metrics(first, test, config)["roc_auc"] > 0.6
    assert "xgboost.sklearn.XGBClassifier" in modeling.untrusted_types(first)


def test_xgboost_asked_for_cuda_without_a_gpu_falls_back_to_cpu(
        frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: XGBoost itself falls back to CPU with a warning; the model is the same."""
    config = churn_config(training=XGB)
    config = config.model_copy(update={"training": config.training.model_copy(
        update={"hyperparameters": XGB["hyperparameters"]})})
    train, test = modeling.split(frame, config)
    cpu = modeling.train(train, config)
    monkeypatch.setenv("MLOPS_TRAINER_DEVICE", "cuda")
    assert modeling.build_estimator(config).get_params()["device"] == "cuda"
    with pytest.warns(UserWarning, match="GPU"):
        cuda = modeling.train(train, config)
    assert cuda.named_steps["model"].get_params()["device"] == "cpu"  # reset for serving
    assert modeling.metrics(cuda, test, config) == modeling.metrics(cpu, test, config)


def test_xgboost_needs_integer_class_labels(frame: pd.DataFrame) -> None:
    config = churn_config(training=XGB)
    labelled = frame.assign(**{config.target: frame[config.target].map({0: "stay", 1: "churn"})})
    train, _ = modeling.split(labelled, config)
    with pytest.raises(DataError, match="needs class labels 0..n-1"):
        modeling.train(train, config)


def test_xgboost_regression() -> None:
    config = regression_config(training={"family": "xgboost",
                                         "hyperparameters": {"n_estimators": 20}})
    data = demo_frame(config, rows=400)
    train, test = modeling.split(data, config)
    model = modeling.train(train, config)
    assert modeling.metrics(model, test, config)["r2"] > 0
