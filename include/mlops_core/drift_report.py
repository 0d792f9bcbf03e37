"""The drift report: Evidently's ``DataDriftPreset`` HTML and JSON, showing the full-data numbers
that :func:`include.mlops_core.drift.detect_drift` computed.

Evidently renders the report on a seeded random sample of both frames (its histograms and
tables are the readable part; running it on millions of rows takes minutes). The numbers come
from the full data through Evidently's documented extension point for custom drift methods
(``StatTest`` + ``register_stattest`` from ``evidently.legacy.calculations.stattests``, the
import path Evidently 0.7's "Customize Data Drift" page gives; 0.7 has no other): for each test
the result uses, :func:`render_report` registers a ``StatTest`` whose function returns this
result's full-data score and verdict for the column it is handed (found by the Series name,
which Evidently keeps) and ignores the sample, and names it for each column through
``DataDriftPreset(per_column_method=...)``. The function closes over this result only, and its
name carries a digest of this result's scores (``mlops_full_data_<test>_<digest>``): two reports
of different results register different names, even at the same time in two threads, and a name
always means the same numbers, so no report waits for another and nothing is cleaned up after
one. Evidently keeps what is registered for the life of the process (a few small objects per
distinct result).

The finished report is checked: every ``ValueDrift`` value must equal the full-data score and
``DriftedColumnsCount`` the full-data count, else :class:`DriftCheckError`. A banner at the top
says that the scores are from the full data and the plots from a sample; broken columns are left
out of the Evidently report and named in the banner.

No Airflow import here; Evidently is imported inside :func:`render_report` only (``import
evidently`` takes seconds).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from include.mlops_core.drift import STATTESTS, ColumnDrift, DriftResult
from include.mlops_core.errors import DriftCheckError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

FULL_DATA_PREFIX = "mlops_full_data_"  # registered StatTest names: mlops_full_data_<test>_<digest>
FULL_DATA_DISPLAY = "{display} (full data)"  # the method name the report shows
SAMPLE_TOP_UP = 100  # usable rows added for a column that the random sample leaves empty

# Names this module registered with Evidently: each is registered once per process, since
# ``register_stattest`` first empties a name's implementations and then adds one, and a report
# of the same result running in another thread could look the name up in between. The numbers
# travel only in the registered functions (closures over one result), never through this set.
_REGISTER_LOCK = threading.Lock()
_REGISTERED: set[str] = set()


def render_report(reference: pd.DataFrame, current: pd.DataFrame, result: DriftResult, *,
                  numeric: list[str], categorical: list[str], sample_rows: int = 20_000,
                  seed: int = 0) -> tuple[str, dict[str, Any]]:
    """Evidently's DataDriftPreset report (HTML, JSON dict) showing ``result``'s full-data numbers.

    Plots come from a seeded random sample of ``sample_rows`` rows per side (the whole frame when
    it is smaller); the scores, thresholds, per-column verdicts and drifted count are the full-data
    ones of ``result`` (see the module docstring). Broken columns are left out of the Evidently
    report; the JSON dict carries ``result.as_dict()`` under ``"mlops"`` and the sample sizes
    under ``"report_sample"``. Safe to call from several threads at once.

    :raises DriftCheckError: the finished report does not show the full-data numbers
    """
    import numpy as np

    checked = {c.column: c for c in result.columns}
    kinds = {c: "numeric" for c in numeric if c in checked}
    kinds |= {c: "categorical" for c in categorical if c in checked}
    if set(kinds) != set(checked):
        raise ValueError(f"render_report: result columns {sorted(set(checked) - set(kinds))} "
                         "are not in numeric / categorical")
    rng = np.random.default_rng(seed)
    ref_pos = _sample_positions(reference, kinds, sample_rows, rng)
    cur_pos = _sample_positions(current, kinds, sample_rows, rng)
    sample_info = {"reference_rows": int(ref_pos.size), "current_rows": int(cur_pos.size),
                   "seed": seed, "full_data_statistics": True}
    if not kinds:
        return _empty_report(result), {"metrics": [], "tests": [], "mlops": result.as_dict(),
                                       "report_sample": sample_info}
    ref_sample = _sample(reference, list(kinds), ref_pos)
    cur_sample = _sample(current, list(kinds), cur_pos)

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    methods = full_data_stattests(result.columns)
    definition = DataDefinition(
        numerical_columns=[c for c, k in kinds.items() if k == "numeric"],
        categorical_columns=[c for c, k in kinds.items() if k == "categorical"])
    preset = DataDriftPreset(
        columns=list(kinds), drift_share=result.drift_share,
        per_column_method={c: methods[c] for c in kinds},
        per_column_threshold={c: checked[c].threshold for c in kinds})
    # np.errstate: Evidently's own means and histograms warn on the inf values it keeps for plots
    with np.errstate(invalid="ignore"):
        snapshot = Report([preset], include_tests=True).run(
            current_data=Dataset.from_pandas(cur_sample, data_definition=definition),
            reference_data=Dataset.from_pandas(ref_sample, data_definition=definition))
    report = json.loads(snapshot.json())
    _check_injection(report, result)
    report["mlops"] = result.as_dict()
    report["report_sample"] = sample_info
    html = snapshot.get_html_str(as_iframe=False)
    return _with_banner(html, result, sample_info), report


# --------------------------------------------------------------------------------------------
# the full-data StatTests


def full_data_stattests(columns: list[ColumnDrift]) -> dict[str, str]:
    """Register, for each test that ``columns`` use, an Evidently ``StatTest`` whose function
    returns these columns' full-data scores and verdicts; returns column -> StatTest name.

    The name is ``mlops_full_data_<test>_<digest>``, the digest taken over the columns' names,
    tests, scores and verdicts: the same name always stands for the same numbers, so another
    report of the same result (in this thread or another) reuses it, and reports of different
    results never share a name.
    """
    from evidently import ColumnType
    from evidently.legacy.calculations.stattests import StatTest, register_stattest

    digest = _digest(columns)
    names = {test: f"{FULL_DATA_PREFIX}{test}_{digest}" for test in {c.stattest for c in columns}}
    with _REGISTER_LOCK:  # register a name once: Evidently's registration is two steps
        for stattest, name in sorted(names.items()):
            if name in _REGISTERED:
                continue
            display, threshold = STATTESTS[stattest]
            register_stattest(
                StatTest(name=name, display_name=FULL_DATA_DISPLAY.format(display=display),
                         allowed_feature_types=[ColumnType.Numerical, ColumnType.Categorical],
                         default_threshold=threshold),
                default_impl=_full_data_function(stattest, columns))
            _REGISTERED.add(name)
    return {c.column: names[c.stattest] for c in columns}


def _digest(columns: list[ColumnDrift]) -> str:
    text = json.dumps([[c.column, c.stattest, repr(c.score), c.drifted] for c in columns],
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _full_data_function(stattest: str,
                        columns: list[ColumnDrift]) -> Callable[..., tuple[float, bool]]:
    """A StatTest function returning the full-data (score, drifted) of the column it is handed
    (by the Series name); it never looks at the sample."""
    found = {c.column: (c.score, c.drifted) for c in columns if c.stattest == stattest}

    def full_data(reference_data: pd.Series, current_data: pd.Series, feature_type: Any,
                  threshold: float) -> tuple[float, bool]:
        if reference_data.name not in found:
            raise DriftCheckError(f"Drift report: no full-data {stattest} result for column "
                                  f"{reference_data.name!r}")
        return found[reference_data.name]

    full_data.__name__ = f"{FULL_DATA_PREFIX}{stattest}"
    return full_data


def _check_injection(report: dict[str, Any], result: DriftResult) -> None:
    """Every ValueDrift of the report must carry the full-data score; DriftedColumnsCount the
    full-data count."""
    scores = {c.column: c.score for c in result.columns}
    seen = {}
    for metric in report["metrics"]:
        config = metric.get("config", {})
        if config.get("type") == "evidently:metric_v2:ValueDrift":
            seen[config["column"]] = metric["value"]
        elif config.get("type") == "evidently:metric_v2:DriftedColumnsCount":
            count = metric["value"]["count"]
            if count != len(result.drifted_columns):
                raise DriftCheckError(f"Drift report: Evidently counted {count} drifted columns, "
                                      f"the full-data check {len(result.drifted_columns)}")
    wrong = [c for c, s in scores.items() if c not in seen or not _same_score(seen[c], s)]
    if wrong:
        raise DriftCheckError(f"Drift report: full-data scores were not injected for {wrong}")


def _same_score(reported: Any, score: float) -> bool:
    if isinstance(reported, float) and math.isnan(reported):
        return math.isnan(score)
    return reported == score


# --------------------------------------------------------------------------------------------
# the sample the plots are drawn from


def _sample_positions(frame: pd.DataFrame, columns: dict[str, str], size: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Sorted row positions: ``size`` random rows, topped up with up to 100 usable rows of any
    column that the random rows leave without a usable value (Evidently rejects such a column)."""
    import numpy as np

    n = len(frame)
    if n <= size:
        return np.arange(n)
    picked = [rng.choice(n, size=size, replace=False)]
    for column, kind in columns.items():
        if not _usable(frame[column].iloc[picked[0]], kind).any():
            candidates = np.flatnonzero(_usable(frame[column], kind))
            picked.append(rng.choice(candidates, size=min(SAMPLE_TOP_UP, candidates.size),
                                     replace=False))
    return np.unique(np.concatenate(picked))


