"""Every metric, defined once: training, the gate, the A/B decision and monitoring use these.

Classification: ``accuracy``, ``f1``, ``roc_auc``, ``log_loss``; regression: ``rmse``, ``mae``,
``r2``. Binary and multi-class are the same functions:

- ``f1``: binary, the F1 of the positive class (the last of the sorted classes, e.g. ``1``);
  multi-class, the macro average over the classes that occur in the labels or the predictions
  (scikit-learn's ``average="macro"``).
- ``roc_auc``: binary, the area under the ROC curve of the positive-class score; multi-class,
  one-vs-rest and macro-averaged over the classes present in the labels. A class absent from
  the labels has no ROC curve and is left out of the average (scikit-learn raises instead), so
  multi-class ROC AUC is a number whenever two classes occur. It is NaN only when a single
  class occurs (no ROC curve exists at all) or no scores were given.
- ``log_loss``: the mean negative log-probability of the true class, probabilities clipped
  to [1e-15, 1] after each row is normalised to sum to 1.

Plain numpy (scipy's rankdata for ROC AUC): these run thousands of times inside a bootstrap,
where scikit-learn's input checks cost about 10 ms a call. tests/unit/test_metrics.py checks
each one against scikit-learn's on random data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from include.mlops_core.config import CLASSIFICATION_METRICS, HIGHER_IS_BETTER, REGRESSION_METRICS

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CLASSIFICATION_METRICS", "HIGHER_IS_BETTER", "REGRESSION_METRICS", "EPS", "Scores",
           "accuracy", "classification", "compute", "f1", "labels", "log_loss", "mae",
           "metric", "r2", "regression", "rmse", "roc_auc", "scores_from_model"]

EPS = 1e-15
NAN = float("nan")


class Scores:
    """What a classifier said about some rows: the predicted labels and the class probabilities
    (``proba[:, j]`` is the probability of ``classes[j]``), or neither for a regressor's
    ``prediction`` alone. Slicing (``scores[idx]``) keeps the classes."""

    __slots__ = ("classes", "prediction", "proba")

    def __init__(self, prediction: Any, proba: Any = None, classes: Sequence[Any] | None = None):
        import numpy as np

        self.prediction = np.asarray(prediction)
        self.proba = None if proba is None else np.asarray(proba, dtype=float)
        self.classes = None if classes is None else list(classes)
        if self.proba is not None:
            if self.proba.ndim == 1:  # the positive-class score of a binary classifier
                self.proba = np.column_stack([1 - self.proba, self.proba])
            if self.classes is None or len(self.classes) != self.proba.shape[1]:
                raise ValueError(f"{self.proba.shape[1]} probability columns need as many "
                                 f"classes, got {self.classes}")

    def __getitem__(self, idx: Any) -> Scores:
        return Scores(self.prediction[idx], None if self.proba is None else self.proba[idx],
                      self.classes)

    def __len__(self) -> int:
        return len(self.prediction)


def labels(y: Any) -> np.ndarray:
    """Labels as they compare with a model's classes: floats that are whole numbers become
    integers (ingest reads every number as a float; class labels are integers)."""
    import numpy as np

    y = np.asarray(y)
    if y.dtype.kind == "f" and len(y) and np.isfinite(y).all() and (y % 1 == 0).all():
        return y.astype("int64")
    return y


def scores_from_model(model: Any, x: Any) -> Scores:
    """A fitted model's :class:`Scores` on ``x`` (probabilities when it has ``predict_proba``)."""
    if hasattr(model, "predict_proba") and hasattr(model, "classes_"):
        import numpy as np

        proba = model.predict_proba(x)
        classes = list(model.classes_)
        return Scores(np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
                      .astype(np.asarray(classes).dtype), proba, classes)
    return Scores(model.predict(x))


# -- classification ---------------------------------------------------------------------------------
def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float((y == pred).mean()) if len(y) else NAN


def f1(y: np.ndarray, pred: np.ndarray, classes: Sequence[Any] | None = None) -> float:
    """Binary: F1 of the positive class (the last of ``classes``, or of the sorted labels);
    multi-class: macro F1 over the labels present in ``y`` or ``pred``."""
    import numpy as np

    present = np.unique(np.concatenate([y, pred]))
    known = list(classes) if classes is not None else list(present)
    if len(known) <= 2 and all(v in known for v in present.tolist()):
        positive = known[-1]
        return _f1_of(y == positive, pred == positive)
    return float(np.mean([_f1_of(y == c, pred == c) for c in present]))


