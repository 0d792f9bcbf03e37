"""include/mlops_core/abtest.py (live metrics, the bootstrap interval) and the A/B verdict of
include/mlops_core/gate.py (decide_ab, ab_card, the card's HTML)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm

from include.mlops_core import metrics
from include.mlops_core.abtest import Interval, bootstrap_difference, metric_values, scores
from include.mlops_core.config import DatasetConfig
from include.mlops_core.gate import ABDecision, ab_card, decide_ab, render_card_html
from tests.unit.helpers import churn_config


def classification_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1)
    return {"y": y, "prediction": (score >= 0.5).astype(int), "score": score}


def regression_rows(n: int, seed: int, noise: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.normal(70, 20, n)
    return {"y": y, "prediction": y + rng.normal(0, noise, n), "score": np.full(n, np.nan)}


def accuracy_arm(n: int, correct: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` labelled rows of which exactly ``correct`` are predicted right (order shuffled)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    right = np.zeros(n, dtype=bool)
    right[rng.choice(n, correct, replace=False)] = True
    return {"y": y, "prediction": np.where(right, y, 1 - y), "score": np.full(n, 0.5)}


def _metric(task: str, metric: str, y: Any, pred: Any, score: Any) -> float:
    """One metric of stored predictions, by the path the bootstrap's inner loop takes."""
    y = metrics.labels(y) if task == "classification" else np.asarray(y, dtype=float)
    return metrics.metric(metric, y, scores(task, y, pred, score))


def live(arm: dict[str, np.ndarray]) -> dict[str, float]:
    return metric_values("classification", arm["y"], arm["prediction"], arm["score"])


# -- metric_values ----------------------------------------------------------------------------------
def test_classification_metrics_match_sklearn() -> None:
    rows = classification_rows(500, seed=1)
    y, pred, score = rows["y"], rows["prediction"], rows["score"]

    values = metric_values("classification", y, pred, score)

    assert values == pytest.approx({
        "accuracy": skm.accuracy_score(y, pred), "f1": skm.f1_score(y, pred),
        "roc_auc": skm.roc_auc_score(y, score), "log_loss": skm.log_loss(y, score)})
    assert 0.6 < values["roc_auc"] < 1.0  # the rows carry signal: not a degenerate case


def test_classification_without_scores_has_no_auc_or_log_loss() -> None:
    rows = classification_rows(100, seed=2)
    values = metric_values("classification", rows["y"], rows["prediction"])
    assert values["accuracy"] == pytest.approx(skm.accuracy_score(rows["y"], rows["prediction"]))
    assert math.isnan(values["roc_auc"]) and math.isnan(values["log_loss"])
    nan_scores = metric_values("classification", rows["y"], rows["prediction"],
                               np.full(100, np.nan))
    assert math.isnan(nan_scores["roc_auc"]) and math.isnan(nan_scores["log_loss"])


def test_single_class_labels_have_no_auc() -> None:
    values = metric_values("classification", [1, 1, 1], [1, 0, 1], [0.9, 0.4, 0.8])
    assert values["accuracy"] == pytest.approx(2 / 3)
    assert math.isnan(values["roc_auc"])


def test_regression_metrics_match_sklearn() -> None:
    rows = regression_rows(300, seed=3, noise=5.0)
    y, pred = rows["y"], rows["prediction"]

    values = metric_values("regression", y, pred)

    assert values == pytest.approx({"rmse": math.sqrt(skm.mean_squared_error(y, pred)),
                                    "mae": skm.mean_absolute_error(y, pred),
                                    "r2": skm.r2_score(y, pred)})
    assert 4.0 < values["rmse"] < 6.0


def test_regression_of_one_row_has_no_r2_and_no_rows_no_metrics() -> None:
    one = metric_values("regression", [10.0], [13.0])
    assert one["rmse"] == pytest.approx(3.0) and one["mae"] == pytest.approx(3.0)
    assert math.isnan(one["r2"])
    assert metric_values("regression", [], []) == {}
    assert metric_values("classification", [], [], []) == {}


