"""The training run's dataset input (include/mlops_core/tracking.py dataset_input) describes the data
exactly as MLflow's own ``mlflow.data.from_pandas`` does: the same name, digest, source, source
type, profile and schema, column by column and for whole frames, whether the schema is read from
the dtypes or left to MLflow."""

from __future__ import annotations

import json
from datetime import date

import mlflow.data
import numpy as np
import pandas as pd
import pytest

from include.mlops_core import demo_data, tracking

COLUMNS = {
    "int8": np.array([1, 2, 3], dtype=np.int8),
    "int32": np.array([1, 2, 3], dtype=np.int32),
    "int64": np.array([1, 2, 3], dtype=np.int64),
    "uint64": np.array([1, 2, 3], dtype=np.uint64),
    "float32_nan": np.array([1.0, np.nan, 3.0], dtype=np.float32),
    "float64_none": [1.0, None, 2.0],
    "bool": [True, False, True],
    "str": ["a", "b", "c"],
    "str_none": ["a", None, "c"],
    "str_nan": ["a", np.nan, "c"],
    "datetime_nat": pd.to_datetime(["2025-01-01", None, "2025-01-03"]),
    "category": pd.Categorical(["a", "b", "a"]),
    "mixed": ["a", 1, None],
    "all_none": [None, None, None],
    "string_dtype": pd.array(["x", None, "z"], dtype="string"),
    "bytes": [b"a", b"b", b"c"],
}


def described(frame: pd.DataFrame, target: str) -> tuple[dict, dict]:
    ours = tracking.dataset_input(frame, source="s3://bucket/snapshot.parquet", name="churn",
                                  targets=target, digest="0123abcd", context="training")
    reference = mlflow.data.from_pandas(frame, source="s3://bucket/snapshot.parquet",
                                        name="churn", targets=target, digest="0123abcd").to_dict()
    entity = ours.dataset
    mine = {"name": entity.name, "digest": entity.digest, "source": entity.source,
            "source_type": entity.source_type, "schema": entity.schema,
            "profile": entity.profile}
    assert [(tag.key, tag.value) for tag in ours.tags] == [("mlflow.data.context", "training")]
    return mine, reference


@pytest.mark.filterwarnings("ignore::UserWarning")  # MLflow's integer-column hint
@pytest.mark.parametrize("column", sorted(COLUMNS))
def test_each_dtype_is_described_as_mlflow_describes_it(column):
    frame = pd.DataFrame({column: COLUMNS[column], "label": [0, 1, 0]})
    mine, reference = described(frame, "label")
    assert mine == reference


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_one_column_mlflow_cannot_type_leaves_the_whole_schema_to_mlflow():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "mixed": ["a", 1, None], "label": [0, 1, 0]})
    mine, reference = described(frame, "label")
    assert mine == reference
    assert mine["schema"] is None  # MLflow gives no schema for such a frame; neither do we


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_demo_data_is_described_from_its_dtypes_with_the_same_result():
    frame = demo_data.generate(date(2025, 6, 1), rows=3000)
    frame.loc[::7, "region"] = None  # a string column with gaps: not required
    mine, reference = described(frame, "churned")
    assert mine == reference
    columns = {spec["name"]: spec for spec in json.loads(mine["schema"])["mlflow_colspec"]}
    assert columns["region"] == {"type": "string", "name": "region", "required": False}
    assert columns["tenure_months"]["type"] == "long"
    assert json.loads(mine["profile"]) == {"num_rows": 3000, "num_elements": 3000 * 12}
