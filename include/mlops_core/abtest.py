"""Live metrics from labelled predictions, and the A/B test between two arms.

The metrics are :mod:`include.mlops_core.metrics`'s (binary and multi-class alike); the test is
:mod:`include.mlops_core.significance`'s seeded percentile bootstrap of the difference in the
comparison metric (challenger minus champion, signed so that positive means "challenger
better"):

- canary arms hold different rows, so each arm is resampled on its own (unpaired);
- shadow predictions score the same rows as the champion, so rows are resampled jointly
  (paired), which removes the row-to-row noise both models share.

The interval works for any metric and is reproducible: the same rows and seed give the same
interval. See docs/monitoring.md.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from include.mlops_core import metrics
from include.mlops_core.significance import Interval, bootstrap

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Interval", "bootstrap_difference", "metric_values", "scores"]


def scores(task: str, y_true: Any, prediction: Any, score: Any = None, proba: Any = None,
           classes: Any = None) -> metrics.Scores:
    """Stored predictions as :class:`metrics.Scores`.

    ``proba`` (one list of class probabilities per row) and ``classes`` (their labels, a list or
    its JSON) come from a multi-class model's predictions; ``score`` is a binary classifier's
    positive-class probability. Older predictions without ``classes``: a binary classifier's
    classes are the sorted labels seen (two at most)."""
    import numpy as np

    prediction = np.asarray(prediction)
    if task == "regression":
        return metrics.Scores(prediction)
    if isinstance(classes, str):
        classes = json.loads(classes)
    if proba is not None and classes is not None and len(proba) \
            and all(p is not None for p in proba):
        stacked = np.vstack([np.asarray(p, dtype=float) for p in proba])
        return metrics.Scores(metrics.labels(prediction), stacked, list(classes))
    if score is None or not len(score) or np.isnan(np.asarray(score, dtype=float)).any():
        return metrics.Scores(metrics.labels(prediction))
    if classes is None:
        seen = sorted(set(metrics.labels(y_true).tolist()) | set(metrics.labels(prediction).tolist()))
        classes = seen if len(seen) == 2 else [0, 1]
    return metrics.Scores(metrics.labels(prediction), np.asarray(score, dtype=float), list(classes))


def metric_values(task: str, y_true: Any, prediction: Any, score: Any = None, *,
                  proba: Any = None, classes: Any = None) -> dict[str, float]:
    """Metrics of stored predictions (see :func:`scores` for the arguments): accuracy, F1, ROC
    AUC and log loss for a classifier (the last two need its probabilities), or RMSE, MAE, R²."""
    return metrics.compute(task, y_true, scores(task, y_true, prediction, score, proba, classes))


def _arm(task: str, arm: dict[str, Any]) -> tuple[np.ndarray, metrics.Scores]:
    import numpy as np

    y = np.asarray(arm["y"])
    return y, scores(task, y, arm["prediction"], arm.get("score"), arm.get("proba"),
                     arm.get("classes"))


def bootstrap_difference(task: str, metric: str, champion: dict[str, Any],
                         challenger: dict[str, Any], *, paired: bool,
                         confidence: float = 0.95, resamples: int = 2000,
                         seed: int = 0) -> Interval:
    """Percentile bootstrap of ``metric(challenger) - metric(champion)``.

    Each arm is ``{"y", "prediction", "score"}`` arrays, plus ``proba`` and ``classes`` for a
    multi-class model. ``paired``: both arms are the same rows (shadow), resampled with the
    same indices.
    """
    return bootstrap(task, metric, _arm(task, champion), _arm(task, challenger), paired=paired,
                     confidence=confidence, resamples=resamples, seed=seed)