# -- _metric: rank-based ROC AUC --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("y", "score"),
    [
        pytest.param([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], id="textbook-0.75"),
        pytest.param([0, 1, 0, 1, 1, 0], [0.5, 0.5, 0.5, 0.9, 0.2, 0.1], id="ties-across-classes"),
        pytest.param([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3], id="all-tied-is-0.5"),
        pytest.param([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], id="perfectly-wrong"),
    ],
)
def test_rank_auc_equals_sklearn_on_small_cases(y: list[int], score: list[float]) -> None:
    y_arr, s_arr = np.array(y), np.array(score)
    assert _metric("classification", "roc_auc", y_arr, (s_arr > 0.5).astype(int), s_arr) == \
        pytest.approx(skm.roc_auc_score(y_arr, s_arr), abs=1e-12)


def test_rank_auc_equals_sklearn_with_many_ties() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 2000)
    score = np.round(np.clip(0.2 * y + rng.uniform(0, 0.8, 2000), 0, 1), 1)  # 11 distinct values
    assert len(np.unique(score)) <= 11
    assert _metric("classification", "roc_auc", y, y, score) == \
        pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
    assert math.isnan(_metric("classification", "roc_auc", np.ones(5), np.ones(5), np.arange(5.0)))


def test_other_metrics_go_through_metric_values() -> None:
    rows = regression_rows(50, seed=5, noise=2.0)
    assert _metric("regression", "mae", rows["y"], rows["prediction"], rows["score"]) == \
        pytest.approx(skm.mean_absolute_error(rows["y"], rows["prediction"]))
    assert _metric("classification", "accuracy", np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0]),
                   np.zeros(4)) == 0.5


# -- bootstrap_difference ---------------------------------------------------------------------------
def test_unpaired_accuracy_interval_matches_the_hand_computed_normal_interval() -> None:
    """Champion 600/1000 correct, challenger 700/1000 correct.

    Hand check: the difference is 0.7 - 0.6 = 0.1 and its standard error is
    sqrt(0.6 * 0.4 / 1000 + 0.7 * 0.3 / 1000) = sqrt(0.00024 + 0.00021) = sqrt(0.00045) = 0.021213,
    so the 95 % normal interval is 0.1 ± 1.96 * 0.021213 = 0.1 ± 0.041578 = [0.0584, 0.1416].
    The percentile bootstrap of two independent proportions must land within 0.01 of it."""
    se = math.sqrt(0.6 * 0.4 / 1000 + 0.7 * 0.3 / 1000)
    assert se == pytest.approx(0.021213, abs=1e-6)
    normal_low, normal_high = 0.1 - 1.96 * se, 0.1 + 1.96 * se
    assert (round(normal_low, 4), round(normal_high, 4)) == (0.0584, 0.1416)

    interval = bootstrap_difference("classification", "accuracy", accuracy_arm(1000, 600, seed=1),
                                    accuracy_arm(1000, 700, seed=2), paired=False, seed=0)

    assert interval.champion_value == pytest.approx(0.6)
    assert interval.challenger_value == pytest.approx(0.7)
    assert interval.difference == pytest.approx(0.1)
    assert interval.low == pytest.approx(normal_low, abs=0.01)
    assert interval.high == pytest.approx(normal_high, abs=0.01)
    assert (interval.champion_rows, interval.challenger_rows) == (1000, 1000)
    assert (interval.paired, interval.confidence, interval.resamples) == (False, 0.95, 2000)
    assert interval.significant_better and not interval.significant_worse


def test_a_wider_confidence_gives_a_wider_interval() -> None:
    arms = (accuracy_arm(1000, 600, seed=1), accuracy_arm(1000, 700, seed=2))
    ninety = bootstrap_difference("classification", "accuracy", *arms, paired=False,
                                  confidence=0.90, seed=0)
    ninety_nine = bootstrap_difference("classification", "accuracy", *arms, paired=False,
                                       confidence=0.99, seed=0)
    assert ninety_nine.low < ninety.low < ninety.high < ninety_nine.high


