"""include/mlops_core/drift.py: per-column verdicts equal to Evidently 0.7's own DataDriftPreset (run
here on small frames), the report with the full-data numbers injected, and the failure cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wasserstein_distance

from include.mlops_core.drift import (
    CURRENT,
    REFERENCE,
    STATTESTS,
    ColumnDrift,
    DriftResult,
    detect_drift,
    wasserstein_sorted,
)
from include.mlops_core.drift_report import FULL_DATA_PREFIX, render_report
from include.mlops_core.errors import DriftCheckError, SchemaError

NUMERIC = ["normal", "with_nan", "counts", "three_values", "binary", "skewed"]
CATEGORICAL = ["letters", "yes_no", "codes"]


def make_frames(n_ref: int, n_cur: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mixed columns: continuous, NaN and inf, integers, 3- and 2-valued numbers, strings with
    unseen categories and None, numeric codes declared categorical."""
    rng = np.random.default_rng(seed)

    def frame(n: int, shift: float) -> pd.DataFrame:
        with_nan = rng.normal(0, 1 + shift, n)
        with_nan[rng.random(n) < 0.1] = np.nan
        with_nan[:3] = [np.inf, -np.inf, np.nan]  # Evidently drops inf with the NaN
        letters = list("abcd") + (list("efghijk") if shift else [])
        return pd.DataFrame({
            "normal": rng.normal(shift, 1, n),
            "with_nan": with_nan,
            "counts": rng.integers(0, 50 + int(shift * 10), n),
            "three_values": rng.choice([0.0, 1.0, 2.0], n, p=[0.5, 0.3, 0.2] if not shift else [0.4, 0.3, 0.3]),
            "binary": rng.choice([0, 1], n).astype(float),
            "skewed": rng.exponential(1 + shift / 5, n),
            "letters": rng.choice(letters, n),
            "yes_no": pd.Series(rng.choice(["yes", "no"], n)).where(rng.random(n) > 0.05, None),
            "codes": rng.choice([1.0, 2.0, 3.0, 4.0], n),
        })

    return frame(n_ref, 0.0), frame(n_cur, 0.3)


