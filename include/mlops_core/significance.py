"""Is the challenger better than the champion, or only lucky? Tests of ``challenger - champion``.

Every test returns an :class:`Interval` of the difference in one metric, signed so that a
positive difference means "challenger better" (for RMSE, log loss and MAE the sign is flipped),
at a two-sided confidence level. A gate that requires significance promotes only when the
interval's lower bound is above the margin.

Paired tests (both models scored the same rows: the training gate's held-out rows, a shadow
deployment's rows) remove the row-to-row noise both models share:

- ``mcnemar`` (accuracy): the rows exactly one of the two models gets right decide it. The
  p-value is McNemar's exact test (a binomial test on those discordant rows); the interval is
  the Agresti-Min adjusted Wald interval of the paired difference in accuracy.
- ``delong`` (ROC AUC, binary): DeLong's variance of two correlated AUCs from their placement
  values (the fast algorithm of Sun and Xu, 2014); a normal interval and a two-sided p-value.
- ``bootstrap`` (any metric, multi-class ROC AUC included): a seeded percentile bootstrap; rows
  are resampled jointly when paired, each arm on its own when not (a canary's arms hold
  different rows). Reproducible: the same rows and seed give the same interval.

``method="auto"`` picks McNemar for accuracy, DeLong for a binary ROC AUC and the bootstrap
otherwise. See docs/monitoring.md#significance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

from include.mlops_core import metrics as m
from include.mlops_core.config import HIGHER_IS_BETTER

if TYPE_CHECKING:
    import numpy as np

Method = Literal["auto", "bootstrap", "mcnemar", "delong"]
METHODS = ("auto", "bootstrap", "mcnemar", "delong")


@dataclass(frozen=True)
class Interval:
    """Interval of ``challenger - champion`` on ``metric`` (positive = challenger better)."""

    metric: str
    paired: bool
    champion_value: float
    challenger_value: float
    difference: float
    low: float
    high: float
    confidence: float
    resamples: int
    champion_rows: int
    challenger_rows: int
    test: str = "bootstrap"
    p_value: float | None = None  # two-sided, where the test has one (McNemar, DeLong)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def significant_better(self) -> bool:
        return self.low > 0

    @property
    def significant_worse(self) -> bool:
        return self.high < 0

    def describe(self) -> str:
        kind = "paired" if self.paired else "unpaired"
        name = {"bootstrap": f"{kind} bootstrap interval ({self.resamples} resamples)",
                "mcnemar": "McNemar test, Agresti-Min interval",
                "delong": "DeLong test"}.get(self.test, self.test)
        p = f", p = {self.p_value:.3g}" if self.p_value is not None else ""
        rows = (f"{self.challenger_rows} rows" if self.paired else
                f"{self.challenger_rows} vs {self.champion_rows} rows")
        return (f"{self.metric}: challenger {self.challenger_value:.4f} vs champion "
                f"{self.champion_value:.4f} on {rows}, improvement {self.difference:+.4f}, "
                f"{self.confidence:.0%} {name} [{self.low:+.4f}, {self.high:+.4f}]{p}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(metric: str, classes: list[Any] | None, method: Method = "auto") -> str:
    """The test ``method="auto"`` means for ``metric``; a named test that cannot apply (McNemar
    for anything but accuracy, DeLong for anything but a binary ROC AUC) is a ValueError."""
    binary_auc = metric == "roc_auc" and classes is not None and len(classes) == 2
    if method == "auto":
        return "mcnemar" if metric == "accuracy" else "delong" if binary_auc else "bootstrap"
    if method == "mcnemar" and metric != "accuracy":
        raise ValueError(f"McNemar's test compares accuracy, not {metric}; use bootstrap")
    if method == "delong" and not binary_auc:
        raise ValueError(f"DeLong's test compares binary ROC AUC, not {metric}"
                         + (" of a multi-class model" if metric == "roc_auc" else "")
                         + "; use bootstrap")
    return method


def paired_test(task: str, metric: str, y: Any, champion: m.Scores, challenger: m.Scores, *,
                method: Method = "auto", confidence: float = 0.95, resamples: int = 2000,
                seed: int = 0) -> Interval:
    """Champion vs challenger on the same rows ``y``, by the test ``method`` picks."""
    import numpy as np

    y = m.labels(y) if task == "classification" else np.asarray(y, dtype=float)
    if len(champion) != len(y) or len(challenger) != len(y):
        raise ValueError(f"a paired test needs both models' scores on the same {len(y)} rows; "
                         f"got {len(champion)} and {len(challenger)}")
    chosen = choose(metric, challenger.classes, method)
    if chosen == "mcnemar":
        return mcnemar(y, champion.prediction, challenger.prediction, confidence=confidence)
    if chosen == "delong":
        return delong(y, champion, challenger, confidence=confidence)
    return bootstrap(task, metric, (y, champion), (y, challenger), paired=True,
                     confidence=confidence, resamples=resamples, seed=seed)


# -- McNemar ----------------------------------------------------------------------------------------
def mcnemar(y: np.ndarray, champion_pred: Any, challenger_pred: Any, *,
            confidence: float = 0.95) -> Interval:
    import numpy as np
    from scipy.stats import binomtest

    champion_right = np.asarray(champion_pred) == y
    challenger_right = np.asarray(challenger_pred) == y
    n = len(y)
    b = int(np.sum(champion_right & ~challenger_right))  # only the champion right
    c = int(np.sum(~champion_right & challenger_right))  # only the challenger right
    difference = (c - b) / n if n else math.nan
    p_value = float(binomtest(c, b + c, 0.5).pvalue) if b + c else 1.0
    # Agresti & Min (2005): add 0.5 to every cell of the 2x2 table, then the Wald interval.
    b2, c2, n2 = b + 0.5, c + 0.5, n + 2.0
    centre = (c2 - b2) / n2
    se = math.sqrt(max((b2 + c2) - (c2 - b2) ** 2 / n2, 0.0)) / n2
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return Interval(metric="accuracy", paired=True, champion_value=float(champion_right.mean()),
                    challenger_value=float(challenger_right.mean()), difference=difference,
                    low=max(centre - z * se, -1.0), high=min(centre + z * se, 1.0),
                    confidence=confidence, resamples=0, champion_rows=n, challenger_rows=n,
                    test="mcnemar", p_value=p_value,
                    details={"only_champion_right": b, "only_challenger_right": c})


# -- DeLong -----------------------------------------------------------------------------------------
def _placements(positive_scores: np.ndarray, negative_scores: np.ndarray
                ) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and the structural components V10 (per positive) and V01 (per negative), from
    midranks as in Sun & Xu (2014)."""
    import numpy as np
    from scipy.stats import rankdata

    m_, n_ = len(positive_scores), len(negative_scores)
    both = np.concatenate([positive_scores, negative_scores])
    ranks = rankdata(both)
    ranks_pos = rankdata(positive_scores)
    ranks_neg = rankdata(negative_scores)
    auc = (ranks[:m_].sum() - m_ * (m_ + 1) / 2) / (m_ * n_)
    v10 = (ranks[:m_] - ranks_pos) / n_
    v01 = 1.0 - (ranks[m_:] - ranks_neg) / m_
    return float(auc), v10, v01