def test_same_seed_gives_the_same_interval() -> None:
    champion, challenger = classification_rows(400, seed=6), classification_rows(400, seed=7)
    first = bootstrap_difference("classification", "roc_auc", champion, challenger, paired=False,
                                 resamples=500, seed=11)
    again = bootstrap_difference("classification", "roc_auc", champion, challenger, paired=False,
                                 resamples=500, seed=11)
    other = bootstrap_difference("classification", "roc_auc", champion, challenger, paired=False,
                                 resamples=500, seed=12)
    assert first == again
    assert (other.low, other.high) != (first.low, first.high)
    assert other.difference == first.difference  # the point estimate does not depend on the seed


@pytest.mark.parametrize("metric", ["accuracy", "roc_auc"])
def test_paired_bootstrap_of_identical_arms_is_exactly_zero(metric: str) -> None:
    rows = classification_rows(200, seed=8)
    interval = bootstrap_difference("classification", metric, rows, dict(rows), paired=True,
                                    resamples=200, seed=1)
    assert (interval.low, interval.high, interval.difference) == (0.0, 0.0, 0.0)
    assert interval.paired
    assert not interval.significant_better and not interval.significant_worse


def test_paired_bootstrap_needs_the_same_rows() -> None:
    with pytest.raises(ValueError, match="same rows"):
        bootstrap_difference("classification", "accuracy", classification_rows(10, seed=1),
                             classification_rows(11, seed=1), paired=True, resamples=200)


def test_paired_is_narrower_than_unpaired_on_shared_rows() -> None:
    """Shadow rows: both models see the same rows, so pairing removes the shared noise."""
    champion = regression_rows(300, seed=9, noise=10.0)
    rng = np.random.default_rng(10)
    # the challenger errs where the champion errs (hard rows are hard for both), a little less
    error = 0.8 * (champion["prediction"] - champion["y"]) + rng.normal(0, 1.0, 300)
    challenger = {**champion, "prediction": champion["y"] + error}
    paired = bootstrap_difference("regression", "mae", champion, challenger, paired=True,
                                  resamples=200, seed=0)
    unpaired = bootstrap_difference("regression", "mae", champion, challenger, paired=False,
                                    resamples=200, seed=0)
    assert paired.difference == unpaired.difference
    assert paired.high - paired.low < unpaired.high - unpaired.low


def test_lower_is_better_metric_is_signed_so_better_is_positive() -> None:
    champion = regression_rows(300, seed=11, noise=10.0)
    challenger = regression_rows(300, seed=12, noise=5.0)  # half the error: better

    interval = bootstrap_difference("regression", "rmse", champion, challenger, paired=False,
                                    resamples=200, seed=0)

    assert interval.champion_value > interval.challenger_value  # a smaller rmse ...
    assert interval.difference == pytest.approx(interval.champion_value - interval.challenger_value)
    assert interval.difference > 0  # ... is a positive improvement
    assert interval.low > 0 and interval.significant_better
    swapped = bootstrap_difference("regression", "rmse", challenger, champion, paired=False,
                                   resamples=200, seed=0)
    assert swapped.difference == pytest.approx(-interval.difference)
    assert swapped.significant_worse


def test_an_undefined_metric_gives_a_nan_interval() -> None:
    only_positives = {"y": np.ones(50, dtype=int), "prediction": np.ones(50, dtype=int),
                      "score": np.linspace(0, 1, 50)}
    interval = bootstrap_difference("classification", "roc_auc", only_positives,
                                    classification_rows(50, seed=1), paired=False, resamples=200)
    assert math.isnan(interval.low) and math.isnan(interval.high)
    assert not interval.significant_better and not interval.significant_worse