def evidently_verdicts(reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str],
                       categorical: list[str], drift_share: float = 0.5) -> dict[str, Any]:
    """Evidently's own DataDriftPreset on the full frames: per column (stattest, score, drifted)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    with np.errstate(invalid="ignore", divide="ignore"):  # Evidently's means over inf, chi-square
        snapshot = Report([DataDriftPreset(drift_share=drift_share)], include_tests=True).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition))
    names = {display: name for name, (display, _) in STATTESTS.items()}
    report = json.loads(snapshot.json())
    out: dict[str, Any] = {"columns": {}}
    for metric in report["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":ValueDrift"):
            out["columns"][config["column"]] = [names[config["method"]], metric["value"]]
        elif config["type"].endswith(":DriftedColumnsCount"):
            out["count"] = int(metric["value"]["count"])
    for test in report["tests"]:
        if test["name"].startswith("Value Drift for column "):
            out["columns"][test["name"].removeprefix("Value Drift for column ")].append(
                test["status"] == "FAIL")
        elif test["name"].startswith("Share of Drifted Columns"):
            out["dataset_drift"] = test["status"] == "FAIL"  # the test is share < drift_share
    return out


def assert_same_as_evidently(result: DriftResult, evidently: dict[str, Any]) -> None:
    assert {c.column for c in result.columns} == set(evidently["columns"])
    for column in result.columns:
        stattest, score, drifted = evidently["columns"][column.column]
        assert column.stattest == stattest, column
        assert column.score == pytest.approx(score, abs=1e-9, rel=0), column
        assert column.drifted == drifted, column
    assert len(result.drifted_columns) == evidently["count"]
    assert result.dataset_drift == evidently["dataset_drift"]


def test_stattest_table_matches_evidentlys_registry() -> None:
    from evidently.legacy.calculations import stattests

    for name, test in [("wasserstein", stattests.wasserstein_stat_test),
                       ("jensenshannon", stattests.jensenshannon_stat_test),
                       ("ks", stattests.ks_stat_test), ("chisquare", stattests.chi_stat_test),
                       ("z", stattests.z_stat_test)]:
        assert (test.name, test.display_name, test.default_threshold) == (name, *STATTESTS[name])


@pytest.mark.parametrize(("n_ref", "n_cur", "expected_tests"), [
    pytest.param(3000, 2000, {"wasserstein", "jensenshannon"}, id="reference-over-1000"),
    pytest.param(500, 700, {"ks", "chisquare", "z"}, id="reference-under-1000"),
    pytest.param(800, 3000, {"ks", "chisquare", "z"}, id="small-reference-large-current"),
])
def test_verdicts_equal_evidentlys(n_ref: int, n_cur: int, expected_tests: set[str]) -> None:
    reference, current = make_frames(n_ref, n_cur, seed=n_ref)
    result = detect_drift(reference, current, numeric=NUMERIC, categorical=CATEGORICAL)
    assert {c.stattest for c in result.columns} == expected_tests
    assert result.broken == []
    assert 0 < len(result.drifted_columns) < len(result.columns)  # both verdicts are exercised
    assert_same_as_evidently(result, evidently_verdicts(reference, current, NUMERIC, CATEGORICAL))


def test_dataset_drift_verdict_equals_evidentlys_when_most_columns_drift() -> None:
    reference, current = make_frames(1500, 1500, seed=3)
    current = current.assign(binary=current["binary"].where(current["binary"] > 0, 2.0),
                             codes=current["codes"] * 2, skewed=current["skewed"] * 2)
    result = detect_drift(reference, current, numeric=NUMERIC, categorical=CATEGORICAL,
                          drift_share=0.6)
    assert result.share >= 0.6 and result.dataset_drift
    assert_same_as_evidently(
        result, evidently_verdicts(reference, current, NUMERIC, CATEGORICAL, drift_share=0.6))


def test_planted_drift_at_the_threshold_gets_evidentlys_verdict() -> None:
    rng = np.random.default_rng(11)
    base = rng.normal(10, 3, 3000)
    std = float(np.std(base))
    reference = pd.DataFrame({"above": base, "below": base})
    current = pd.DataFrame({"above": rng.permutation(base) + 0.1002 * std,
                            "below": rng.permutation(base) + 0.0998 * std})
    result = detect_drift(reference, current, numeric=["above", "below"], categorical=[])
    scores = {c.column: c.score for c in result.columns}
    assert 0.1 < scores["above"] < 0.1005 and 0.0995 < scores["below"] < 0.1
    assert result.drifted_columns == ["above"]
    assert result.dataset_drift  # 1 of 2 columns: share 0.5 >= drift_share 0.5
    assert_same_as_evidently(result, evidently_verdicts(reference, current, ["above", "below"], []))


def test_wasserstein_is_scipys_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    for x, y in [(rng.normal(size=20_000), rng.normal(0.1, 1.2, 15_000)),
                 (np.round(rng.normal(size=5000), 1), np.round(rng.normal(size=7000), 1)),  # ties
                 (np.array([0.0, 1.0, 3.0]), np.array([5.0, 6.0, 8.0]))]:
        assert wasserstein_sorted(np.sort(x), np.sort(y)) == wasserstein_distance(x, y)


def test_threads_change_nothing() -> None:
    reference, current = make_frames(2000, 2000, seed=8)
    one = detect_drift(reference, current, numeric=NUMERIC, categorical=CATEGORICAL, workers=1)
    four = detect_drift(reference, current, numeric=NUMERIC, categorical=CATEGORICAL, workers=4)
    assert one == four


def test_all_missing_column_is_listed_as_broken_not_checked() -> None:
    reference, current = make_frames(1500, 1500, seed=9)
    current["normal"] = np.nan
    reference["yes_no"] = None
    result = detect_drift(reference, current, numeric=NUMERIC, categorical=CATEGORICAL)
    assert {c.column for c in result.columns} == set(NUMERIC + CATEGORICAL) - {"normal", "yes_no"}
    assert result.broken == [
        f"normal (numeric): no usable value (missing or infinite) in all 1,500 rows of the {CURRENT}",
        f"yes_no (categorical): no usable value (missing or infinite) in all 1,500 rows of the {REFERENCE}",
    ]
    assert result.share == len(result.drifted_columns) / 7
    assert "2 not checked: normal (numeric)" in result.summary_line("s3://b/r.html")


@pytest.mark.parametrize(("side", "where"), [
    pytest.param("current", CURRENT, id="current"), pytest.param("reference", REFERENCE, id="reference")])
def test_missing_column_names_the_column_and_the_side(side: str, where: str) -> None:
    reference, current = make_frames(1200, 1200, seed=1)
    frames = {"reference": reference, "current": current}
    frames[side] = frames[side].drop(columns=["skewed"])
    with pytest.raises(SchemaError, match=rf"'skewed' \(declared numeric\) is missing from the {where}"):
        detect_drift(frames["reference"], frames["current"], numeric=NUMERIC, categorical=CATEGORICAL)


def test_numeric_column_holding_strings_is_a_kind_change() -> None:
    reference, current = make_frames(1200, 1200, seed=1)
    current["counts"] = current["counts"].astype(str)
    with pytest.raises(SchemaError, match=r"'counts' is declared numeric but holds strings \(dtype "
                                          rf"object\) in the {CURRENT}; kind changed: numbers in the "
                                          rf"{REFERENCE}, strings in the {CURRENT}") as raised:
        detect_drift(reference, current, numeric=NUMERIC, categorical=CATEGORICAL)
    assert "runbook: docs/runbooks/schema-mismatch.md" in str(raised.value)


def test_categorical_column_turned_numeric_is_a_kind_change() -> None:
    reference, current = make_frames(1200, 1200, seed=1)
    current["letters"] = np.arange(1200.0)
    with pytest.raises(SchemaError, match=rf"'letters' \(declared categorical\) changed kind: strings "
                                          rf"\(dtype object\) in the {REFERENCE}, numbers"):
        detect_drift(reference, current, numeric=NUMERIC, categorical=CATEGORICAL)


def test_unseen_categories_are_tested_and_named() -> None:
    reference, current = make_frames(1500, 1500, seed=2)
    result = detect_drift(reference, current, numeric=[], categorical=["letters"])
    (letters,) = result.columns
    assert letters.stattest == "jensenshannon" and letters.drifted
    assert letters.detail.startswith("unseen categories in current: [")
    assert letters.detail.endswith("(+2 more)")  # 7 unseen, 5 named
    named = json.loads(letters.detail.split(": ", 1)[1].split(" (+")[0].replace("'", '"'))
    assert len(named) == 5 and set(named) <= set("efghijk")


@pytest.mark.parametrize("empty", ["reference", "current"])
def test_empty_frame_is_a_clear_error(empty: str) -> None:
    reference, current = make_frames(1200, 1200, seed=1)
    frames = {"reference": reference, "current": current}
    frames[empty] = frames[empty].iloc[:0]
    with pytest.raises(DriftCheckError, match="has no rows"):
        detect_drift(frames["reference"], frames["current"], numeric=NUMERIC, categorical=CATEGORICAL)


def test_bad_arguments() -> None:
    reference, current = make_frames(1200, 1200, seed=1)
    with pytest.raises(ValueError, match="more than once"):
        detect_drift(reference, current, numeric=["normal"], categorical=["normal"])
    with pytest.raises(ValueError, match="no columns declared"):
        detect_drift(reference, current, numeric=[], categorical=[])


def test_result_dict_summary_and_dataset_rule() -> None:
    columns = [ColumnDrift("a", "numeric", "wasserstein", 0.3, 0.1, True),
               ColumnDrift("b", "categorical", "jensenshannon", 0.01, 0.1, False)]
    result = DriftResult(columns=columns, drift_share=0.5, reference_rows=10, current_rows=12, broken=[])
    assert result.share == 0.5 and result.dataset_drift  # Evidently: share >= drift_share
    assert result.summary_line("s3://bucket/drift.html") == (
        "Drift: 1 of 2 columns drifted (share 0.50, threshold 0.50): a; report s3://bucket/drift.html")
    as_dict = json.loads(json.dumps(result.as_dict()))
    assert as_dict["drifted_columns"] == ["a"] and as_dict["columns"][1]["stattest"] == "jensenshannon"


def test_report_carries_the_full_data_numbers() -> None:
    reference, current = make_frames(3000, 3000, seed=4)
    reference.loc[20:, "skewed"] = np.nan  # 20 usable values: a 300-row sample may miss them all
    reference["empty"] = np.nan
    current["empty"] = np.nan
    numeric = [*NUMERIC, "empty"]
    result = detect_drift(reference, current, numeric=numeric, categorical=CATEGORICAL)
    assert [b.split(" ")[0] for b in result.broken] == ["empty"]
    html, report = render_report(reference, current, result, numeric=numeric,
                                 categorical=CATEGORICAL, sample_rows=300, seed=1)
    assert report["mlops"] == result.as_dict()
    assert report["report_sample"]["reference_rows"] >= 300
    values = {m["config"]["column"]: (m["config"]["method"], m["value"]) for m in report["metrics"]
              if m["config"]["type"].endswith(":ValueDrift")}
    methods = {c.column: (f"{FULL_DATA_PREFIX}{c.stattest}_", c.score) for c in result.columns}
    assert {c: (m[:m.rindex("_") + 1], v) for c, (m, v) in values.items()} == methods
    assert len({m.rsplit("_", 1)[1] for m, _ in values.values()}) == 1  # one digest per result
    count = next(m["value"]["count"] for m in report["metrics"]
                 if m["config"]["type"].endswith(":DriftedColumnsCount"))
    assert count == len(result.drifted_columns)
    failed = {t["name"].removeprefix("Value Drift for column ") for t in report["tests"]
              if t["name"].startswith("Value Drift") and t["status"] == "FAIL"}
    assert failed == set(result.drifted_columns)
    assert "computed on the full data (3,000 reference rows" in html
    assert "Not checked: empty (numeric)" in html
    assert "Wasserstein distance (normed) (full data)" in html
    json.dumps(report)


def _report_scores(report: dict[str, Any]) -> dict[str, float]:
    return {m["config"]["column"]: m["value"] for m in report["metrics"]
            if m["config"]["type"].endswith(":ValueDrift")}


def test_reports_rendered_at_once_in_threads_each_show_their_own_scores() -> None:
    """The full-data scores reach Evidently through StatTests bound to one result each, not
    through shared state: two reports of different data, run at the same moment, each show
    their own numbers (render_report also checks this itself and would raise)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    frames = [make_frames(1500, 1500, seed=seed) for seed in (21, 22)]
    results = [detect_drift(ref, cur, numeric=NUMERIC, categorical=CATEGORICAL)
               for ref, cur in frames]
    assert [c.score for c in results[0].columns] != [c.score for c in results[1].columns]
    start = threading.Barrier(2)

    def render(i: int) -> dict[str, Any]:
        start.wait()
        return render_report(*frames[i], results[i], numeric=NUMERIC, categorical=CATEGORICAL,
                             sample_rows=300, seed=i)[1]

    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(render, range(2)))
    for result, report in zip(results, reports, strict=True):
        assert _report_scores(report) == {c.column: c.score for c in result.columns}
        assert report["mlops"] == result.as_dict()


