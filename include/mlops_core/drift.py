"""Data drift check: Evidently 0.7's ``DataDriftPreset`` verdicts, computed exactly on the full data.

``detect_drift`` picks, per column, the test Evidently 0.7.23 picks by default
(``evidently/legacy/calculations/stattests/registry.py: _get_default_stattest``) on the data
Evidently feeds it (``legacy/calculations/data_drift.py: get_one_column_drift``):

* each side of a column has +/-inf replaced by NaN and NaN dropped; a side left empty cannot be
  tested (Evidently raises), so the column goes to ``DriftResult.broken``;
* ``n_values`` = distinct non-missing values of reference and current together;
* reference (after cleaning) has more than 1000 rows:
  numeric with ``n_values > 5`` -> ``wasserstein``: ``W1(ref, cur) / max(std(ref, ddof=0), 0.001)``,
  drift when ``>= 0.1``; numeric with ``n_values <= 5`` and every categorical column ->
  ``jensenshannon`` on the shares of each value (share = count / non-missing rows, the union of
  values of both sides), drift when ``>= 0.1``;
* reference has 1000 rows or fewer: numeric with ``n_values > 5`` -> ``ks`` (two-sample K-S
  p-value, drift when ``<= 0.05``); otherwise ``chisquare`` when ``n_values > 2`` else ``z``
  (two-proportion z-test), drift when the p-value is ``< 0.05``;
* the dataset drifts when drifted / checked columns ``>= drift_share``
  (``data_drift.py: get_dataset_drift`` and ``DriftedColumnsCount``'s ``lt(drift_share)`` test).

Scores equal Evidently's: the Wasserstein distance is bit-for-bit scipy's
``wasserstein_distance`` (same CDF terms, same ``np.vecdot``), computed from one sort per side and
a linear merge instead of scipy's argsorts and searchsorted over the merged array; the std is
Evidently's own ``np.std`` on the cleaned reference Series; the other tests call the same scipy
functions on the same counts. Only the order in which Jensen-Shannon sums its terms can differ:
Evidently orders the values by a Python set, which follows the per-process string hash, so its
own categorical scores vary between processes in the last bits (about 1e-15); ours use a fixed
order (reference values as first seen, then unseen ones) and are the same in every process.
Columns run in a thread pool (numpy's sort, merge and searchsorted
release the GIL; threads share the frames instead of copying them), one column per worker at a
time, so the memory on top of the frames is a few arrays of one column.

One deliberate difference: Evidently's ``ValueDrift`` always drops +/-inf, but its
``DriftedColumnsCount`` keeps them in a column that has no NaN, gets a NaN score there and does
not count the column as drifted even when ``ValueDrift`` says it drifted. We always drop them, as
``ValueDrift`` does.

The human report is rendered elsewhere: include/mlops_core/drift_report.py draws Evidently's
``DataDriftPreset`` report on a sample and shows these full-data numbers in it, through
Evidently's public custom-StatTest API.

No Airflow and no Evidently import here (``import evidently`` takes about 6 s with a bytecode
cache, up to 14 s without one): the statistics need only numpy, pandas and scipy, imported
inside the functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from include.mlops_core.errors import DriftCheckError, SchemaError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

REFERENCE = "reference snapshot"
CURRENT = "current partition"

SMALL_REFERENCE_ROWS = 1000  # reference rows (after dropping missing) up to this -> p-value tests
LOW_CARDINALITY = 5          # numeric columns with at most this many distinct values -> counts
UNSEEN_SHOWN = 5             # unseen categories named in ``ColumnDrift.detail``

# Evidently's StatTest name -> (display name, default threshold). tests/unit/test_drift.py checks
# these against Evidently's registry.
STATTESTS: dict[str, tuple[str, float]] = {
    "wasserstein": ("Wasserstein distance (normed)", 0.1),
    "jensenshannon": ("Jensen-Shannon distance", 0.1),
    "ks": ("K-S p_value", 0.05),
    "chisquare": ("chi-square p_value", 0.05),
    "z": ("Z-test p_value", 0.05),
}


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str  # "numeric" | "categorical"
    stattest: str  # Evidently's StatTest name: wasserstein, jensenshannon, ks, chisquare, z
    score: float  # distance, or p-value for ks / chisquare / z
    threshold: float
    drifted: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["score"] = self.score if math.isfinite(self.score) else None  # keep it valid JSON
        return out


@dataclass(frozen=True)
class DriftResult:
    columns: list[ColumnDrift]
    drift_share: float
    reference_rows: int
    current_rows: int
    broken: list[str] = field(default_factory=list)

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    @property
    def share(self) -> float:
        """Drifted share of the checked columns (broken columns are not checked)."""
        return len(self.drifted_columns) / len(self.columns) if self.columns else 0.0

    @property
    def dataset_drift(self) -> bool:
        """Evidently's rule: the drifted share reaches ``drift_share`` (``>=``)."""
        return bool(self.columns) and self.share >= self.drift_share

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset_drift": self.dataset_drift,
            "share": self.share,
            "drift_share": self.drift_share,
            "checked_columns": len(self.columns),
            "drifted_columns": self.drifted_columns,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "broken": list(self.broken),
            "columns": [c.as_dict() for c in self.columns],
        }

    def ranked(self, importance: dict[str, float] | None) -> list[str]:
        """The drifted columns, the ones the model relies on most first (``importance``: the
        champion's share of mean |SHAP| per column, :func:`include.mlops_core.explain.importance_ranking`);
        columns it has no importance for keep their order, last."""
        drifted = self.drifted_columns
        if not importance:
            return drifted
        return sorted(drifted, key=lambda c: (-importance.get(c, -1.0), drifted.index(c)))

    def summary_line(self, report_uri: str, importance: dict[str, float] | None = None) -> str:
        drifted = self.ranked(importance)
        line = (f"Drift: {len(drifted)} of {len(self.columns)} columns drifted "
                f"(share {self.share:.2f}, threshold {self.drift_share:.2f})")
        if drifted and importance:
            line += ", by the model's importance: " + _names(
                [f"{c} ({importance[c]:.0%})" if c in importance else f"{c} (not a feature)"
                 for c in drifted])
        elif drifted:
            line += ": " + _names(drifted)
        if self.broken:
            line += f"; {len(self.broken)} not checked: " + " | ".join(self.broken[:3])
            line += f" (+{len(self.broken) - 3} more)" if len(self.broken) > 3 else ""
        return f"{line}; report {report_uri}".replace("\n", " ")


