"""include/mlops_core/ingest.py: which partitions a run reads, reading them from a local directory,
schema checks with errors that name the file and the column, and the manifest."""

from __future__ import annotations

import gzip
import hashlib
import logging
import random
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.mlops_core.config import DatasetConfig
from include.mlops_core.demo_data import generate, write_partitions
from include.mlops_core.errors import (
    CorruptFileError,
    DataError,
    MissingPartitionError,
    SchemaError,
)
from include.mlops_core.ingest import (
    SOURCE_COLUMN,
    conform,
    fingerprint,
    ingest,
    partition_dates,
    read_parquet_bytes,
    to_parquet_bytes,
)
from include.mlops_core.storage import ObjectNotFoundError, ObjectStore
from tests.unit.helpers import churn_config

D1, D2, D3 = date(2025, 1, 1), date(2025, 1, 2), date(2025, 1, 3)
ROWS = 300


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- partition_dates --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "end", "lookback", "override", "expected"),
    [
        pytest.param(utc(2025, 1, 1), utc(2025, 1, 2), 1, None, [D1], id="daily"),
        pytest.param(utc(2025, 1, 1), utc(2025, 1, 2), 3, None,
                     [date(2024, 12, 30), date(2024, 12, 31), D1], id="daily-lookback-3"),
        pytest.param(utc(2025, 1, 5, 10), utc(2025, 1, 5, 10), 1, None, [date(2025, 1, 5)],
                     id="zero-length"),
        pytest.param(utc(2025, 1, 5, 10), utc(2025, 1, 5, 10), 2, None,
                     [date(2025, 1, 4), date(2025, 1, 5)], id="zero-length-lookback-2"),
        pytest.param(utc(2025, 1, 1, 5), utc(2025, 1, 1, 6), 1, None, [D1], id="hourly"),
        pytest.param(utc(2025, 1, 1), utc(2025, 1, 2, 6), 1, None, [D1, D2], id="ends-mid-day"),
        pytest.param(utc(2025, 1, 6), utc(2025, 1, 13), 1, None,
                     [date(2025, 1, d) for d in range(6, 13)], id="weekly"),
        pytest.param(utc(2025, 1, 6), utc(2025, 1, 13), 10, None,
                     [date(2025, 1, d) for d in range(3, 13)], id="weekly-lookback-longer"),
        pytest.param(utc(2025, 1, 6), utc(2025, 1, 13), 1, date(2024, 2, 29), [date(2024, 2, 29)],
                     id="partition-date-override"),
        pytest.param(utc(2025, 1, 6), utc(2025, 1, 13), 2, date(2024, 3, 1),
                     [date(2024, 2, 29), date(2024, 3, 1)], id="override-with-lookback"),
    ],
)
def test_partition_dates(start: datetime, end: datetime, lookback: int, override: date | None,
                         expected: list[date]) -> None:
    assert partition_dates(start, end, lookback, override) == expected


def _consecutive(days: list[date]) -> bool:
    return all(b - a == timedelta(days=1) for a, b in zip(days, days[1:], strict=False))


@settings(max_examples=200, deadline=None)
@given(start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                          timezones=st.just(UTC)),
       length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40)),
       lookback=st.integers(min_value=1, max_value=60))
def test_partition_dates_cover_the_interval_ending_at_its_last_day(
        start: datetime, length: timedelta, lookback: int) -> None:
    end = start + length
    days = partition_dates(start, end, lookback)

    last = (end - timedelta(microseconds=1)).date() if length > timedelta(0) else start.date()
    assert days[-1] == last
    assert _consecutive(days)
    assert len(days) == max(lookback, (last - start.date()).days + 1)
    assert days[0] <= start.date()  # every day the interval touches is read


@settings(max_examples=100, deadline=None)
@given(start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                          timezones=st.just(UTC)),
       override=st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1)),
       lookback=st.integers(min_value=1, max_value=60))
def test_partition_date_override_replaces_the_interval(start: datetime, override: date,
                                                       lookback: int) -> None:
    days = partition_dates(start, start + timedelta(days=1), lookback, override)
    assert days[-1] == override
    assert len(days) == lookback
    assert _consecutive(days)


