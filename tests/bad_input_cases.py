"""The bad-input matrix, shared by the unit-speed test (tests/unit/test_bad_input_matrix.py:
local files, the pipeline functions) and the integration test (tests/integration/
test_bad_input.py: S3, MLflow and the training DAG through dag.test()). Each case writes one
broken partition and names the task that must fail and what its error must say."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from include.mlops_core.demo_data import encode, generate

GOOD_DAY = date(2025, 5, 1)


@dataclass(frozen=True)
class Case:
    day: date
    write: Callable[[object, str, date], str | None]  # (store, source, day) -> file URI
    task: str
    expected: tuple[str, ...]


def partition_uri(source: str, day: date, ext: str = "csv") -> str:
    return f"{source}/date={day.isoformat()}/part-0.{ext}"


def _put_frame(store, source: str, day: date, frame, fmt: str = "csv") -> str:
    uri = partition_uri(source, day, fmt)
    store.write_bytes(uri, encode(frame, fmt))
    return uri


def truncated_parquet(store, source, day):
    payload = encode(generate(day, 500), "parquet")
    store.write_bytes(partition_uri(source, day, "parquet"), payload[: len(payload) // 2])
    return partition_uri(source, day, "parquet")


def garbage_csv(store, source, day):
    store.write_bytes(partition_uri(source, day), bytes(range(256)) * 40)
    return partition_uri(source, day)


def missing_column(store, source, day):
    return _put_frame(store, source, day, generate(day, 500).drop(columns=["tenure_months"]))


def renamed_column(store, source, day):
    return _put_frame(store, source, day,
                      generate(day, 500).rename(columns={"monthly_charges": "monthly_fee"}))


def type_change(store, source, day):
    frame = generate(day, 500)
    frame["monthly_charges"] = frame["monthly_charges"].astype(object)
    frame.loc[::7, "monthly_charges"] = "unknown"
    return _put_frame(store, source, day, frame)


def empty_partition(store, source, day):
    return _put_frame(store, source, day, generate(day, 500).head(0))


def missing_partition(store, source, day):
    return None


def half_nan(store, source, day):
    frame = generate(day, 1000)
    frame.loc[frame.index % 2 == 0, "age"] = None
    return _put_frame(store, source, day, frame)


def single_class(store, source, day):
    frame = generate(day, 500)
    frame["churned"] = 0
    return _put_frame(store, source, day, frame)


CASES = {
    "truncated_parquet": Case(GOOD_DAY + timedelta(days=10), truncated_parquet, "ingest",
                              ("corrupt file", "cannot be read as parquet")),
    "garbage_csv": Case(GOOD_DAY + timedelta(days=11), garbage_csv, "ingest",
                        ("corrupt file", "cannot be read as csv")),
    "missing_column": Case(GOOD_DAY + timedelta(days=12), missing_column, "ingest",
                           ("schema mismatch", "missing column(s) ['tenure_months']")),
    "renamed_column": Case(GOOD_DAY + timedelta(days=13), renamed_column, "ingest",
                           ("missing column(s) ['monthly_charges']", "['monthly_fee'] (renamed?)")),
    "type_change": Case(GOOD_DAY + timedelta(days=14), type_change, "ingest",
                        ("type mismatch", "'monthly_charges'", "72 of 500 rows are not numbers",
                         "'unknown'")),
    "empty_partition": Case(GOOD_DAY + timedelta(days=15), empty_partition, "ingest",
                            ("empty partition", "hold no rows")),
    "missing_partition": Case(GOOD_DAY + timedelta(days=16), missing_partition, "check_changed",
                              ("missing partition", "date=2025-05-17",
                               "Latest partitions present")),
    "half_nan": Case(GOOD_DAY + timedelta(days=17), half_nan, "validate",
                     ("data validation failed", "expect_column_values_to_not_be_null",
                      "column 'age'", "500 of 1000 rows fail")),
    "single_class": Case(GOOD_DAY + timedelta(days=18), single_class, "validate",
                         ("data validation failed", "column 'churned'", "observed 1")),
}