def _names(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


# --------------------------------------------------------------------------------------------
# detect_drift


def detect_drift(reference: pd.DataFrame, current: pd.DataFrame, *, numeric: list[str],
                 categorical: list[str], drift_share: float = 0.5, workers: int = 2) -> DriftResult:
    """Per-column drift of ``current`` against ``reference`` with Evidently's default tests.

    :param numeric: columns compared as numbers (must hold a numeric dtype on both sides)
    :param categorical: columns compared as categories (strings, codes, booleans)
    :param drift_share: share of drifted columns that means dataset drift
    :param workers: threads running columns in parallel (1 runs them in this thread)
    :raises SchemaError: a column is missing on one side, or its kind differs between the sides
    :raises DriftCheckError: a frame has no rows
    """
    jobs = _jobs(numeric, categorical, drift_share, workers)
    for side, frame in ((REFERENCE, reference), (CURRENT, current)):
        if len(frame) == 0:
            raise DriftCheckError(f"Drift check: the {side} has no rows")
    for column, kind in jobs:
        _check_schema(reference, current, column, kind)

    def run(job: tuple[str, str]) -> ColumnDrift | str:
        column, kind = job
        check = _numeric_drift if kind == "numeric" else _categorical_drift
        return check(column, reference[column], current[column])

    if workers == 1 or len(jobs) == 1:
        outcomes = [run(job) for job in jobs]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="drift") as pool:
            outcomes = list(pool.map(run, jobs))
    return DriftResult(columns=[o for o in outcomes if isinstance(o, ColumnDrift)],
                       drift_share=float(drift_share), reference_rows=len(reference),
                       current_rows=len(current),
                       broken=[o for o in outcomes if isinstance(o, str)])