def delong(y: np.ndarray, champion: m.Scores, challenger: m.Scores, *,
           confidence: float = 0.95) -> Interval:
    """DeLong's test of two correlated binary ROC AUCs on the same rows."""
    import numpy as np

    classes = challenger.classes or [0, 1]
    positive = y == classes[1]
    n = len(y)
    if positive.all() or not positive.any():
        return Interval(metric="roc_auc", paired=True, champion_value=math.nan,
                        challenger_value=math.nan, difference=math.nan, low=math.nan,
                        high=math.nan, confidence=confidence, resamples=0, champion_rows=n,
                        challenger_rows=n, test="delong", p_value=None,
                        details={"why": "one class only: ROC AUC is undefined"})
    aucs, v10s, v01s = [], [], []
    for scores in (champion, challenger):
        score = scores.proba[:, 1]
        auc, v10, v01 = _placements(score[positive], score[~positive])
        aucs.append(auc)
        v10s.append(v10)
        v01s.append(v01)
    s10 = np.cov(np.vstack(v10s)) if positive.sum() > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack(v01s)) if (~positive).sum() > 1 else np.zeros((2, 2))
    cov = s10 / positive.sum() + s01 / (~positive).sum()
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    difference = aucs[1] - aucs[0]
    se = math.sqrt(max(variance, 0.0))
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    if se > 0:
        p_value = 2 * (1 - NormalDist().cdf(abs(difference) / se))
    else:
        p_value = 1.0 if difference == 0 else 0.0
    return Interval(metric="roc_auc", paired=True, champion_value=aucs[0],
                    challenger_value=aucs[1], difference=difference, low=difference - z * se,
                    high=difference + z * se, confidence=confidence, resamples=0,
                    champion_rows=n, challenger_rows=n, test="delong", p_value=float(p_value),
                    details={"standard_error": se, "positives": int(positive.sum()),
                             "negatives": int((~positive).sum())})


# -- bootstrap --------------------------------------------------------------------------------------
def bootstrap(task: str, metric: str, champion: tuple[Any, m.Scores],
              challenger: tuple[Any, m.Scores], *, paired: bool, confidence: float = 0.95,
              resamples: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap of ``metric(challenger) - metric(champion)``; each arm is
    ``(labels, scores)``. ``paired``: the same rows, resampled with the same indices."""
    import numpy as np

    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0

    def prepared(arm: tuple[Any, m.Scores]) -> tuple[np.ndarray, m.Scores]:
        y, scores = arm
        return (m.labels(y) if task == "classification" else np.asarray(y, dtype=float)), scores

    (y_champion, s_champion), (y_challenger, s_challenger) = prepared(champion), prepared(challenger)
    n_champion, n_challenger = len(y_champion), len(y_challenger)
    if paired and n_champion != n_challenger:
        raise ValueError("paired bootstrap needs the same rows in both arms")
    base_champion = m.metric(metric, y_champion, s_champion)
    base_challenger = m.metric(metric, y_challenger, s_challenger)
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for b in range(resamples):
        i = rng.integers(0, n_champion, n_champion)
        j = i if paired else rng.integers(0, n_challenger, n_challenger)
        diffs[b] = sign * (m.metric(metric, y_challenger[j], s_challenger[j])
                           - m.metric(metric, y_champion[i], s_champion[i]))
    diffs = diffs[~np.isnan(diffs)]
    alpha = (1 - confidence) / 2
    low, high = (np.quantile(diffs, [alpha, 1 - alpha]) if len(diffs)
                 else (math.nan, math.nan))
    return Interval(metric=metric, paired=paired, champion_value=base_champion,
                    challenger_value=base_challenger,
                    difference=sign * (base_challenger - base_champion), low=float(low),
                    high=float(high), confidence=confidence, resamples=resamples,
                    champion_rows=n_champion, challenger_rows=n_challenger, test="bootstrap")