# -- reading local partitions -----------------------------------------------------------------------
@pytest.fixture(params=["csv", "parquet"])
def fmt(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def source(tmp_path: Path, fmt: str) -> Path:
    """Three daily partitions of demo data, ``date=YYYY-MM-DD/part-0.<fmt>``, 300 rows each."""
    root = tmp_path / "churn"
    write_partitions(ObjectStore(), str(root), D1, 3, rows=ROWS, fmt=fmt)
    return root


def config_for(root: Path | str) -> DatasetConfig:
    return churn_config(source_uri=str(root))


def part(root: Path, day: date, fmt: str) -> Path:
    return root / f"date={day.isoformat()}" / f"part-0.{fmt}"


def test_ingest_reads_partitions_and_records_manifest(source: Path, fmt: str) -> None:
    config = config_for(source)

    result = ingest(config, ObjectStore(), [D1, D2, D3])

    manifest = result.manifest
    assert manifest["dataset"] == "churn_demo"
    assert manifest["source_uri"] == str(source)
    assert manifest["partitions"] == ["date=2025-01-01", "date=2025-01-02", "date=2025-01-03"]
    assert manifest["row_count"] == 3 * ROWS == len(result.frame)
    assert len(manifest["files"]) == 3
    for day, entry in zip([D1, D2, D3], manifest["files"], strict=True):
        path = part(source, day, fmt)
        assert entry == {
            "uri": str(path),
            "key": f"date={day.isoformat()}/part-0.{fmt}",
            "partition": f"date={day.isoformat()}",
            "size": path.stat().st_size,
            "etag": hashlib.sha256(path.read_bytes()).hexdigest(),
            "rows": ROWS,
        }
    assert manifest["schema"] == {
        "customer_id": "object", "event_date": "datetime64[ns, UTC]", "tenure_months": "float64",
        "monthly_charges": "float64", "total_charges": "float64", "contract": "object",
        "payment_method": "object", "internet_service": "object", "support_calls": "float64",
        "age": "float64", "region": "object", "churned": "float64",
    }
    assert len(manifest["fingerprint"]) == 64
    assert list(result.frame.columns) == [c.name for c in config.columns] + [SOURCE_COLUMN]
    assert result.frame[SOURCE_COLUMN].value_counts().to_dict() == \
        {str(part(source, d, fmt)): ROWS for d in (D1, D2, D3)}


class SlowStore(ObjectStore):
    """A local store whose reads take 0.2 s and record how many were in flight at once."""

    def __init__(self, fail: str | None = None) -> None:
        super().__init__()
        self.fail, self.in_flight, self.most = fail, 0, 0
        self.lock = threading.Lock()

    def read_bytes(self, uri: str) -> bytes:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            time.sleep(0.2)
            if self.fail and self.fail in uri:
                raise ObjectNotFoundError(f"read {uri}: gone")
            return super().read_bytes(uri)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_partitions_download_at_once_and_stay_in_order(source: Path, fmt: str) -> None:
    store = SlowStore()
    result = ingest(config_for(source), store, [D1, D2, D3])
    assert store.most == 3  # the three files were read concurrently
    assert [f["partition"] for f in result.manifest["files"]] == \
        ["date=2025-01-01", "date=2025-01-02", "date=2025-01-03"]
    assert list(result.frame[SOURCE_COLUMN].unique()) == \
        [str(part(source, d, fmt)) for d in (D1, D2, D3)]
    assert result.frame.equals(ingest(config_for(source), ObjectStore(), [D1, D2, D3]).frame)


def test_an_unreadable_partition_is_named_even_when_read_concurrently(source: Path) -> None:
    with pytest.raises(ObjectNotFoundError, match="date=2025-01-02"):
        ingest(config_for(source), SlowStore(fail="date=2025-01-02"), [D1, D2, D3])


def test_ingest_reads_only_the_requested_days(source: Path) -> None:
    result = ingest(config_for(source), ObjectStore(), [D2])
    assert result.manifest["partitions"] == ["date=2025-01-02"]
    assert result.manifest["row_count"] == ROWS
    assert set(result.frame["event_date"].dt.date) == {D2}


def test_csv_and_parquet_partitions_give_the_same_frame(tmp_path: Path) -> None:
    frames = {}
    for fmt in ("csv", "parquet"):
        write_partitions(ObjectStore(), str(tmp_path / fmt), D1, 1, rows=ROWS, fmt=fmt)
        frames[fmt] = ingest(config_for(tmp_path / fmt), ObjectStore(), [D1]).frame \
            .drop(columns=[SOURCE_COLUMN])
    pd.testing.assert_frame_equal(frames["csv"], frames["parquet"])


def test_fingerprint_is_stable_across_ingests(source: Path) -> None:
    first = ingest(config_for(source), ObjectStore(), [D1, D2]).manifest
    second = ingest(config_for(source), ObjectStore(), [D1, D2]).manifest
    assert first["fingerprint"] == second["fingerprint"]
    assert first == second


def test_fingerprint_changes_when_a_file_changes(source: Path, fmt: str) -> None:
    before = ingest(config_for(source), ObjectStore(), [D1, D2]).manifest["fingerprint"]
    path = part(source, D2, fmt)
    frame = generate(D2, ROWS, seed=8)  # same shape, other values
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)

    after = ingest(config_for(source), ObjectStore(), [D1, D2]).manifest["fingerprint"]
    assert after != before