def _jobs(numeric: Sequence[str], categorical: Sequence[str], drift_share: float,
          workers: int) -> list[tuple[str, str]]:
    if isinstance(numeric, str) or isinstance(categorical, str):
        raise ValueError("numeric and categorical are lists of column names, not strings")
    jobs = [(c, "numeric") for c in numeric] + [(c, "categorical") for c in categorical]
    names = [c for c, _ in jobs]
    if not jobs:
        raise ValueError("Drift check: no columns declared (numeric and categorical are empty)")
    if len(set(names)) != len(names):
        twice = sorted({c for c in names if names.count(c) > 1})
        raise ValueError(f"Drift check: columns declared more than once: {twice}")
    if not 0.0 <= drift_share <= 1.0:
        raise ValueError(f"drift_share must be within [0, 1], got {drift_share}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return jobs


def _describe(series: pd.Series) -> str:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series.dtype):
        return "numbers"
    inferred = pd.api.types.infer_dtype(series.dropna().iloc[:1000], skipna=True)
    return {"string": "strings", "mixed": "mixed values"}.get(inferred, f"{inferred} values")


def _check_schema(reference: pd.DataFrame, current: pd.DataFrame, column: str, kind: str) -> None:
    """Missing columns and kind changes; a side with no values at all is left to the column check."""
    import pandas as pd

    for side, frame in ((REFERENCE, reference), (CURRENT, current)):
        if column not in frame.columns:
            raise SchemaError(f"Drift check: column {column!r} (declared {kind}) is missing from the "
                              f"{side}")
    sides = {side: frame[column] for side, frame in ((REFERENCE, reference), (CURRENT, current))}
    numeric = {side: pd.api.types.is_numeric_dtype(s.dtype) for side, s in sides.items()}
    if kind == "numeric":
        for side, series in sides.items():
            if not numeric[side] and series.notna().any():
                other = CURRENT if side == REFERENCE else REFERENCE
                was = f"{_describe(sides[other])} in the {other}, " if numeric[other] else ""
                raise SchemaError(
                    f"Drift check: column {column!r} is declared numeric but holds "
                    f"{_describe(series)} (dtype {series.dtype}) in the {side}"
                    + (f"; kind changed: {was}{_describe(series)} in the {side}" if was else ""))
    elif numeric[REFERENCE] != numeric[CURRENT] and all(s.notna().any() for s in sides.values()):
        raise SchemaError(
            f"Drift check: column {column!r} (declared categorical) changed kind: "
            f"{_describe(sides[REFERENCE])} (dtype {sides[REFERENCE].dtype}) in the {REFERENCE}, "
            f"{_describe(sides[CURRENT])} (dtype {sides[CURRENT].dtype}) in the {CURRENT}")


def _missing_detail(missing: dict[str, int], rows: dict[str, int]) -> str:
    if not any(missing.values()):
        return ""
    shares = ", ".join(f"{side.split()[0]} {missing[side] / rows[side]:.1%}" for side in missing)
    return f"missing or infinite values dropped: {shares}"


def _broken(column: str, kind: str, empty: list[str], rows: dict[str, int]) -> str:
    where = " and ".join(f"all {rows[side]:,} rows of the {side}" for side in empty)
    return f"{column} ({kind}): no usable value (missing or infinite) in {where}"


# numeric ------------------------------------------------------------------------------------


def _finite_values(series: pd.Series) -> np.ndarray:
    """Evidently's ``replace([-inf, inf], nan).dropna()``: the kept values, in their order and
    dtype (a view of the frame when nothing is dropped)."""
    import numpy as np
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(series.dtype):  # all missing (checked by _check_schema)
        return np.empty(0)
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iu":
        return series.to_numpy()
    if isinstance(series.dtype, np.dtype) and series.dtype.kind == "f":
        values = series.to_numpy()
    else:  # bool, nullable Int64 / Float64 / boolean: floats with NaN for missing
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    keep = np.isfinite(values)
    return values if keep.all() else values[keep]


def _distinct(sorted_values: np.ndarray, limit: int) -> np.ndarray | None:
    """The distinct values of a sorted array, or None when there are more than ``limit``."""
    import numpy as np

    if sorted_values.size == 0:
        return sorted_values
    changes = sorted_values[1:] != sorted_values[:-1]
    if np.count_nonzero(changes) + 1 > limit:
        return None
    return np.concatenate((sorted_values[:1], sorted_values[np.flatnonzero(changes) + 1]))


