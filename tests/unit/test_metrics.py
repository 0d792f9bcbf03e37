"""include/mlops_core/metrics.py: every metric equals scikit-learn's on random data (property tests),
and multi-class ROC AUC is one-vs-rest, macro-averaged and never NaN when two classes occur."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from include.mlops_core import metrics as m

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def classified(draw: st.DrawFn, *, min_classes: int = 2, max_classes: int = 5,
               all_present: bool = False) -> tuple[np.ndarray, m.Scores]:
    """Random labels and a random probabilistic classifier's output on them (ties included:
    probabilities are drawn from a coarse grid)."""
    k = draw(st.integers(min_classes, max_classes))
    n = draw(st.integers(max(k, 2) if all_present else 2, 120))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    classes = sorted(draw(st.sampled_from([list(range(k)), [f"c{i}" for i in range(k)],
                                           list(range(10, 10 + 3 * k, 3))])))
    y_idx = rng.integers(0, k, n)
    if all_present:
        y_idx[:k] = np.arange(k)
    raw = rng.integers(1, draw(st.sampled_from([3, 10, 1000])), (n, k)).astype(float)
    signal = draw(st.floats(0, 3))
    raw[np.arange(n), y_idx] += signal * raw.mean()
    proba = raw / raw.sum(axis=1, keepdims=True)
    y = np.asarray(classes, dtype=object)[y_idx].astype(np.asarray(classes).dtype)
    pred = np.asarray(classes, dtype=object)[proba.argmax(axis=1)].astype(y.dtype)
    return y, m.Scores(pred, proba, classes)


@PROPERTY
@given(classified())
def test_accuracy_equals_sklearn(case: tuple[np.ndarray, m.Scores]) -> None:
    y, scores = case
    assert m.classification(y, scores)["accuracy"] == \
        pytest.approx(skm.accuracy_score(y, scores.prediction), abs=1e-12)


@PROPERTY
@given(classified())
def test_f1_equals_sklearn(case: tuple[np.ndarray, m.Scores]) -> None:
    y, scores = case
    present = set(y.tolist()) | set(scores.prediction.tolist())
    if len(scores.classes) == 2:
        expected = skm.f1_score(y, scores.prediction, pos_label=scores.classes[1],
                                average="binary", zero_division=0,
                                labels=scores.classes)
    else:
        expected = skm.f1_score(y, scores.prediction, average="macro", zero_division=0)
    assert present  # the strategy always labels rows
    assert m.classification(y, scores)["f1"] == pytest.approx(expected, abs=1e-12)


@PROPERTY
@given(classified(all_present=True))
def test_roc_auc_equals_sklearn_when_every_class_occurs(case: tuple[np.ndarray, m.Scores]) -> None:
    y, scores = case
    if len(scores.classes) == 2:
        expected = skm.roc_auc_score(y == scores.classes[1], scores.proba[:, 1])
    else:
        expected = skm.roc_auc_score(y, scores.proba, multi_class="ovr", average="macro",
                                     labels=scores.classes)
    assert m.classification(y, scores)["roc_auc"] == pytest.approx(expected, abs=1e-9)


@PROPERTY
@given(classified(min_classes=3))
def test_multiclass_roc_auc_averages_the_classes_that_occur(case: tuple[np.ndarray, m.Scores]
                                                            ) -> None:
    """Where scikit-learn raises (a class absent from the labels), the metric is the macro
    average of scikit-learn's one-vs-rest AUC over the classes that occur; never NaN when two
    or more classes occur."""
    y, scores = case
    per_class = [skm.roc_auc_score(y == c, scores.proba[:, j])
                 for j, c in enumerate(scores.classes) if 0 < np.sum(y == c) < len(y)]
    value = m.classification(y, scores)["roc_auc"]
    if per_class:
        assert value == pytest.approx(float(np.mean(per_class)), abs=1e-9)
    else:
        assert math.isnan(value)
        assert len(set(y.tolist())) == 1


@PROPERTY
@given(classified())
def test_log_loss_equals_sklearn(case: tuple[np.ndarray, m.Scores]) -> None:
    y, scores = case
    expected = skm.log_loss(y, scores.proba, labels=scores.classes)
    assert m.classification(y, scores)["log_loss"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


@st.composite
def regressed(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(2, 150))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e4]))
    y = rng.normal(0, scale, n)
    if draw(st.booleans()):
        y = np.round(y)  # ties, possibly a constant target
    pred = y + rng.normal(0, draw(st.floats(0, 2)) * scale, n)
    return y, pred


@PROPERTY
@given(regressed())
def test_regression_metrics_equal_sklearn(case: tuple[np.ndarray, np.ndarray]) -> None:
    y, pred = case
    values = m.compute("regression", y, m.Scores(pred))
    assert values["rmse"] == pytest.approx(skm.root_mean_squared_error(y, pred), rel=1e-9, abs=1e-12)
    assert values["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-9, abs=1e-12)
    assert values["r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-9, abs=1e-9)


@PROPERTY
@given(classified())
def test_one_metric_equals_the_full_set(case: tuple[np.ndarray, m.Scores]) -> None:
    """The bootstrap's single-metric path and the full set agree."""
    y, scores = case
    full = m.classification(y, scores)
    for name, value in full.items():
        single = m.metric(name, m.labels(y), scores)
        assert (math.isnan(single) and math.isnan(value)) or single == pytest.approx(value)