def test_fingerprint_changes_when_a_file_is_added(source: Path, fmt: str) -> None:
    before = ingest(config_for(source), ObjectStore(), [D1]).manifest
    shutil.copy(part(source, D1, fmt), part(source, D1, fmt).with_name(f"part-1.{fmt}"))

    after = ingest(config_for(source), ObjectStore(), [D1]).manifest
    assert after["fingerprint"] != before["fingerprint"]
    assert after["row_count"] == 2 * ROWS


@pytest.mark.parametrize(
    "as_uri",
    [
        pytest.param(str, id="plain-path"),
        pytest.param(lambda p: f"{p}/", id="trailing-slash"),
        pytest.param(lambda p: f"file://{p}", id="file-uri"),
    ],
)
def test_manifest_keys_are_relative_so_a_copy_has_the_same_fingerprint(
        tmp_path: Path, as_uri: Callable[[Path], str]) -> None:
    """The fingerprint (and so the snapshot key and the "unchanged" check) depends on content and
    relative keys only: the same files under another root, named any supported way, match."""
    original, copy = tmp_path / "a" / "churn", tmp_path / "b" / "churn"
    write_partitions(ObjectStore(), str(original), D1, 2, rows=50)
    shutil.copytree(original, copy)

    reference = ingest(config_for(original), ObjectStore(), [D1, D2]).manifest
    moved = ingest(config_for(as_uri(copy)), ObjectStore(), [D1, D2]).manifest

    assert [f["key"] for f in moved["files"]] == ["date=2025-01-01/part-0.csv",
                                                   "date=2025-01-02/part-0.csv"]
    assert moved["fingerprint"] == reference["fingerprint"]


def test_fingerprint_function_is_order_free_and_content_sensitive() -> None:
    files = [{"key": "date=2025-01-01/a.csv", "size": 10, "etag": "e1"},
             {"key": "date=2025-01-02/b.csv", "size": 20, "etag": "e2"}]
    assert fingerprint(files) == fingerprint(files[::-1])
    assert fingerprint(files) != fingerprint([files[0], {**files[1], "etag": "e3"}])
    assert fingerprint(files) != fingerprint([files[0], {**files[1], "size": 21}])
    assert fingerprint(files) != fingerprint([files[0], {**files[1], "key": "date=2025-01-02/c.csv"}])


def test_hidden_marker_and_non_data_files_are_ignored(source: Path, fmt: str) -> None:
    folder = part(source, D1, fmt).parent
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".part-1.csv.tmp").write_bytes(b"garbage")
    (folder / "README.txt").write_text("exported by the nightly job")

    result = ingest(config_for(source), ObjectStore(), [D1])
    assert [f["key"] for f in result.manifest["files"]] == [f"date=2025-01-01/part-0.{fmt}"]


def test_gzipped_csv_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "churn" / "date=2025-01-01"
    folder.mkdir(parents=True)
    (folder / "part-0.csv.gz").write_bytes(gzip.compress(generate(D1, 50).to_csv(index=False).encode()))
    result = ingest(config_for(tmp_path / "churn"), ObjectStore(), [D1])
    assert result.manifest["row_count"] == 50


