"""Costs that grow with the day's data, not with the history (issue 15): the canary split, the
A/B decision's reads and the drift check's reference output give the same results as the old,
full-history formulas."""

from __future__ import annotations

import hashlib
import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.mlops_core import ingest as ingestion
from include.mlops_core.monitor import (
    INDEX_COMPLETE,
    ab_history,
    ab_statistics,
    cached_reference_output,
    index_live_day,
    index_live_history,
    live_index_root,
    reference_output_uri,
)
from include.mlops_core.pipeline import RunContext
from include.mlops_core.scoring import canary_mask
from include.mlops_core.storage import ObjectStore, join
from tests.unit.helpers import churn_config, churn_raw, regression_config

MODEL = "churn_model"
START = date(2025, 1, 1)


# -- canary split -----------------------------------------------------------------------------------
def old_canary_mask(keys: pd.Series, share: float, salt: str) -> np.ndarray:
    """The formula before issue 15, one row at a time: the reference the split must keep."""
    if share <= 0:
        return np.zeros(len(keys), dtype=bool)
    digests = [hashlib.sha256(f"{salt}:{k}".encode()).digest()[:8] for k in keys.astype(str)]
    values = np.array([int.from_bytes(d, "big") for d in digests], dtype=np.float64) / 2.0**64
    return values < share


def _random_keys() -> list[pd.Series]:
    rng = np.random.default_rng(15)
    return [
        pd.Series(rng.integers(0, 3_000, 20_000)),  # ints, many duplicates
        pd.Series(rng.integers(-(2**62), 2**62, 5_000)),
        pd.Series(rng.integers(0, 2**64 - 1, 2_000, dtype=np.uint64)),
        pd.Series([f"C{i:06d}" for i in rng.integers(0, 2_000, 10_000)]),  # strings, duplicates
        pd.Series(["é", "ü", "é", "日本", ""]),
        pd.Series([f"K{i}" for i in rng.permutation(6_000)]),  # distinct: hashed row by row
        pd.Series([f"K{i}" for i in range(5_000)] + [f"K{i}" for i in range(0, 5_000, 3)]),
        pd.Series(rng.normal(size=2_000)),  # floats print as "0.123..."
        pd.Series(rng.integers(0, 50, 1_000).astype(float)),  # "3.0", not "3"
        pd.Series([1, 1.0, True, "1", None, np.nan, 2] * 5, dtype=object),  # equal, not same str
        pd.Series([1, None, 3, 3], dtype="Int64"),
        pd.Series(["a", None, "a", "b"], dtype="string"),
        pd.Series(["x", "y", "x"], dtype="category"),
        pd.Series([True, False, True]),
        pd.Series(pd.to_datetime(["2025-01-01", "2025-01-02", "2025-01-01"])),
        pd.Series(pd.to_datetime(["2025-01-01", "2025-01-02 03:00:00"], format="ISO8601")),
        pd.Series([], dtype="int64"),
    ]


@pytest.mark.parametrize("case", range(len(_random_keys())))
@pytest.mark.parametrize("share", [0.0, 0.05, 0.3, 0.5])
def test_canary_mask_equals_the_old_row_by_row_formula(case: int, share: float) -> None:
    keys = _random_keys()[case]
    for salt in ("churn_model", "other"):
        new = canary_mask(keys, share, salt)
        assert new.dtype == bool and len(new) == len(keys)
        assert np.array_equal(new, old_canary_mask(keys, share, salt)), (keys.dtype, share, salt)


def test_canary_mask_of_a_shuffled_index_keeps_each_key_in_its_arm() -> None:
    keys = pd.Series(np.random.default_rng(1).integers(0, 500, 3_000))
    shuffled = keys.sample(frac=1.0, random_state=2)
    assert np.array_equal(canary_mask(shuffled, 0.3, "m"), old_canary_mask(shuffled, 0.3, "m"))


