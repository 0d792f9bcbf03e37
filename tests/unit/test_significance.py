"""include/mlops_core/significance.py (McNemar, DeLong, the paired bootstrap) and the gate's
``require_significance`` (include/mlops_core/gate.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn import metrics as skm

from include.mlops_core import metrics as m
from include.mlops_core import significance
from include.mlops_core.gate import decide
from include.mlops_core.policy import loosened
from tests.unit.helpers import churn_config


def binary_models(n: int, *, seed: int, champion_signal: float, challenger_signal: float
                  ) -> tuple[np.ndarray, m.Scores, m.Scores]:
    """Labels and two correlated binary classifiers (they share most of their noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    shared = rng.normal(0, 1, n)

    def scores(signal: float) -> m.Scores:
        logit = signal * (2 * y - 1) + shared + 0.5 * rng.normal(0, 1, n)
        p = 1 / (1 + np.exp(-logit))
        return m.Scores((p >= 0.5).astype(int), p, [0, 1])

    return y, scores(champion_signal), scores(challenger_signal)


# -- McNemar ----------------------------------------------------------------------------------------
def test_mcnemar_counts_the_discordant_rows_and_matches_the_exact_binomial_test() -> None:
    y = np.array([1] * 100)
    champion = np.array([1] * 70 + [0] * 30)           # right on the first 70
    challenger = np.array([1] * 60 + [0] * 10 + [1] * 25 + [0] * 5)  # right on 60 + 25

    test = significance.mcnemar(y, champion, challenger, confidence=0.95)

    assert test.details == {"only_champion_right": 10, "only_challenger_right": 25}
    assert test.champion_value == pytest.approx(0.70) and test.challenger_value == pytest.approx(0.85)
    assert test.difference == pytest.approx(0.15)
    assert test.p_value == pytest.approx(binomtest(25, 35, 0.5).pvalue)
    assert 0 < test.low < 0.15 < test.high  # significant, and the interval holds the estimate
    assert test.test == "mcnemar" and test.paired


def test_mcnemar_of_the_same_predictions_is_no_evidence() -> None:
    y, champion, _ = binary_models(500, seed=1, champion_signal=1, challenger_signal=1)
    test = significance.mcnemar(y, champion.prediction, champion.prediction)
    assert test.difference == 0 and test.p_value == 1.0 and test.low < 0 < test.high


# -- DeLong -----------------------------------------------------------------------------------------
def test_delong_aucs_equal_sklearn_and_its_error_matches_the_bootstrap() -> None:
    y, champion, challenger = binary_models(3000, seed=2, champion_signal=0.6,
                                            challenger_signal=0.8)

    test = significance.delong(y, champion, challenger)

    assert test.champion_value == pytest.approx(skm.roc_auc_score(y, champion.proba[:, 1]))
    assert test.challenger_value == pytest.approx(skm.roc_auc_score(y, challenger.proba[:, 1]))
    boot = significance.bootstrap("classification", "roc_auc", (y, champion), (y, challenger),
                                  paired=True, resamples=1000, seed=3)
    delong_width = test.high - test.low
    assert delong_width == pytest.approx(boot.high - boot.low, rel=0.15)
    assert test.low > 0 and test.p_value < 0.01


def test_delong_on_a_textbook_case() -> None:
    """Hand-computed: AUCs 0.75 and 1.0 on four rows; the placement-value variance is zero
    for the perfect model, so the difference's variance is the first model's alone."""
    y = np.array([0, 0, 1, 1])
    first = m.Scores(np.array([0, 0, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8]), [0, 1])
    second = m.Scores(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.7, 0.8]), [0, 1])
    test = significance.delong(y, first, second)
    # V10 of the first: positives 0.35 -> 0.5, 0.8 -> 1.0; V01: negatives 0.1 -> 1.0, 0.4 -> 0.5
    expected_var = np.var([0.5, 1.0], ddof=1) / 2 + np.var([1.0, 0.5], ddof=1) / 2
    assert test.champion_value == 0.75 and test.challenger_value == 1.0
    assert test.details["standard_error"] == pytest.approx(math.sqrt(expected_var))