def test_undeclared_extra_column_is_dropped_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "churn" / "date=2025-01-01"
    folder.mkdir(parents=True)
    generate(D1, 50).assign(loyalty_tier="gold").to_csv(folder / "part-0.csv", index=False)

    with caplog.at_level(logging.WARNING, logger="include.mlops_core.ingest"):
        result = ingest(config_for(tmp_path / "churn"), ObjectStore(), [D1])
    assert "loyalty_tier" not in result.frame.columns
    assert "loyalty_tier" in caplog.text and "part-0.csv" in caplog.text


# -- bad inputs -------------------------------------------------------------------------------------
def _rewrite(path: Path, frame: pd.DataFrame) -> None:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def binary_garbage(path: Path) -> None:
    rng = random.Random(1)
    path.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))


def drop_age(path: Path) -> None:
    _rewrite(path, generate(D1, ROWS).drop(columns=["age"]))


def rename_age(path: Path) -> None:
    _rewrite(path, generate(D1, ROWS).rename(columns={"age": "customer_age"}))


def text_in_numeric(path: Path) -> None:
    frame = generate(D1, ROWS)
    frame["monthly_charges"] = frame["monthly_charges"].astype(str)
    frame.loc[[3, 7], "monthly_charges"] = "abc"
    _rewrite(path, frame)


def fraction_in_integer(path: Path) -> None:
    frame = generate(D1, ROWS).astype({"tenure_months": "float64"})
    frame.loc[5, "tenure_months"] = 3.5
    _rewrite(path, frame)


def text_in_datetime(path: Path) -> None:
    frame = generate(D1, ROWS)
    frame.loc[9, "event_date"] = "not-a-date"
    _rewrite(path, frame)


@pytest.mark.parametrize(
    ("damage", "error", "fragments"),
    [
        pytest.param(drop_age, SchemaError, ["missing column(s) ['age']"], id="missing-column"),
        pytest.param(rename_age, SchemaError,
                     ["missing column(s) ['age']", "undeclared column(s) ['customer_age']",
                      "renamed?"], id="renamed-column"),
        pytest.param(text_in_numeric, SchemaError,
                     ["column 'monthly_charges' is declared numeric", "2 of 300 rows",
                      "not numbers", "'abc'"], id="text-in-numeric"),
        pytest.param(fraction_in_integer, SchemaError,
                     ["column 'tenure_months' is declared integer", "1 rows have fractions", "3.5"],
                     id="fraction-in-integer"),
        pytest.param(text_in_datetime, SchemaError,
                     ["column 'event_date' is declared datetime", "not-a-date"],
                     id="text-in-datetime"),
    ],
)
def test_bad_file_raises_an_error_naming_file_and_column(
        source: Path, fmt: str, damage: Callable[[Path], None], error: type[DataError],
        fragments: list[str]) -> None:
    bad = part(source, D2, fmt)
    damage(bad)

    with pytest.raises(error) as err:
        ingest(config_for(source), ObjectStore(), [D1, D2, D3])
    message = str(err.value)
    assert str(bad) in message
    for fragment in fragments:
        assert fragment in message
    assert message.endswith(f"(runbook: docs/runbooks/{error.runbook})")