# -- A/B decision: the challenger's days through the live index -------------------------------------
def _joined_day(day: date, rng: np.random.Generator, *, champion: str, challenger: str | None,
                mode: str, rows: int = 120, task: str = "classification") -> pd.DataFrame:
    """One day's ``live/date=*/joined.parquet`` as live_performance writes it."""
    ids = [f"C{day:%m%d}{i:04d}" for i in range(rows)]
    if task == "classification":
        label = rng.integers(0, 2, rows).astype(float)
        score = np.clip(0.5 * label + rng.normal(0.25, 0.25, rows), 0, 1)
        prediction = (score > 0.5).astype(int)
        shadow_score = np.clip(0.6 * label + rng.normal(0.2, 0.2, rows), 0, 1)
        shadow_prediction = (shadow_score > 0.5).astype(int)
    else:
        label = rng.normal(50, 10, rows)
        prediction = label + rng.normal(0, 5, rows)
        score = np.full(rows, np.nan)
        shadow_prediction = label + rng.normal(0, 4, rows)
        shadow_score = np.full(rows, np.nan)
    frame = pd.DataFrame({"customer_id": ids, "prediction": prediction, "score": score,
                          "arm": "champion", "model_version": champion, "model_run_id": "r",
                          "model_name": MODEL, "partition_date": day.isoformat(),
                          "scoring_run_id": "s", "label": label})
    if challenger is not None:
        if mode == "canary":
            canary = canary_mask(frame["customer_id"], 0.3, MODEL)
            frame.loc[canary, "prediction"] = shadow_prediction[canary]
            frame.loc[canary, "score"] = shadow_score[canary]
            frame.loc[canary, "model_version"] = challenger
            frame.loc[canary, "arm"] = "challenger"
        frame["shadow_prediction"] = shadow_prediction
        frame["shadow_score"] = shadow_score
        frame["shadow_version"] = challenger
        frame["champion_prediction"] = prediction
        frame["champion_score"] = score
    return frame


def _write_live_day(store: ObjectStore, root: str, day: date, joined: pd.DataFrame, *,
                    indexed: bool = True) -> None:
    """What live_performance writes (``indexed=False``: a day written before the index)."""
    if indexed:
        index_live_day(store, root, MODEL, day, joined)
    store.write_bytes(join(root, MODEL, "live", f"date={day.isoformat()}", "joined.parquet"),
                      ingestion.to_parquet_bytes(joined))