def test_delong_with_one_class_is_undefined_not_an_error() -> None:
    y = np.ones(10, dtype=int)
    scores = m.Scores(np.ones(10, dtype=int), np.linspace(0.1, 0.9, 10), [0, 1])
    test = significance.delong(y, scores, scores)
    assert math.isnan(test.low) and test.p_value is None


@pytest.mark.parametrize("method", ["mcnemar", "delong"])
def test_under_the_null_the_interval_excludes_zero_about_five_percent_of_the_time(method: str
                                                                                 ) -> None:
    """Two equally good models: a 95 % interval must not call one better much more than 5 %
    of the time (else noise gets promoted)."""
    rejections = 0
    runs = 300
    for seed in range(runs):
        y, champion, challenger = binary_models(400, seed=seed, champion_signal=0.7,
                                                challenger_signal=0.7)
        test = significance.paired_test("classification",
                                        "accuracy" if method == "mcnemar" else "roc_auc",
                                        y, champion, challenger, method=method)
        rejections += test.low > 0 or test.high < 0
    assert 0 < rejections / runs < 0.09  # calibrated: about 5 %, neither never nor often


# -- the paired bootstrap, and which test applies ---------------------------------------------------
def test_paired_bootstrap_of_multiclass_roc_auc() -> None:
    rng = np.random.default_rng(5)
    n, k = 600, 3
    y = rng.integers(0, k, n)

    def model(signal: float) -> m.Scores:
        raw = rng.uniform(0, 1, (n, k))
        raw[np.arange(n), y] += signal
        proba = raw / raw.sum(axis=1, keepdims=True)
        return m.Scores(proba.argmax(axis=1), proba, [0, 1, 2])

    weak, strong = model(0.2), model(1.0)
    test = significance.paired_test("classification", "roc_auc", y, weak, strong)
    assert test.test == "bootstrap" and test.paired
    assert test.low > 0.1
    with pytest.raises(ValueError, match="binary ROC AUC"):
        significance.paired_test("classification", "roc_auc", y, weak, strong, method="delong")


def test_choose_picks_the_test_and_refuses_one_that_cannot_apply() -> None:
    assert significance.choose("accuracy", [0, 1]) == "mcnemar"
    assert significance.choose("roc_auc", [0, 1]) == "delong"
    assert significance.choose("roc_auc", [0, 1, 2]) == "bootstrap"
    assert significance.choose("rmse", None) == "bootstrap"
    assert significance.choose("accuracy", [0, 1], "bootstrap") == "bootstrap"
    with pytest.raises(ValueError, match="McNemar"):
        significance.choose("f1", [0, 1], "mcnemar")


def test_a_paired_test_needs_the_same_rows() -> None:
    y, champion, challenger = binary_models(50, seed=1, champion_signal=1, challenger_signal=1)
    with pytest.raises(ValueError, match="same 50 rows"):
        significance.paired_test("classification", "accuracy", y, champion, challenger[:40])


def test_regression_bootstrap_is_signed_so_better_is_positive() -> None:
    rng = np.random.default_rng(6)
    y = rng.normal(50, 10, 400)
    worse, better = m.Scores(y + rng.normal(0, 8, 400)), m.Scores(y + rng.normal(0, 2, 400))
    test = significance.paired_test("regression", "rmse", y, worse, better, resamples=500)
    assert test.difference > 0 and test.low > 0
    assert "paired bootstrap" in test.describe()


# -- the gate ---------------------------------------------------------------------------------------
def _champion(test: significance.Interval, metric_value: float) -> dict:
    return {"version": "1", "metrics": {"roc_auc": metric_value},
            "significance": {**test.as_dict(), "description": test.describe()}}