def test_full_data_stattests_are_named_by_their_numbers() -> None:
    from include.mlops_core.drift_report import full_data_stattests

    def columns(score: float) -> list[ColumnDrift]:
        return [ColumnDrift("a", "numeric", "wasserstein", score, 0.1, score >= 0.1),
                ColumnDrift("b", "categorical", "jensenshannon", 0.01, 0.1, False)]

    first, again, other = (full_data_stattests(columns(s)) for s in (0.2, 0.2, 0.05))
    assert first == again  # the same numbers: the same names (registered once)
    assert first["a"] != other["a"] and first["b"] != other["b"]
    assert first["a"].startswith(f"{FULL_DATA_PREFIX}wasserstein_")
    assert first["b"].startswith(f"{FULL_DATA_PREFIX}jensenshannon_")


def test_a_report_without_the_full_data_scores_is_refused() -> None:
    from include.mlops_core.drift_report import _check_injection

    result = DriftResult(columns=[ColumnDrift("a", "numeric", "wasserstein", 0.3, 0.1, True),
                                  ColumnDrift("b", "numeric", "wasserstein", float("nan"), 0.1,
                                              False)],
                         drift_share=0.5, reference_rows=10, current_rows=10)

    def report(a: float, count: int) -> dict[str, Any]:
        return {"metrics": [
            {"config": {"type": "evidently:metric_v2:ValueDrift", "column": "a"}, "value": a},
            {"config": {"type": "evidently:metric_v2:ValueDrift", "column": "b"},
             "value": float("nan")},
            {"config": {"type": "evidently:metric_v2:DriftedColumnsCount"},
             "value": {"count": count, "share": count / 2}}]}

    _check_injection(report(0.3, 1), result)
    with pytest.raises(DriftCheckError, match=r"not injected for \['a'\]"):
        _check_injection(report(0.29, 1), result)  # a score from the sample
    with pytest.raises(DriftCheckError, match="counted 2 drifted columns, the full-data check 1"):
        _check_injection(report(0.3, 2), result)