# -- cases worth naming -----------------------------------------------------------------------------
def test_a_fitted_multiclass_model_has_a_roc_auc_on_a_slice_missing_a_class() -> None:
    """The monitoring case that read NaN: a 3-class model, a day whose labels hold two classes."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 2))
    y = np.where(x[:, 0] > 0.5, 2, np.where(x[:, 1] > 0, 1, 0))
    model = LogisticRegression(max_iter=500).fit(x, y)
    day = y != 2
    scores = m.scores_from_model(model, x[day])

    values = m.classification(y[day], scores)

    assert not math.isnan(values["roc_auc"]) and values["roc_auc"] > 0.8
    with pytest.warns(UndefinedMetricWarning):
        sklearn_value = skm.roc_auc_score(y[day], scores.proba, multi_class="ovr", labels=[0, 1, 2])
    assert math.isnan(sklearn_value)  # what scikit-learn gives: the floor would read "below"


def test_labels_read_as_floats_compare_with_integer_classes() -> None:
    scores = m.Scores(np.array([0, 1, 1]), np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]]), [0, 1])
    values = m.classification(np.array([0.0, 1.0, 0.0]), scores)
    assert values["accuracy"] == pytest.approx(2 / 3)
    assert values["roc_auc"] == pytest.approx(1.0)


def test_a_binary_positive_score_is_expanded_to_two_columns() -> None:
    scores = m.Scores(np.array([1, 0]), np.array([0.9, 0.2]), [0, 1])
    np.testing.assert_allclose(scores.proba, [[0.1, 0.9], [0.8, 0.2]])
    with pytest.raises(ValueError, match="classes"):
        m.Scores(np.array([1]), np.array([[0.2, 0.3, 0.5]]), [0, 1])


def test_undefined_cases_are_nan_or_empty() -> None:
    one_class = m.classification(np.array([1, 1]), m.Scores(np.array([1, 0]),
                                                            np.array([0.9, 0.4]), [0, 1]))
    assert math.isnan(one_class["roc_auc"]) and one_class["accuracy"] == 0.5
    no_proba = m.classification(np.array([0, 1]), m.Scores(np.array([0, 0])))
    assert math.isnan(no_proba["roc_auc"]) and math.isnan(no_proba["log_loss"])
    assert m.compute("regression", [], m.Scores([])) == {}
    assert math.isnan(m.compute("regression", [3.0], m.Scores([2.0]))["r2"])
    with pytest.raises(ValueError, match="unknown metric"):
        m.metric("auc", np.array([1]), m.Scores(np.array([1])))