def _usable(series: pd.Series, kind: str) -> np.ndarray:
    """Rows Evidently keeps: finite numbers, non-missing categories."""
    import numpy as np

    if kind == "numeric":
        return np.isfinite(series.to_numpy(dtype=np.float64, na_value=np.nan))
    return series.notna().to_numpy()


def _sample(frame: pd.DataFrame, columns: list[str], positions: np.ndarray) -> pd.DataFrame:
    import pandas as pd

    sample = pd.DataFrame({c: frame[c].iloc[positions].reset_index(drop=True) for c in columns})
    sample.index = pd.Index(positions, name="row")
    return sample


# --------------------------------------------------------------------------------------------
# HTML around Evidently's report


def _with_banner(html: str, result: DriftResult, sample: dict[str, Any]) -> str:
    import html as html_lib

    lines = [f"Drift statistics, verdicts and counts are computed on the full data "
             f"({result.reference_rows:,} reference rows, {result.current_rows:,} current rows); "
             f"the plots show a seeded random sample ({sample['reference_rows']:,} and "
             f"{sample['current_rows']:,} rows, seed {sample['seed']})."]
    lines += [f"Not checked: {b}" for b in result.broken]
    banner = ('<div style="font-family:sans-serif;padding:8px 16px;background:#fff8e1;'
              'border-bottom:1px solid #e0c97f">'
              + "<br>".join(html_lib.escape(line) for line in lines) + "</div>")
    return with_section(html, banner)