def test_interval_describe_and_dict() -> None:
    interval = Interval(metric="roc_auc", paired=False, champion_value=0.8, challenger_value=0.85,
                        difference=0.05, low=0.01, high=0.09, confidence=0.95, resamples=2000,
                        champion_rows=800, challenger_rows=200)
    assert interval.describe() == (
        "roc_auc: challenger 0.8500 vs champion 0.8000 on 200 vs 800 rows, improvement +0.0500, "
        "95% unpaired bootstrap interval (2000 resamples) [+0.0100, +0.0900]")
    assert json.loads(json.dumps(interval.as_dict()))["low"] == 0.01


# -- decide_ab --------------------------------------------------------------------------------------
LIVE_GOOD = {"accuracy": 0.80, "f1": 0.60, "roc_auc": 0.85, "log_loss": 0.40}
LIVE_CHAMPION = {"accuracy": 0.78, "f1": 0.55, "roc_auc": 0.80, "log_loss": 0.45}
ROWS = {"champion": 2400, "challenger": 600}


def interval(low: float, high: float, champion: float = 0.80, challenger: float = 0.85) -> Interval:
    return Interval(metric="roc_auc", paired=False, champion_value=champion,
                    challenger_value=challenger, difference=challenger - champion, low=low,
                    high=high, confidence=0.95, resamples=2000, champion_rows=ROWS["champion"],
                    challenger_rows=ROWS["challenger"])


def ab(config: DatasetConfig, challenger: dict[str, float], test: Interval | None,
       champion: dict[str, float] = LIVE_CHAMPION) -> ABDecision:
    return decide_ab(config, challenger=challenger, champion={"version": "3", "metrics": champion},
                     interval=test, rows=ROWS)


def outcomes(decision: ABDecision) -> dict[str, bool]:
    return {c.name: c.passed for c in decision.decision.checks}


CHECKS = ["threshold roc_auc >= 0.7", "threshold accuracy >= 0.65", "champion comparison",
          "significance"]


def test_without_an_interval_the_verdict_is_keep() -> None:
    outcome = ab(churn_config(), LIVE_GOOD, None)

    assert outcome.verdict == "keep"
    assert not outcome.decision.approved
    assert outcome.interval is None
    significance = outcome.decision.checks[-1]
    assert significance.name == "significance" and not significance.passed
    assert "not enough labelled rows" in significance.detail
    assert "champion 2400, challenger 600, need 200 per arm" in significance.detail


def test_a_clearly_better_challenger_is_promoted() -> None:
    test = interval(0.02, 0.08)
    outcome = ab(churn_config(), LIVE_GOOD, test)

    assert outcome.verdict == "promote"
    assert outcome.decision.approved
    assert outcome.decision.reasons[0] == "PASS threshold roc_auc >= 0.7: observed 0.8500"
    assert outcomes(outcome) == dict.fromkeys(CHECKS, True)
    assert all(r.startswith("PASS ") for r in outcome.decision.reasons)
    assert test.describe() in outcome.decision.reasons[-1]
    assert outcome.interval == test.as_dict()
    assert outcome.log_line("churn_demo", "4").startswith(
        "A/B decision for churn_demo challenger v4: PROMOTE: PASS threshold")


def test_a_significantly_worse_challenger_is_rejected() -> None:
    worse = {**LIVE_GOOD, "roc_auc": 0.74}
    outcome = ab(churn_config(), worse, interval(-0.10, -0.02, challenger=0.74))

    assert outcome.verdict == "reject"
    assert not outcome.decision.approved
    assert outcomes(outcome) == {**dict.fromkeys(CHECKS, True), "champion comparison": False,
                                 "significance": False}