def wasserstein_sorted(x: np.ndarray, y: np.ndarray) -> float:
    """``scipy.stats.wasserstein_distance(x, y)`` for sorted float64 ``x`` and ``y``, bit for bit.

    scipy sorts the merged values, looks up both CDFs at each merged value with searchsorted and
    returns ``vecdot(|F_x - F_y|, diff(merged))``. Here the merge is a timsort of two sorted runs
    (linear) and the CDF counts are a running count of where ``y`` lands in it: where a tie run
    ends (the only places with a non-zero ``diff``) the counts are exactly scipy's, and inside a
    tie run the term is multiplied by 0. The terms are then the same floats in the same order.
    """
    import numpy as np

    n, m = x.size, y.size
    merged = np.concatenate((x, y))
    merged.sort(kind="stable")  # timsort: one merge of the two runs
    at = np.searchsorted(x, y, side="right")  # x values <= y[j]; y[j] sits at at[j] + j
    at += np.arange(m, dtype=at.dtype)
    from_y = np.zeros(n + m, dtype=bool)
    from_y[at] = True
    del at
    cdf_y = np.cumsum(from_y[:-1], dtype=np.float64)  # y values at or before each position
    del from_y
    cdf_x = np.arange(1, n + m, dtype=np.float64)
    cdf_x -= cdf_y  # x values at or before each position (exact: integers below 2**53)
    cdf_x /= n
    cdf_y /= m
    cdf_x -= cdf_y
    np.abs(cdf_x, out=cdf_x)
    del cdf_y
    deltas = np.diff(merged)
    del merged
    return float(np.vecdot(cdf_x, deltas))


def _numeric_drift(column: str, ref: pd.Series, cur: pd.Series) -> ColumnDrift | str:
    import numpy as np
    import pandas as pd

    x_kept, y_kept = _finite_values(ref), _finite_values(cur)
    rows = {REFERENCE: len(ref), CURRENT: len(cur)}
    kept = {REFERENCE: x_kept.size, CURRENT: y_kept.size}
    empty = [side for side in kept if kept[side] == 0]
    if empty:
        return _broken(column, "numeric", empty, rows)
    detail = _missing_detail({s: rows[s] - kept[s] for s in rows}, rows)
    x = x_kept.astype(np.float64, copy=True)
    x.sort()
    y = y_kept.astype(np.float64, copy=True)
    y.sort()
    del y_kept
    x_distinct = _distinct(x, LOW_CARDINALITY)
    y_distinct = _distinct(y, LOW_CARDINALITY) if x_distinct is not None else None
    keys = None if y_distinct is None else np.union1d(x_distinct, y_distinct)
    low_cardinality = keys is not None and keys.size <= LOW_CARDINALITY

    if x.size <= SMALL_REFERENCE_ROWS and not low_cardinality:
        from scipy.stats import ks_2samp

        p_value = float(ks_2samp(x, y)[1])
        return _column(column, "numeric", "ks", p_value, p_value <= STATTESTS["ks"][1], detail)
    if low_cardinality:
        x_counts = np.searchsorted(x, keys, "right") - np.searchsorted(x, keys, "left")
        y_counts = np.searchsorted(y, keys, "right") - np.searchsorted(y, keys, "left")
        return _counts_drift(column, "numeric", keys.tolist(), x_counts.tolist(),
                             y_counts.tolist(), x.size, y.size, detail)
    # Evidently: max(float(np.std(reference Series)), 0.001), on the kept values in their order
    norm = max(float(np.std(pd.Series(x_kept, copy=False))), 0.001)
    del x_kept
    score = wasserstein_sorted(x, y) / norm
    return _column(column, "numeric", "wasserstein", score, score >= STATTESTS["wasserstein"][1],
                   detail)


# categorical --------------------------------------------------------------------------------


def _value_counts(series: pd.Series) -> dict[Any, int]:
    """Counts of the non-missing values, as Evidently sees them (it turns +/-inf into NaN)."""
    counts = series.value_counts(dropna=True, sort=False)
    return {key: int(n) for key, n in counts.items()
            if n > 0 and not (isinstance(key, float) and math.isinf(key))}