def test_the_statistics_load_without_evidently_and_the_report_imports_it_only_to_render() -> None:
    import subprocess
    import sys

    code = ("import sys; from include.mlops_core import drift; "
            "assert 'evidently' not in sys.modules and 'include.mlops_core.drift_report' not in "
            "sys.modules; from include.mlops_core import drift_report; "
            "assert 'evidently' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


# -- drifted columns ranked by the champion's importance --------------------------------------------
def _drifted(*names: str) -> DriftResult:
    return DriftResult(columns=[ColumnDrift(n, "numeric", "wasserstein", 0.3, 0.1, True)
                                for n in names]
                       + [ColumnDrift("calm", "numeric", "wasserstein", 0.01, 0.1, False)],
                       drift_share=0.5, reference_rows=100, current_rows=100)


def test_drifted_columns_are_ranked_by_the_models_importance() -> None:
    from include.mlops_core.drift_report import importance_section, with_section

    result = _drifted("age", "region", "prediction")
    importance = {"region": 0.6, "age": 0.1, "calm": 0.3}

    assert result.ranked(importance) == ["region", "age", "prediction"]
    assert result.ranked({}) == ["age", "region", "prediction"]
    line = result.summary_line("s3://r/report.html", importance)
    assert "by the model's importance: region (60%), age (10%), prediction (not a feature)" in line
    section = importance_section(result, importance)
    assert section.index("<td>region") < section.index("<td>age") < section.index("<td>prediction")
    assert "60.0%" in section and "not a model input" in section
    page = with_section("<html><body class='x'><div>evidently</div></body></html>", section)
    assert page.index("importance") < page.index("evidently")
    assert "not ranked" in importance_section(result, {})
    assert importance_section(_drifted(), importance) == ""