def _f1_of(actual: np.ndarray, predicted: np.ndarray) -> float:
    import numpy as np

    tp = float(np.sum(actual & predicted))
    denominator = float(np.sum(actual) + np.sum(predicted))
    return 2 * tp / denominator if denominator else 0.0


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney form of the ROC AUC (ties count half): equal to the trapezoidal area."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc(y: np.ndarray, proba: np.ndarray | None, classes: Sequence[Any] | None) -> float:
    """Binary: ROC AUC of the positive class's probability. Multi-class: one-vs-rest, macro over
    the classes present in ``y`` (NaN only when fewer than two classes occur)."""
    import numpy as np

    if proba is None or classes is None or len(y) == 0 or np.isnan(proba).any():
        return NAN
    if len(classes) == 2:
        return _binary_auc(y == classes[1], proba[:, 1])
    values = [_binary_auc(y == c, proba[:, j]) for j, c in enumerate(classes)]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else NAN


def log_loss(y: np.ndarray, proba: np.ndarray | None, classes: Sequence[Any] | None) -> float:
    """Mean negative log-probability of the true class (rows normalised, clipped at 1e-15). A
    label the model has no class for gets probability 0 (the clip's 1e-15)."""
    import numpy as np

    if proba is None or classes is None or len(y) == 0 or np.isnan(proba).any():
        return NAN
    proba = proba / proba.sum(axis=1, keepdims=True)
    index = {c: j for j, c in enumerate(classes)}
    cols = np.array([index.get(v, -1) for v in y.tolist()])
    true = np.where(cols >= 0, proba[np.arange(len(y)), np.maximum(cols, 0)], 0.0)
    return float(-np.mean(np.log(np.clip(true, EPS, 1.0))))


def classification(y: Any, scores: Scores) -> dict[str, float]:
    y = labels(y)
    if len(y) == 0:
        return {}
    pred, proba, classes = scores.prediction, scores.proba, scores.classes
    return {"accuracy": accuracy(y, pred), "f1": f1(y, pred, classes),
            "roc_auc": roc_auc(y, proba, classes), "log_loss": log_loss(y, proba, classes)}


# -- regression -------------------------------------------------------------------------------------
def rmse(y: np.ndarray, pred: np.ndarray) -> float:
    import numpy as np

    return float(np.sqrt(np.mean((y - pred) ** 2))) if len(y) else NAN


def mae(y: np.ndarray, pred: np.ndarray) -> float:
    import numpy as np

    return float(np.mean(np.abs(y - pred))) if len(y) else NAN


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """1 - SS_res / SS_tot; as scikit-learn for constant labels (1 if predicted exactly, else
    0); NaN for fewer than two rows."""
    import numpy as np

    if len(y) < 2:
        return NAN
    residual = float(np.sum((y - pred) ** 2))
    total = float(np.sum((y - np.mean(y)) ** 2))
    if total == 0:
        return 1.0 if residual == 0 else 0.0
    return 1 - residual / total


def regression(y: Any, prediction: Any) -> dict[str, float]:
    import numpy as np

    y = np.asarray(y, dtype=float)
    pred = np.asarray(prediction, dtype=float)
    if len(y) == 0:
        return {}
    return {"rmse": rmse(y, pred), "mae": mae(y, pred), "r2": r2(y, pred)}


# -- one entry point --------------------------------------------------------------------------------
def compute(task: str, y: Any, scores: Scores) -> dict[str, float]:
    """Every metric of ``task`` (``classification`` or ``regression``)."""
    if task == "regression":
        return regression(y, scores.prediction)
    return classification(y, scores)


def metric(name: str, y: np.ndarray, scores: Scores) -> float:
    """One metric (the bootstrap's inner loop): ``y`` already through :func:`labels`."""
    import numpy as np

    if name in REGRESSION_METRICS:
        yf = np.asarray(y, dtype=float)
        pred = np.asarray(scores.prediction, dtype=float)
        return {"rmse": rmse, "mae": mae, "r2": r2}[name](yf, pred)
    if name == "accuracy":
        return accuracy(y, scores.prediction)
    if name == "f1":
        return f1(y, scores.prediction, scores.classes)
    if name == "roc_auc":
        return roc_auc(y, scores.proba, scores.classes)
    if name == "log_loss":
        return log_loss(y, scores.proba, scores.classes)
    raise ValueError(f"unknown metric {name!r}; known: "
                     f"{', '.join(CLASSIFICATION_METRICS + REGRESSION_METRICS)}")