@pytest.mark.parametrize(
    ("challenger", "low", "high"),
    [
        pytest.param({**LIVE_GOOD, "roc_auc": 0.81}, -0.01, 0.03, id="slightly-better"),
        pytest.param({**LIVE_GOOD, "roc_auc": 0.79}, -0.03, 0.01, id="slightly-worse"),
        pytest.param({**LIVE_GOOD, "roc_auc": 0.80}, 0.0, 0.02, id="lower-bound-exactly-zero"),
    ],
)
def test_an_interval_overlapping_zero_keeps_both(challenger: dict[str, float], low: float,
                                                 high: float) -> None:
    outcome = ab(churn_config(), challenger, interval(low, high, challenger=challenger["roc_auc"]))
    assert outcome.verdict == "keep"
    assert not outcome.decision.approved
    assert not outcomes(outcome)["significance"]


def test_a_failed_threshold_rejects_even_a_significantly_better_challenger() -> None:
    below = {**LIVE_GOOD, "accuracy": 0.60}
    outcome = ab(churn_config(), below, interval(0.02, 0.08),
                 champion={**LIVE_CHAMPION, "accuracy": 0.55})

    assert outcome.verdict == "reject"
    assert outcomes(outcome) == {**dict.fromkeys(CHECKS, True),
                                 "threshold accuracy >= 0.65": False}
    assert "FAIL threshold accuracy >= 0.65: observed 0.6000" in outcome.decision.reasons


def test_a_failed_threshold_without_enough_rows_still_waits() -> None:
    """Without an interval nothing is decided yet: keep, whatever the early metrics say."""
    outcome = ab(churn_config(), {**LIVE_GOOD, "accuracy": 0.5}, None)
    assert outcome.verdict == "keep"


def test_the_lower_bound_must_also_clear_the_champion_margin() -> None:
    config = churn_config(gate={"champion_margin": 0.03})
    assert ab(config, LIVE_GOOD, interval(0.02, 0.08)).verdict == "keep"
    assert ab(config, LIVE_GOOD, interval(0.03, 0.08)).verdict == "promote"


def test_decide_ab_end_to_end_with_a_bootstrap() -> None:
    """A real interval from labelled rows: the better arm is promoted."""
    champion, challenger = accuracy_arm(1000, 600, seed=1), accuracy_arm(1000, 700, seed=2)
    config = churn_config(gate={"thresholds": ["accuracy >= 0.65"], "champion_metric": "accuracy"})
    test = bootstrap_difference("classification", "accuracy", champion, challenger, paired=False,
                                resamples=500, seed=config.training.seed)
    outcome = decide_ab(config, challenger=live(challenger),
                        champion={"version": "3", "metrics": live(champion)},
                        interval=test, rows={"champion": 1000, "challenger": 1000})
    assert outcome.verdict == "promote", outcome.decision.reasons
    reversed_outcome = decide_ab(
        config, challenger=live(champion), champion={"version": "3", "metrics": live(challenger)},
        interval=bootstrap_difference("classification", "accuracy", challenger, champion,
                                      paired=False, resamples=500, seed=0),
        rows={"champion": 1000, "challenger": 1000})
    assert reversed_outcome.verdict == "reject", reversed_outcome.decision.reasons


# -- the card ---------------------------------------------------------------------------------------
def card_for(outcome: ABDecision, config: DatasetConfig, challenger: dict[str, float]) -> dict[str, Any]:
    return ab_card(config=config, outcome=outcome,
                   live={"challenger": challenger, "champion": LIVE_CHAMPION}, counts=ROWS,
                   champion="3", challenger="4", context={"dag_run_id": "scheduled__2025-01-05"})