def _categorical_drift(column: str, ref: pd.Series, cur: pd.Series) -> ColumnDrift | str:
    ref_counts, cur_counts = _value_counts(ref), _value_counts(cur)
    rows = {REFERENCE: len(ref), CURRENT: len(cur)}
    kept = {REFERENCE: sum(ref_counts.values()), CURRENT: sum(cur_counts.values())}
    empty = [side for side in kept if kept[side] == 0]
    if empty:
        return _broken(column, "categorical", empty, rows)
    notes = []
    unseen = sorted((k for k in cur_counts if k not in ref_counts), key=lambda k: -cur_counts[k])
    if unseen:
        more = f" (+{len(unseen) - UNSEEN_SHOWN} more)" if len(unseen) > UNSEEN_SHOWN else ""
        notes.append(f"unseen categories in current: {[_plain(k) for k in unseen[:UNSEEN_SHOWN]]}{more}")
    missing = _missing_detail({s: rows[s] - kept[s] for s in rows}, rows)
    notes += [missing] if missing else []
    keys = list(ref_counts) + unseen  # a fixed order: Evidently's set order changes per process
    return _counts_drift(column, "categorical", keys, [ref_counts.get(k, 0) for k in keys],
                         [cur_counts.get(k, 0) for k in keys], kept[REFERENCE], kept[CURRENT],
                         "; ".join(notes))


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# tests on counts (categorical, and numeric with at most 5 distinct values) -------------------


def _counts_drift(column: str, kind: str, keys: list[Any], ref_counts: list[int],
                  cur_counts: list[int], n_ref: int, n_cur: int, detail: str) -> ColumnDrift:
    """Evidently's tests on per-value counts; ``keys`` is the union of both sides' values."""
    import numpy as np

    if n_ref > SMALL_REFERENCE_ROWS:
        from scipy.spatial import distance

        # get_binned_data(..., feel_zeroes=False): count / rows for each value of either side
        ref_share = np.array([c / n_ref for c in ref_counts])
        cur_share = np.array([c / n_cur for c in cur_counts])
        score = float(distance.jensenshannon(ref_share, cur_share))
        return _column(column, kind, "jensenshannon", score,
                       score >= STATTESTS["jensenshannon"][1], detail)
    if len(keys) > 2:
        from scipy.stats import chisquare

        k_norm = n_cur / n_ref
        with np.errstate(divide="ignore"):  # a value unseen in the reference: p-value 0
            p_value = float(chisquare(cur_counts, [c * k_norm for c in ref_counts])[1])
        return _column(column, kind, "chisquare", p_value, p_value < STATTESTS["chisquare"][1],
                       detail)
    return _column(column, kind, "z", _z_test(keys, ref_counts, cur_counts, n_ref, n_cur), None,
                   detail)


def _z_test(keys: list[Any], ref_counts: list[int], cur_counts: list[int], n_ref: int,
            n_cur: int) -> float:
    """Evidently's ``_z_stat_test``: two-proportion z-test of "not the smallest key"."""
    import numpy as np
    from scipy.stats import norm

    ref_values = [k for k, c in zip(keys, ref_counts, strict=True) if c]
    cur_values = [k for k, c in zip(keys, cur_counts, strict=True) if c]
    if len(ref_values) == 1 and len(cur_values) == 1 and ref_values[0] == cur_values[0]:
        return 1.0
    first = sorted(keys)[0]
    p1 = float(n_ref - ref_counts[keys.index(first)]) / n_ref
    p2 = float(n_cur - cur_counts[keys.index(first)]) / n_cur
    pooled = float(p1 * n_ref + p2 * n_cur) / (n_ref + n_cur)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n_ref + 1.0 / n_cur))
    return float(2 * (1 - norm.cdf(np.abs(z))))


def _column(column: str, kind: str, stattest: str, score: float, drifted: bool | None,
            detail: str) -> ColumnDrift:
    threshold = STATTESTS[stattest][1]
    if drifted is None:  # z: p-value below the threshold
        drifted = score < threshold
    return ColumnDrift(column=column, kind=kind, stattest=stattest, score=float(score),
                       threshold=threshold, drifted=bool(drifted), detail=detail)
