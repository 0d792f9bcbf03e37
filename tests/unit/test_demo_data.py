"""include/mlops_core/demo_data.py: deterministic daily partitions that match the shipped config,
with drift and label-noise switches."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from include.mlops_core.demo_data import encode, generate, main, write_partitions
from include.mlops_core.ingest import conform
from include.mlops_core.storage import ObjectStore
from tests.unit.helpers import churn_config

DAY = date(2025, 1, 1)
ROWS = 2000


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return generate(DAY, ROWS)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_same_seed_and_date_give_identical_bytes(fmt: str) -> None:
    assert encode(generate(DAY, 300), fmt) == encode(generate(DAY, 300), fmt)


@pytest.mark.parametrize(
    ("kwargs", "day"),
    [pytest.param({}, date(2025, 1, 2), id="other-date"),
     pytest.param({"seed": 8}, DAY, id="other-seed")],
)
def test_other_date_or_seed_gives_other_data(kwargs: dict[str, int], day: date) -> None:
    base, other = generate(DAY, 300), generate(day, 300, **kwargs)
    assert encode(base, "csv") != encode(other, "csv")
    assert not base["monthly_charges"].equals(other["monthly_charges"])


def test_columns_and_values_fit_the_shipped_config(reference: pd.DataFrame) -> None:
    config = churn_config()
    assert list(reference.columns) == [c.name for c in config.columns]
    frame = conform(reference, config, "memory://demo")  # raises SchemaError on a type mismatch
    for column in config.columns:
        values = frame[column.name].dropna()
        if column.min is not None:
            assert values.min() >= column.min, column.name
        if column.max is not None:
            assert values.max() <= column.max, column.name
        if column.categories:
            assert set(values) <= set(column.categories), column.name
        if not column.nullable:
            assert frame[column.name].notna().all(), column.name
    assert 0 < frame["total_charges"].isna().mean() <= 0.05  # a few new customers, as declared
    assert reference["customer_id"].is_unique
    assert reference["customer_id"].str.startswith("C20250101-").all()
    assert set(reference["event_date"]) == {"2025-01-01"}


def test_target_has_both_classes_at_a_plausible_rate(reference: pd.DataFrame) -> None:
    assert set(reference["churned"]) == {0, 1}
    assert 0.1 < reference["churned"].mean() < 0.6


def test_drift_shifts_the_feature_distributions(reference: pd.DataFrame) -> None:
    drifted = generate(DAY, ROWS, drift=1.0)
    assert drifted["monthly_charges"].mean() - reference["monthly_charges"].mean() > 20
    assert drifted["tenure_months"].mean() < 0.7 * reference["tenure_months"].mean()
    assert drifted["support_calls"].mean() - reference["support_calls"].mean() > 1.5
    share = (drifted["contract"] == "month_to_month").mean() - \
        (reference["contract"] == "month_to_month").mean()
    assert share > 0.15
    half = generate(DAY, ROWS, drift=0.5)["monthly_charges"].mean()
    assert reference["monthly_charges"].mean() < half < drifted["monthly_charges"].mean()


def test_label_noise_flips_that_share_of_labels_and_nothing_else(reference: pd.DataFrame) -> None:
    noisy = generate(DAY, ROWS, label_noise=0.3)
    flipped = (noisy["churned"] != reference["churned"]).mean()
    assert 0.25 < flipped < 0.35
    for column in ("tenure_months", "monthly_charges", "contract", "region", "age"):
        assert noisy[column].equals(reference[column]), column


def test_no_label_noise_means_no_flips(reference: pd.DataFrame) -> None:
    assert generate(DAY, ROWS, label_noise=0.0)["churned"].equals(reference["churned"])


def test_write_partitions_lays_out_daily_folders_and_is_idempotent(tmp_path: Path) -> None:
    store = ObjectStore()
    uris = write_partitions(store, str(tmp_path), DAY, 3, rows=50, fmt="parquet")

    assert uris == [str(tmp_path / f"date=2025-01-0{d}" / "part-0.parquet") for d in (1, 2, 3)]
    assert pd.read_parquet(uris[1]).equals(generate(date(2025, 1, 2), 50))
    stats = [Path(u).stat() for u in uris]

    assert write_partitions(store, str(tmp_path), DAY, 3, rows=50, fmt="parquet") == uris
    again = [Path(u).stat() for u in uris]
    assert [(s.st_ino, s.st_mtime_ns) for s in again] == [(s.st_ino, s.st_mtime_ns) for s in stats]


def test_write_partitions_repairs_a_changed_file(tmp_path: Path) -> None:
    store = ObjectStore()
    (uri,) = write_partitions(store, str(tmp_path), DAY, 1, rows=50)
    good = Path(uri).read_bytes()
    Path(uri).write_bytes(b"customer_id\n")

    write_partitions(store, str(tmp_path), DAY, 1, rows=50)
    assert Path(uri).read_bytes() == good


def test_cli_writes_local_partitions(tmp_path: Path) -> None:
    main(["--dest", str(tmp_path), "--start", "2025-02-27", "--days", "3", "--rows", "40",
          "--format", "csv", "--seed", "3", "--drift", "0.5", "--label-noise", "0.1"])
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["date=2025-02-27", "date=2025-02-28", "date=2025-03-01"]
    written = (tmp_path / "date=2025-03-01" / "part-0.csv").read_bytes()
    assert written == encode(generate(date(2025, 3, 1), 40, seed=3, drift=0.5, label_noise=0.1), "csv")