def test_ab_card_and_html_show_the_verdict_and_the_test() -> None:
    config = churn_config(rollout={"mode": "canary"})
    test = interval(0.02, 0.08)
    outcome = ab(config, LIVE_GOOD, test)
    card = card_for(outcome, config, LIVE_GOOD)

    assert json.loads(json.dumps(card)) == card
    assert card["kind"] == "A/B (canary)"
    assert card["verdict"] == "promote"
    assert card["statistics"] == test.as_dict()
    assert card["challenger"] == {"version": "4", "metrics": LIVE_GOOD, "labelled_rows": 600}
    assert card["champion"]["labelled_rows"] == 2400
    assert card["rollout_config"]["mode"] == "canary"

    html = render_card_html(card)
    assert "PROMOTE" in html
    assert "<h2>Significance test</h2>" in html
    assert "<tr><td>low</td><td>0.02</td></tr>" in html
    assert "<td>roc_auc</td><td>0.8500</td><td>0.8000</td>" in html
    assert "scheduled__2025-01-05" in html
    assert "#1a7f37" in html  # approved: green


def test_card_of_a_keep_without_enough_rows_has_no_test_section() -> None:
    config = churn_config(rollout={"mode": "shadow"})
    outcome = ab(config, LIVE_GOOD, None)
    html = render_card_html(card_for(outcome, config, LIVE_GOOD))
    assert "KEEP" in html and "PROMOTE" not in html
    assert "Significance test" not in html
    assert "not enough labelled rows" in html


def test_card_of_a_reject_says_reject() -> None:
    config = churn_config(rollout={"mode": "shadow"})
    outcome = ab(config, {**LIVE_GOOD, "accuracy": 0.5}, interval(0.02, 0.08))
    html = render_card_html(card_for(outcome, config, {**LIVE_GOOD, "accuracy": 0.5}))
    assert "REJECT" in html and "Significance test" in html
    assert "#cf222e" in html


@pytest.mark.parametrize("metric", ["accuracy", "f1", "roc_auc", "log_loss"])
def test_fast_classification_metrics_equal_sklearn(metric: str) -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    score = np.clip(0.5 * y + rng.uniform(0, 0.6, 500), 0, 1)
    pred = (score > 0.5).astype(int)
    expected = metric_values("classification", y, pred, score)[metric]
    assert _metric("classification", metric, y, pred, score) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("metric", ["rmse", "mae", "r2"])
def test_fast_regression_metrics_equal_sklearn(metric: str) -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(50, 10, 300)
    pred = y + rng.normal(0, 4, 300)
    expected = metric_values("regression", y, pred)[metric]
    assert _metric("regression", metric, y, pred, np.full(300, np.nan)) == \
        pytest.approx(expected, abs=1e-9)


def test_an_undecided_trial_ends_in_a_rejection_after_max_trial_days() -> None:
    config = churn_config(rollout={"mode": "canary", "max_trial_days": 14})
    live = {"roc_auc": 0.80, "accuracy": 0.75}
    undecided = Interval(metric="roc_auc", paired=False, champion_value=0.80,
                         challenger_value=0.80, difference=0.0, low=-0.02, high=0.02,
                         confidence=0.95, resamples=400, champion_rows=500, challenger_rows=500)
    kwargs = {"challenger": live, "champion": {"version": "1", "metrics": live},
              "interval": undecided, "rows": {"champion": 500, "challenger": 500}}
    assert decide_ab(config, **kwargs, trial_days=14).verdict == "keep"
    late = decide_ab(config, **kwargs, trial_days=15)
    assert late.verdict == "reject"
    assert "FAIL trial length: 15 days on trial without a significant result, more than " \
           "rollout.max_trial_days=14" in late.decision.reasons
    too_few = decide_ab(config, **{**kwargs, "interval": None}, trial_days=30)
    assert too_few.verdict == "reject"


def test_require_significance_does_not_block_an_ab_promotion() -> None:
    """The A/B decision applies its own interval; the training gate's paired test (which live
    metrics have none of) must not be required again, or no challenger could ever win."""
    config = churn_config(rollout={"mode": "shadow"}, gate={"require_significance": True})
    outcome = ab(config, LIVE_GOOD, interval(0.05, 0.15))
    assert outcome.verdict == "promote", outcome.decision.reasons
    assert [c.name for c in outcome.decision.checks].count("significance") == 1