def _empty_report(result: DriftResult) -> str:
    import html as html_lib

    items = "".join(f"<li>{html_lib.escape(b)}</li>" for b in result.broken)
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Drift report</title></head>"
            f"<body><h1>Drift report</h1><p>No column could be checked.</p><ul>{items}</ul>"
            "</body></html>")


def importance_section(result: DriftResult, importance: dict[str, float] | None) -> str:
    """An HTML section for the top of the report: the drifted columns ranked by the champion's
    importance, so the on-call engineer sees at once whether a drifted column matters."""
    import html

    if not result.drifted_columns:
        return ""
    if not importance:
        note = ("The champion has no recorded explanation (trained before explanations were "
                "kept, or its explanation failed): drifted columns are not ranked.")
        return f'<section style="font-family:sans-serif;margin:1em"><p>{html.escape(note)}</p></section>'
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>"
        f"{f'{importance[c]:.1%}' if c in importance else 'not a model input'}</td></tr>"
        for c in result.ranked(importance))
    return ('<section style="font-family:sans-serif;margin:1em"><h2>Drifted columns by the '
            "champion's importance</h2><p>Share of the champion's mean |SHAP| on its held-out "
            "rows: a drifted column with a large share changes its predictions most.</p>"
            '<table border="1" cellpadding="4" style="border-collapse:collapse"><tr>'
            f"<th>column</th><th>importance</th></tr>{rows}</table></section>")


def with_section(report_html: str, section: str) -> str:
    """``report_html`` with ``section`` at the top of its body."""
    import re

    if not section:
        return report_html
    match = re.search(r"<body[^>]*>", report_html)
    if not match:
        return section + report_html
    return report_html[:match.end()] + section + report_html[match.end():]