def truncated_parquet(path: Path) -> None:
    payload = to_parquet_bytes(generate(D1, ROWS))
    path.write_bytes(payload[: len(payload) // 2])


@pytest.mark.parametrize(
    ("name", "write"),
    [
        pytest.param("part-0.parquet", truncated_parquet, id="truncated-parquet"),
        pytest.param("part-0.csv", binary_garbage, id="binary-garbage-csv"),
        pytest.param("part-0.csv.gz",
                     lambda p: p.write_bytes(gzip.compress(b"a,b\n1,2\n" * 500)[:40]),
                     id="truncated-gzip-csv"),
        pytest.param("part-0.parquet", lambda p: p.write_bytes(b"PAR1 this is not parquet"),
                     id="not-parquet"),
    ],
)
def test_unreadable_file_raises_corrupt_file_error(tmp_path: Path, name: str,
                                                   write: Callable[[Path], None]) -> None:
    folder = tmp_path / "churn" / "date=2025-01-01"
    folder.mkdir(parents=True)
    write_partitions(ObjectStore(), str(tmp_path / "churn"), D2, 1, rows=50)  # a good neighbour
    path = folder / name
    write(path)

    with pytest.raises(CorruptFileError, match="corrupt file") as err:
        ingest(config_for(tmp_path / "churn"), ObjectStore(), [D1, D2])
    message = str(err.value)
    assert str(path) in message
    assert f"cannot be read as {'parquet' if 'parquet' in name else 'csv'}" in message
    assert "Re-export the file; nothing was ingested" in message
    assert message.endswith("(runbook: docs/runbooks/corrupt-file.md)")


@pytest.mark.parametrize(
    "write_empty",
    [
        pytest.param(lambda p: generate(D1, 5).head(0).to_csv(p / "part-0.csv", index=False),
                     id="csv-header-only"),
        pytest.param(lambda p: (p / "part-0.csv").write_bytes(b""), id="zero-byte-csv"),
        pytest.param(lambda p: generate(D1, 5).head(0).to_parquet(p / "part-0.parquet", index=False),
                     id="parquet-no-rows"),
    ],
)
def test_empty_partition_is_a_data_error(tmp_path: Path, write_empty: Callable[[Path], None]) -> None:
    folder = tmp_path / "churn" / "date=2025-01-01"
    folder.mkdir(parents=True)
    write_empty(folder)

    with pytest.raises(DataError, match="empty partition") as err:
        ingest(config_for(tmp_path / "churn"), ObjectStore(), [D1])
    assert type(err.value) is DataError
    assert str(folder) in str(err.value)


def test_one_empty_file_beside_data_is_fine(source: Path, fmt: str) -> None:
    generate(D1, 5).head(0).to_csv(part(source, D1, fmt).with_name("part-9.csv"), index=False)
    result = ingest(config_for(source), ObjectStore(), [D1])
    assert result.manifest["row_count"] == ROWS
    assert sorted(f["rows"] for f in result.manifest["files"]) == [0, ROWS]


def test_missing_partition_lists_the_partitions_present(source: Path) -> None:
    with pytest.raises(MissingPartitionError) as err:
        ingest(config_for(source), ObjectStore(), [D3, date(2025, 1, 4), date(2025, 1, 5)])
    message = str(err.value)
    assert f"{source}/date=2025-01-04" in message
    assert f"{source}/date=2025-01-05" in message
    assert f"{source}/date=2025-01-03" not in message  # present, so not reported missing
    assert "date=2025-01-01, date=2025-01-02, date=2025-01-03" in message
    assert "dataset 'churn_demo'" in message
    assert message.endswith("(runbook: docs/runbooks/missing-partition.md)")


def test_partition_with_only_marker_files_is_missing(source: Path, fmt: str) -> None:
    folder = source / "date=2025-01-09"
    folder.mkdir()
    (folder / "_SUCCESS").write_bytes(b"")
    with pytest.raises(MissingPartitionError, match="date=2025-01-09"):
        ingest(config_for(source), ObjectStore(), [date(2025, 1, 9)])


def test_missing_source_root_says_no_partitions(tmp_path: Path) -> None:
    with pytest.raises(MissingPartitionError, match="Latest partitions present under .*: none"):
        ingest(config_for(tmp_path / "nothing-here"), ObjectStore(), [D1])


# -- casting ----------------------------------------------------------------------------------------
def test_conform_casts_booleans_and_rejects_other_words() -> None:
    config = DatasetConfig.model_validate({
        "name": "flags", "source_uri": "/x", "task": "regression", "target": "y",
        "columns": [{"name": "flag", "type": "boolean", "nullable": True},
                    {"name": "y", "type": "numeric"}]})
    frame = pd.DataFrame({"flag": ["yes", "No", "TRUE", "0", " false ", None], "y": [1] * 6})

    out = conform(frame, config, "mem://flags.csv")
    assert out["flag"].tolist()[:5] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert pd.isna(out["flag"].iloc[5])

    with pytest.raises(SchemaError, match=r"column 'flag' is declared boolean .*'maybe'"):
        conform(frame.assign(flag=["maybe"] * 6), config, "mem://flags.csv")


def test_parquet_bytes_round_trip_keeps_types() -> None:
    config = churn_config()
    frame = conform(generate(D1, 50), config, "mem://x")
    frame[SOURCE_COLUMN] = pd.Categorical(["mem://x"] * 50)
    pd.testing.assert_frame_equal(read_parquet_bytes(to_parquet_bytes(frame)), frame)