def test_a_challenger_better_by_noise_is_refused_only_under_require_significance() -> None:
    y, champion, challenger = binary_models(300, seed=11, champion_signal=0.7,
                                            challenger_signal=0.72)
    test = significance.paired_test("classification", "roc_auc", y, champion, challenger)
    assert 0 < test.difference and test.low < 0  # better on these rows, but by noise
    challenger_metrics = {"roc_auc": test.challenger_value, "accuracy": 0.7}
    plain = churn_config()
    strict = churn_config(gate={"require_significance": True})

    assert decide(plain, challenger_metrics, _champion(test, test.champion_value)).approved
    refused = decide(strict, challenger_metrics, _champion(test, test.champion_value))
    assert not refused.approved
    failed = [c for c in refused.checks if not c.passed]
    assert [c.name for c in failed] == ["significance"]
    assert "DeLong" in failed[0].detail and "require_significance" in failed[0].detail


def test_a_clearly_better_challenger_passes_require_significance_unless_the_margin_is_higher() -> None:
    y, champion, challenger = binary_models(3000, seed=12, champion_signal=0.5,
                                            challenger_signal=1.0)
    test = significance.paired_test("classification", "roc_auc", y, champion, challenger)
    metrics = {"roc_auc": test.challenger_value, "accuracy": 0.8}
    assert decide(churn_config(gate={"require_significance": True}), metrics,
                  _champion(test, test.champion_value)).approved
    high_margin = churn_config(gate={"require_significance": True,
                                     "champion_margin": test.low + 0.001})
    decision = decide(high_margin, {**metrics, "roc_auc": test.challenger_value + 1},
                      _champion(test, test.champion_value))
    assert [c.name for c in decision.checks if not c.passed] == ["significance"]


def test_require_significance_without_a_test_fails_and_says_why() -> None:
    config = churn_config(gate={"require_significance": True})
    decision = decide(config, {"roc_auc": 0.9, "accuracy": 0.8},
                      {"version": "1", "metrics": {"roc_auc": 0.8},
                       "significance": {"metric": "roc_auc", "error": "DeLong: multi-class"}})
    check = [c for c in decision.checks if c.name == "significance"][0]
    assert not check.passed and "DeLong: multi-class" in check.detail
    first = decide(config, {"roc_auc": 0.9, "accuracy": 0.8}, None)
    assert first.approved  # no champion yet: nothing to compare with


def test_turning_significance_off_or_down_is_a_loosening() -> None:
    base = churn_config(gate={"require_significance": True, "significance_confidence": 0.95})
    assert loosened(base, churn_config(gate={"require_significance": False})) == [
        "require_significance turned off"]
    assert loosened(base, churn_config(gate={"require_significance": True,
                                             "significance_confidence": 0.8})) == [
        "significance confidence 0.95 lowered to 0.8"]
    assert loosened(base, churn_config(gate={"require_significance": True,
                                             "significance_confidence": 0.99})) == []
    assert loosened(churn_config(), base) == []  # turning it on tightens


def test_a_test_that_cannot_apply_to_the_metric_is_a_config_error() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="mcnemar compares accuracy"):
        churn_config(gate={"significance_test": "mcnemar"})
    assert churn_config(gate={"significance_test": "mcnemar",
                              "champion_metric": "accuracy"}).gate.significance_test == "mcnemar"


def test_the_promotion_card_shows_the_interval_and_the_test() -> None:
    from include.mlops_core.gate import promotion_card, render_card_html

    y, champion, challenger = binary_models(500, seed=13, champion_signal=0.6,
                                            challenger_signal=0.9)
    test = significance.paired_test("classification", "roc_auc", y, champion, challenger)
    config = churn_config(gate={"require_significance": True})
    champ = _champion(test, test.champion_value)
    metrics = {"roc_auc": test.challenger_value, "accuracy": 0.8}
    card = promotion_card(config=config, decision=decide(config, metrics, champ),
                          challenger={"metrics": metrics}, champion=champ, context={})

    html = render_card_html(card)

    assert "Significance test" in html and test.describe() in html
    assert f"{test.low}" in html and "delong" in html
