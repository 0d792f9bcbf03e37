"""Data validation gate: a Great Expectations 1.x suite derived from the dataset's declared schema.

The suite covers nullability, ranges, allowed categories, row-count bounds and (for
classification) at least two target classes. Failures are summarised per expectation with the
column, the number of rows and the files they came from.

It has no column-exists or column-type expectations: it runs on ingest's output, which holds
exactly the declared columns, each cast to its declared type, so such checks could never fail.
Ingest itself rejects a missing column or a value that does not cast, naming the file and the
column (``include.mlops_core.ingest``, runbook docs/runbooks/schema-mismatch.md).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from include.mlops_core.config import DatasetConfig
from include.mlops_core.ingest import SOURCE_COLUMN

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def build_expectations(config: DatasetConfig) -> list[Any]:
    """The expectation list for ``config`` (GX expectation objects)."""
    import great_expectations.expectations as gxe

    expectations: list[Any] = [
        gxe.ExpectTableRowCountToBeBetween(min_value=config.min_rows, max_value=config.max_rows),
    ]
    for column in config.columns:
        name = column.name
        required = not column.nullable or name == config.target
        mostly = 1.0 if required else round(1.0 - column.max_null_fraction, 6)
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=name, mostly=mostly))
        if column.min is not None or column.max is not None:
            expectations.append(gxe.ExpectColumnValuesToBeBetween(
                column=name, min_value=column.min, max_value=column.max))
        if column.categories:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(
                column=name, value_set=list(column.categories)))
    if config.task == "classification":
        expectations.append(gxe.ExpectColumnUniqueValueCountToBeBetween(
            column=config.target, min_value=2, max_value=None))
    return expectations


def validate(frame: pd.DataFrame, config: DatasetConfig) -> dict[str, Any]:
    """Run the suite on ``frame``; returns ``{"success", "failures", "statistics", "result"}``.

    ``failures`` is a list of readable dicts (expectation, column, unexpected rows, files);
    ``result`` is the full GX result, JSON-serialisable, with row-level index lists replaced by
    per-file counts so the artifact stays small.
    """
    # GX logs hundreds of INFO lines while importing; keep the task log readable.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    try:
        context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    except Exception:  # noqa: BLE001 - progress bars are cosmetic
        pass
    batch = (context.data_sources.add_pandas(f"{config.name}_source")
             .add_dataframe_asset(config.name)
             .add_batch_definition_whole_dataframe("interval"))
    suite = context.suites.add(gx.ExpectationSuite(name=f"{config.name}_schema_suite"))
    for expectation in build_expectations(config):
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch, suite=suite, name=f"{config.name}_validation"))
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [SOURCE_COLUMN],
                       "return_unexpected_index_query": False, "partial_unexpected_count": 5},
    )
    raw = result.to_json_dict()
    failures = []
    for item in raw["results"]:
        details = item.get("result", {})
        per_file = Counter(row.get(SOURCE_COLUMN) for row in details.pop("unexpected_index_list", [])
                           or [] if isinstance(row, dict))
        details.pop("unexpected_list", None)
        details.pop("partial_unexpected_index_list", None)
        if per_file:
            details["unexpected_rows_per_file"] = dict(per_file)
        if item["success"]:
            continue
        kwargs = item["expectation_config"]["kwargs"]
        failures.append({
            "expectation": item["expectation_config"]["type"],
            "column": kwargs.get("column"),
            "kwargs": {k: v for k, v in kwargs.items() if k not in ("column", "batch_id")},
            "unexpected_count": details.get("unexpected_count"),
            "element_count": details.get("element_count"),
            "observed_value": details.get("observed_value"),
            "examples": [v.get("value") for v in details.get("partial_unexpected_counts", [])][:5],
            "files": dict(per_file) or sorted({str(f) for f in frame[SOURCE_COLUMN].unique()}),
        })
    return {"success": bool(raw["success"]), "failures": failures,
            "statistics": raw.get("statistics", {}), "result": raw}


def describe_failure(failure: dict[str, Any]) -> str:
    """One readable line: which expectation, which column, how many rows, which file."""
    column = failure["column"] or "<table>"
    if failure["unexpected_count"] is not None:
        what = f"{failure['unexpected_count']} of {failure['element_count']} rows fail"
    else:
        what = f"observed {failure['observed_value']!r}"
    files = failure["files"]
    where = ", ".join(f"{name} ({count} rows)" for name, count in files.items()) \
        if isinstance(files, dict) else ", ".join(files)
    examples = f"; examples {failure['examples']}" if failure["examples"] else ""
    args = ", ".join(f"{k}={v!r}" for k, v in failure["kwargs"].items() if v is not None)
    return f"{failure['expectation']}({args}) on column {column!r}: {what}{examples}; in {where}"
