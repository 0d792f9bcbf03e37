"""include/mlops_core/validation.py: the Great Expectations suite derived from the declared schema, run
on frames that went through the real ingest of local partitions."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pandas as pd
import pytest

from include.mlops_core.config import DatasetConfig
from include.mlops_core.demo_data import write_partitions
from include.mlops_core.ingest import SOURCE_COLUMN, ingest, read_parquet_bytes, to_parquet_bytes
from include.mlops_core.storage import ObjectStore
from include.mlops_core.validation import build_expectations, describe_failure, validate
from tests.unit.helpers import churn_config, regression_config

ROWS = 300  # per file; two files


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetConfig, pd.DataFrame, list[str]]:
    root = tmp_path_factory.mktemp("validation") / "churn"
    files = write_partitions(ObjectStore(), str(root), date(2025, 1, 1), 2, rows=ROWS)
    config = churn_config(source_uri=str(root))
    frame = ingest(config, ObjectStore(), [date(2025, 1, 1), date(2025, 1, 2)]).frame
    return config, frame, files


@pytest.fixture
def config(ingested: tuple[DatasetConfig, pd.DataFrame, list[str]]) -> DatasetConfig:
    return ingested[0]


@pytest.fixture
def frame(ingested: tuple[DatasetConfig, pd.DataFrame, list[str]]) -> pd.DataFrame:
    return ingested[1].copy()


@pytest.fixture
def files(ingested: tuple[DatasetConfig, pd.DataFrame, list[str]]) -> list[str]:
    return ingested[2]


def only_failure(outcome: dict[str, Any], expectation: str, column: str | None) -> dict[str, Any]:
    assert outcome["success"] is False
    matching = [f for f in outcome["failures"]
                if f["expectation"] == expectation and f["column"] == column]
    assert len(matching) == 1, outcome["failures"]
    return matching[0]


def first_rows_of(frame: pd.DataFrame, file: str, n: int) -> pd.Index:
    return frame.index[frame[SOURCE_COLUMN] == file][:n]


# -- the suite --------------------------------------------------------------------------------------
def test_suite_follows_the_declared_schema(config: DatasetConfig) -> None:
    by_kind: dict[str, list[Any]] = {}
    for expectation in build_expectations(config):
        by_kind.setdefault(type(expectation).__name__, []).append(expectation)

    (row_count,) = by_kind["ExpectTableRowCountToBeBetween"]
    assert (row_count.min_value, row_count.max_value) == (200, None)
    # ingest guarantees the columns and their types: no expectation that could never fail
    assert not {"ExpectColumnToExist", "ExpectColumnValuesToBeInTypeList"} & set(by_kind)
    not_null = {e.column: e.mostly for e in by_kind["ExpectColumnValuesToNotBeNull"]}
    assert not_null["total_charges"] == pytest.approx(0.95)  # nullable, max_null_fraction 0.05
    assert not_null["churned"] == 1.0 and not_null["age"] == 1.0
    ranges = {e.column: (e.min_value, e.max_value) for e in by_kind["ExpectColumnValuesToBeBetween"]}
    assert ranges["age"] == (18, 100)
    assert ranges["total_charges"] == (0, None)
    sets = {e.column: set(e.value_set) for e in by_kind["ExpectColumnValuesToBeInSet"]}
    assert sets["region"] == {"north", "south", "east", "west"}
    (classes,) = by_kind["ExpectColumnUniqueValueCountToBeBetween"]
    assert (classes.column, classes.min_value) == ("churned", 2)


def test_regression_suite_does_not_require_two_classes() -> None:
    kinds = {type(e).__name__ for e in build_expectations(regression_config())}
    assert "ExpectColumnUniqueValueCountToBeBetween" not in kinds


# -- outcomes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "snapshot",
    [pytest.param(False, id="as-ingested"), pytest.param(True, id="after-parquet-snapshot")],
)
def test_clean_demo_frame_passes(config: DatasetConfig, frame: pd.DataFrame, snapshot: bool) -> None:
    if snapshot:  # the pipeline validates the snapshot that ingest wrote
        frame = read_parquet_bytes(to_parquet_bytes(frame))

    outcome = validate(frame, config)

    assert outcome["success"] is True
    assert outcome["failures"] == []
    assert outcome["statistics"]["evaluated_expectations"] == len(build_expectations(config))
    assert outcome["statistics"]["unsuccessful_expectations"] == 0


def test_half_missing_required_column_fails_with_per_file_counts(
        config: DatasetConfig, frame: pd.DataFrame, files: list[str]) -> None:
    frame.loc[frame.index[::2], "tenure_months"] = None

    failure = only_failure(validate(frame, config), "expect_column_values_to_not_be_null",
                           "tenure_months")

    assert failure["unexpected_count"] == ROWS
    assert failure["element_count"] == 2 * ROWS
    assert failure["files"] == {files[0]: ROWS // 2, files[1]: ROWS // 2}


@pytest.mark.parametrize(
    ("share", "passes"),
    [pytest.param(0.02, True, id="within-max-null-fraction"),
     pytest.param(0.10, False, id="above-max-null-fraction")],
)
def test_nullable_column_tolerates_its_max_null_fraction(
        config: DatasetConfig, frame: pd.DataFrame, share: float, passes: bool) -> None:
    frame.loc[frame.index[: int(share * len(frame))], "total_charges"] = None
    outcome = validate(frame, config)
    failed = {(f["expectation"], f["column"]) for f in outcome["failures"]}
    assert (("expect_column_values_to_not_be_null", "total_charges") not in failed) is passes


def test_single_class_target_fails_the_unique_value_expectation(
        config: DatasetConfig, frame: pd.DataFrame) -> None:
    frame["churned"] = 0.0

    failure = only_failure(validate(frame, config), "expect_column_unique_value_count_to_be_between",
                           "churned")

    assert failure["observed_value"] == 1
    assert failure["kwargs"]["min_value"] == 2
    assert "observed 1" in describe_failure(failure)


def test_value_out_of_range_fails_with_rows_and_file(
        config: DatasetConfig, frame: pd.DataFrame, files: list[str]) -> None:
    frame.loc[first_rows_of(frame, files[1], 7), "age"] = 150.0

    failure = only_failure(validate(frame, config), "expect_column_values_to_be_between", "age")

    assert failure["unexpected_count"] == 7
    assert failure["files"] == {files[1]: 7}
    assert failure["examples"] == [150.0]
    line = describe_failure(failure)
    assert line.startswith("expect_column_values_to_be_between(")
    assert "max_value=100" in line
    assert "on column 'age'" in line
    assert f"7 of {2 * ROWS} rows fail" in line
    assert f"in {files[1]} (7 rows)" in line


def test_unknown_category_fails_with_examples(
        config: DatasetConfig, frame: pd.DataFrame, files: list[str]) -> None:
    frame.loc[first_rows_of(frame, files[0], 4), "region"] = "atlantis"

    failure = only_failure(validate(frame, config), "expect_column_values_to_be_in_set", "region")

    assert failure["unexpected_count"] == 4
    assert failure["examples"] == ["atlantis"]
    assert failure["files"] == {files[0]: 4}
    assert "on column 'region'" in describe_failure(failure)


def test_too_few_rows_fails_at_table_level(config: DatasetConfig, frame: pd.DataFrame,
                                           files: list[str]) -> None:
    small = frame[frame[SOURCE_COLUMN] == files[0]].head(50)

    failure = only_failure(validate(small, config), "expect_table_row_count_to_be_between", None)

    assert failure["observed_value"] == 50
    assert failure["files"] == [files[0]]
    line = describe_failure(failure)
    assert "on column '<table>'" in line
    assert "observed 50" in line
    assert f"in {files[0]}" in line


def test_every_failure_is_reported_and_the_result_is_small_json(
        config: DatasetConfig, frame: pd.DataFrame, files: list[str]) -> None:
    frame.loc[first_rows_of(frame, files[0], 3), "age"] = 5.0
    frame.loc[first_rows_of(frame, files[1], 2), "contract"] = "weekly"

    outcome = validate(frame, config)

    assert {(f["expectation"], f["column"]) for f in outcome["failures"]} == {
        ("expect_column_values_to_be_between", "age"),
        ("expect_column_values_to_be_in_set", "contract")}
    text = json.dumps(outcome["result"])  # the artifact is JSON
    assert "unexpected_index_list" not in text  # row lists are replaced by per-file counts
    assert "unexpected_rows_per_file" in text


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        pytest.param({"expectation": "expect_column_values_to_not_be_null", "column": "age",
                      "kwargs": {"mostly": 0.9}, "unexpected_count": 12, "element_count": 100,
                      "observed_value": None, "examples": [None],
                      "files": {"s3://b/date=1/a.csv": 10, "s3://b/date=1/b.csv": 2}},
                     "expect_column_values_to_not_be_null(mostly=0.9) on column 'age': "
                     "12 of 100 rows fail; examples [None]; in s3://b/date=1/a.csv (10 rows), "
                     "s3://b/date=1/b.csv (2 rows)", id="rows-per-file"),
        pytest.param({"expectation": "expect_table_row_count_to_be_between", "column": None,
                      "kwargs": {"min_value": 200, "max_value": None}, "unexpected_count": None,
                      "element_count": None, "observed_value": 3, "examples": [],
                      "files": ["s3://b/date=1/a.csv"]},
                     "expect_table_row_count_to_be_between(min_value=200) on column '<table>': "
                     "observed 3; in s3://b/date=1/a.csv", id="table-level"),
    ],
)
def test_describe_failure(failure: dict[str, Any], expected: str) -> None:
    assert describe_failure(failure) == expected

