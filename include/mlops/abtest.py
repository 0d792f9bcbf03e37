"""Live metrics from labelled predictions, and the A/B significance test between two arms.

The test is a seeded percentile bootstrap of the difference in the comparison metric
(challenger minus champion, signed so that positive means "challenger better"):

- canary arms hold different rows, so each arm is resampled on its own (unpaired);
- shadow predictions score the same rows as the champion, so rows are resampled jointly
  (paired), which removes the row-to-row noise both models share.

The interval works for any metric (ROC AUC has no simple exact test) and is reproducible: the
same rows and seed give the same interval. See docs/monitoring.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from include.mlops.config import HIGHER_IS_BETTER

if TYPE_CHECKING:
    import numpy as np


def metric_values(task: str, y_true: Any, prediction: Any, score: Any = None) -> dict[str, float]:
    """Metrics from stored predictions: accuracy, F1, ROC AUC, log loss for binary
    classification (ROC AUC and log loss need the positive-class score) or RMSE, MAE, R²."""
    import numpy as np
    from sklearn import metrics as m

    y = np.asarray(y_true)
    pred = np.asarray(prediction)
    nan = float("nan")
    if len(y) == 0:
        return {}
    if task == "regression":
        return {"rmse": float(math.sqrt(m.mean_squared_error(y, pred))),
                "mae": float(m.mean_absolute_error(y, pred)),
                "r2": float(m.r2_score(y, pred)) if len(y) > 1 else nan}
    out = {"accuracy": float(m.accuracy_score(y, pred)),
           "f1": float(m.f1_score(y, pred, zero_division=0)) if len(np.unique(y)) <= 2 else nan}
    s = None if score is None else np.asarray(score, dtype=float)
    both = len(np.unique(y)) == 2
    out["roc_auc"] = float(m.roc_auc_score(y, s)) if s is not None and both and \
        not np.isnan(s).any() else nan
    out["log_loss"] = float(m.log_loss(y, np.clip(s, 1e-15, 1 - 1e-15), labels=[0, 1])) \
        if s is not None and not np.isnan(s).any() else nan
    return out


@dataclass(frozen=True)
class Interval:
    """Bootstrap interval of ``challenger - champion`` on ``metric`` (positive = better)."""

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

    @property
    def significant_better(self) -> bool:
        return self.low > 0

    @property
    def significant_worse(self) -> bool:
        return self.high < 0

    def describe(self) -> str:
        kind = "paired" if self.paired else "unpaired"
        return (f"{self.metric}: challenger {self.challenger_value:.4f} ({self.challenger_rows} rows) "
                f"vs champion {self.champion_value:.4f} ({self.champion_rows} rows), improvement "
                f"{self.difference:+.4f}, {self.confidence:.0%} {kind} bootstrap interval "
                f"[{self.low:+.4f}, {self.high:+.4f}] ({self.resamples} resamples)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _metric(task: str, metric: str, y: np.ndarray, pred: np.ndarray, score: np.ndarray) -> float:
    import numpy as np

    if metric == "accuracy":
        return float((y == pred).mean())
    if metric == "roc_auc":
        # Mann-Whitney form of ROC AUC (ties count half): fast inside the bootstrap loop.
        from scipy.stats import rankdata

        positives = y == 1
        n_pos, n_neg = int(positives.sum()), int((~positives).sum())
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        ranks = rankdata(score)
        return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    # Plain numpy for the rest too: sklearn's checks cost ~10 ms a call, 40 s per decision.
    if metric in ("rmse", "mae", "r2"):
        err = y.astype(float) - pred.astype(float)
        if metric == "rmse":
            return float(np.sqrt(np.mean(err**2)))
        if metric == "mae":
            return float(np.mean(np.abs(err)))
        total = np.sum((y - np.mean(y)) ** 2)
        return float(1 - np.sum(err**2) / total) if total > 0 else float("nan")
    if metric == "f1":
        tp = float(np.sum((pred == 1) & (y == 1)))
        denominator = float(np.sum(pred == 1) + np.sum(y == 1))
        return 2 * tp / denominator if denominator else 0.0
    if metric == "log_loss":
        p = np.clip(score.astype(float), 1e-15, 1 - 1e-15)
        return float(-np.mean(np.where(y == 1, np.log(p), np.log(1 - p))))
    return metric_values(task, y, pred, score).get(metric, float("nan"))


def bootstrap_difference(task: str, metric: str, champion: dict[str, np.ndarray],
                         challenger: dict[str, np.ndarray], *, paired: bool,
                         confidence: float = 0.95, resamples: int = 2000,
                         seed: int = 0) -> Interval:
    """Percentile bootstrap of ``metric(challenger) - metric(champion)``.

    Each arm is ``{"y", "prediction", "score"}`` arrays. ``paired``: both arms are the same rows
    (shadow), resampled with the same indices.
    """
    import numpy as np

    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    arrays = {name: {k: np.asarray(v) for k, v in arm.items()}
              for name, arm in (("champion", champion), ("challenger", challenger))}

    def value(arm: dict[str, np.ndarray], idx: np.ndarray | None = None) -> float:
        if idx is None:
            return _metric(task, metric, arm["y"], arm["prediction"], arm["score"])
        return _metric(task, metric, arm["y"][idx], arm["prediction"][idx], arm["score"][idx])

    base_champion = value(arrays["champion"])
    base_challenger = value(arrays["challenger"])
    rng = np.random.default_rng(seed)
    n_champion, n_challenger = len(arrays["champion"]["y"]), len(arrays["challenger"]["y"])
    if paired and n_champion != n_challenger:
        raise ValueError("paired bootstrap needs the same rows in both arms")
    diffs = np.empty(resamples)
    for b in range(resamples):
        idx_champion = rng.integers(0, n_champion, n_champion)
        idx_challenger = idx_champion if paired else rng.integers(0, n_challenger, n_challenger)
        diffs[b] = sign * (value(arrays["challenger"], idx_challenger)
                           - value(arrays["champion"], idx_champion))
    diffs = diffs[~np.isnan(diffs)]
    alpha = (1 - confidence) / 2
    low, high = (np.quantile(diffs, [alpha, 1 - alpha]) if len(diffs)
                 else (float("nan"), float("nan")))
    return Interval(metric=metric, paired=paired, champion_value=base_champion,
                    challenger_value=base_challenger,
                    difference=sign * (base_challenger - base_champion), low=float(low),
                    high=float(high), confidence=confidence, resamples=resamples,
                    champion_rows=n_champion, challenger_rows=n_challenger)