def old_history(store: ObjectStore, root: str, day: date) -> pd.DataFrame:
    """The read before issue 15: every live day up to ``day``."""
    frames = []
    live = join(root, MODEL, "live")
    for prefix in store.list_prefixes(live):
        uri = join(live, prefix, "joined.parquet")
        if prefix <= f"date={day.isoformat()}" and store.exists(uri):
            frames.append(ingestion.read_parquet_bytes(store.read_bytes(uri)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _build_history(store: ObjectStore, root: str, mode: str, task: str = "classification",
                   legacy_days: int = 12) -> list[date]:
    """60 days: champion v1 alone, a rejected challenger v2, v1 alone, then challenger v3 (the
    first ``legacy_days`` written before the index existed)."""
    rng = np.random.default_rng(7)
    days = []
    for i in range(60):
        day = START + timedelta(days=i)
        challenger = "2" if 15 <= i < 25 else "3" if i >= 45 else None
        joined = _joined_day(day, rng, champion="1", challenger=challenger, mode=mode, task=task)
        if i % 9 == 4:  # some days lose a column or two (older predictions)
            joined = joined.drop(columns=["scoring_run_id"])
        _write_live_day(store, root, day, joined, indexed=i >= legacy_days)
        days.append(day)
    return days


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _assert_same_decision(config, old_rows, new_rows, cv: str, hv: str = "1") -> dict:
    from include.mlops_core.gate import decide_ab

    old = ab_statistics(config, old_rows, challenger=cv, champion=hv)
    new = ab_statistics(config, new_rows, challenger=cv, champion=hv)
    assert old[0] == new[0]  # rows per arm
    assert _same(old[1], new[1])  # live metrics, bit for bit
    assert (old[2] is None) == (new[2] is None)
    if old[2] is not None:
        assert _same(old[2].as_dict(), new[2].as_dict())  # interval, p-value, rows
    verdicts = [decide_ab(config, challenger=live["challenger"],
                          champion={"version": hv, "metrics": live["champion"]},
                          interval=interval, rows=counts, trial_days=3)
                for counts, live, interval in (old, new)]
    assert verdicts[0].verdict == verdicts[1].verdict
    assert verdicts[0].decision.reasons == verdicts[1].decision.reasons
    return {"rows": new[0], "verdict": verdicts[1].verdict}


@pytest.mark.parametrize("mode", ["canary", "shadow"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_ab_decision_on_the_indexed_days_equals_the_full_history_read(tmp_path: Path, mode: str,
                                                                      task: str) -> None:
    store, root = ObjectStore(), str(tmp_path)
    days = _build_history(store, root, mode, task)
    make = churn_config if task == "classification" else regression_config
    config = make(rollout={"mode": mode, "min_labelled_rows": 50, "bootstrap_resamples": 200})
    checked = 0
    for day in (days[10], days[20], days[30], days[46], days[-1]):
        for cv in ("2", "3", "9"):
            new = ab_history(store, root, MODEL, day, cv)
            old = old_history(store, root, day)
            result = _assert_same_decision(config, old, new, cv)
            checked += result["rows"]["challenger"] > 0
            if cv == "3":  # only v3's days are read
                assert set(new["partition_date"]) <= {d.isoformat() for d in days[45:]}
    assert checked >= 4
    # The live days written before the index were indexed once, by the first decision.
    assert store.exists(join(live_index_root(root, MODEL), INDEX_COMPLETE))
    assert store.list_prefixes(join(live_index_root(root, MODEL), "v2")) == [
        f"date={d.isoformat()}" for d in days[15:25]]


def test_a_rerun_of_a_live_day_adds_nothing_to_the_decision(tmp_path: Path) -> None:
    store, root = ObjectStore(), str(tmp_path)
    days = _build_history(store, root, "shadow", legacy_days=0)
    config = churn_config(rollout={"mode": "shadow", "min_labelled_rows": 50,
                                   "bootstrap_resamples": 200})
    before = ab_history(store, root, MODEL, days[-1], "3")
    index = join(live_index_root(root, MODEL), "v3")
    listing = sorted(str(p) for p in Path(index).rglob("*"))
    joined = ingestion.read_parquet_bytes(store.read_bytes(
        join(root, MODEL, "live", f"date={days[-1].isoformat()}", "joined.parquet")))
    for _ in range(2):  # live_performance re-run twice for the same day
        _write_live_day(store, root, days[-1], joined)
    index_live_history(store, root, MODEL)  # already complete: reads nothing
    after = ab_history(store, root, MODEL, days[-1], "3")
    assert sorted(str(p) for p in Path(index).rglob("*")) == listing
    pd.testing.assert_frame_equal(before, after)
    _assert_same_decision(config, old_history(store, root, days[-1]), after, "3")
    assert len(after) == 15 * 120  # 15 days of v3, each once


def test_no_live_day_of_the_challenger_yet_is_zero_rows_not_an_error(tmp_path: Path) -> None:
    store, root = ObjectStore(), str(tmp_path)
    config = churn_config(rollout={"mode": "shadow"})
    for mode in ("shadow", "canary"):
        config = churn_config(rollout={"mode": mode})
        rows = ab_history(store, root, MODEL, START, "5")
        counts, live, interval = ab_statistics(config, rows, challenger="5", champion="1")
        assert counts == {"champion": 0, "challenger": 0} and interval is None
        assert live == {"champion": {}, "challenger": {}}


# -- drift check: the reference output, once per champion version ----------------------------------
def _stage(tmp_path: Path, **overrides: object) -> RunContext:
    return RunContext(config=churn_config(**overrides), store=ObjectStore(), client=None,
                 mlflow_run_id="", artifacts_uri=str(tmp_path), run_key="2025-01-01T000000")


def test_reference_output_is_computed_once_per_version_and_read_back(tmp_path: Path) -> None:
    run_ctx = _stage(tmp_path)
    output = np.array([0.25, 0.5, np.nan, 1 / 3, np.nan])
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return output

    first = cached_reference_output(run_ctx, "4", "s3://b/snap.parquet", 5, compute)
    second = cached_reference_output(run_ctx, "4", "s3://b/snap.parquet", 5, compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(first, output)
    assert first.tobytes() == second.tobytes()  # bit for bit, NaN where not held out
    uri = reference_output_uri(run_ctx, "4", "s3://b/snap.parquet")
    assert "/drift/reference/v4/" in uri and run_ctx.store.exists(uri)
    # Another version, snapshot or feature list is another object.
    assert reference_output_uri(run_ctx, "5", "s3://b/snap.parquet") != uri
    assert reference_output_uri(run_ctx, "4", "s3://b/other.parquet") != uri
    fewer = _stage(tmp_path, columns=[c for c in churn_raw()["columns"]
                                      if c["name"] != "support_calls"])
    assert reference_output_uri(fewer, "4", "s3://b/snap.parquet") != uri


def test_a_cached_reference_output_of_another_length_or_unreadable_is_recomputed(
        tmp_path: Path) -> None:
    run_ctx = _stage(tmp_path)
    uri = reference_output_uri(run_ctx, "4", "s3://b/snap.parquet")
    cached_reference_output(run_ctx, "4", "s3://b/snap.parquet", 3, lambda: np.ones(3))
    again = cached_reference_output(run_ctx, "4", "s3://b/snap.parquet", 4, lambda: np.zeros(4))
    np.testing.assert_array_equal(again, np.zeros(4))
    run_ctx.store.write_bytes(uri, b"not parquet")
    fixed = cached_reference_output(run_ctx, "4", "s3://b/snap.parquet", 2, lambda: np.full(2, 0.5))
    np.testing.assert_array_equal(fixed, [0.5, 0.5])
    assert len(ingestion.read_parquet_bytes(run_ctx.store.read_bytes(uri))) == 2  # repaired
