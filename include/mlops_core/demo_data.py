"""Demo dataset: customer churn as daily partitions, deterministic by seed and date.

Numeric and categorical columns, a binary target driven by a known logistic model, a date
column, a few missing values, and switches for the later drift and label-noise scenarios::

    python -m include.mlops_core.demo_data --dest s3://mlops-data/churn --start 2025-01-01 --days 3
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
from datetime import date, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from include.mlops_core.storage import ObjectStore

log = logging.getLogger(__name__)

CONTRACTS = ["month_to_month", "one_year", "two_year"]
PAYMENTS = ["card", "bank_transfer", "electronic_check", "mailed_check"]
INTERNET = ["none", "dsl", "fiber"]
REGIONS = ["north", "south", "east", "west"]


def generate(day: date, rows: int = 2000, *, seed: int = 7, drift: float = 0.0,
             label_noise: float = 0.0) -> pd.DataFrame:
    """One day of churn data.

    :param drift: 0 = reference behaviour; 1 = strongly shifted charges, tenure, contract mix
        and support calls (the relationship to churn stays the same)
    :param label_noise: share of rows whose label is flipped at random
    """
    import numpy as np
    import pandas as pd

    day_seed = int(hashlib.sha256(f"{seed}:{day.isoformat()}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(day_seed)
    contract_p = np.array([0.55, 0.25, 0.20]) * (1 - drift) + np.array([0.8, 0.15, 0.05]) * drift
    contract = rng.choice(CONTRACTS, size=rows, p=contract_p / contract_p.sum())
    internet = rng.choice(INTERNET, size=rows, p=[0.2, 0.35, 0.45])
    payment = rng.choice(PAYMENTS, size=rows, p=[0.3, 0.25, 0.3, 0.15])
    region = rng.choice(REGIONS, size=rows, p=[0.3, 0.2, 0.25, 0.25])
    tenure = np.clip(rng.gamma(2.0, 14.0 * (1 - 0.5 * drift), rows), 0, 120).round()
    charges = np.clip(rng.normal(65 + 30 * drift, 22, rows)
                      + np.where(internet == "fiber", 20, 0), 5, 400).round(2)
    total = (charges * np.maximum(tenure, 1) * rng.uniform(0.9, 1.05, rows)).round(2)
    calls = rng.poisson(1.5 + 2.0 * drift, rows)
    age = np.clip(rng.normal(45, 14, rows), 18, 95).round()

    logit = (-1.2 + 1.6 * (contract == "month_to_month") - 0.9 * (contract == "two_year")
             + 0.7 * (internet == "fiber") + 0.6 * (payment == "electronic_check")
             - 0.045 * tenure + 0.012 * (charges - 65) + 0.35 * calls
             + 0.25 * (region == "south") - 0.01 * (age - 45))
    churned = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype(int)
    if label_noise > 0:
        flip = rng.uniform(size=rows) < label_noise
        churned = np.where(flip, 1 - churned, churned)

    total[rng.uniform(size=rows) < 0.01] = np.nan  # new customers have no total yet
    return pd.DataFrame({
        "customer_id": [f"C{day:%Y%m%d}-{i:06d}" for i in range(rows)],
        "event_date": day.isoformat(),
        "tenure_months": tenure.astype(int),
        "monthly_charges": charges,
        "total_charges": total,
        "contract": contract,
        "payment_method": payment,
        "internet_service": internet,
        "support_calls": calls.astype(int),
        "age": age.astype(int),
        "region": region,
        "churned": churned,
    })


def encode(frame: pd.DataFrame, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "parquet":
        frame.to_parquet(buffer, index=False)
    else:
        frame.to_csv(buffer, index=False)
    return buffer.getvalue()


def write_partitions(store: ObjectStore, dest: str, start: date, days: int, *, rows: int = 2000,
                     seed: int = 7, fmt: str = "csv", drift: float = 0.0,
                     label_noise: float = 0.0) -> list[str]:
    """Write ``days`` daily partitions ``dest/date=YYYY-MM-DD/part-0.<fmt>``; same bytes every
    time for the same arguments, so a second call rewrites nothing new."""
    from include.mlops_core.storage import join

    store.ensure_bucket(dest)
    uris = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        uri = join(dest, f"date={day.isoformat()}", f"part-0.{fmt}")
        payload = encode(generate(day, rows, seed=seed, drift=drift, label_noise=label_noise), fmt)
        if store.exists(uri) and store.read_bytes(uri) == payload:
            log.info("%s is up to date", uri)
        else:
            store.write_bytes(uri, payload)
            log.info("Wrote %s (%d rows)", uri, rows)
        uris.append(uri)
    return uris


def write_labels(store: ObjectStore, dest: str, start: date, days: int, *, rows: int = 2000,
                 seed: int = 7, drift: float = 0.0, label_noise: float = 0.0) -> list[str]:
    """The delayed labels of the same days: ``dest/date=YYYY-MM-DD/labels.parquet`` holding
    ``customer_id`` and ``churned`` of exactly the rows :func:`write_partitions` wrote."""
    from include.mlops_core.storage import join

    store.ensure_bucket(dest)
    uris = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        frame = generate(day, rows, seed=seed, drift=drift, label_noise=label_noise)
        uri = join(dest, f"date={day.isoformat()}", "labels.parquet")
        store.write_bytes(uri, encode(frame[["customer_id", "churned"]], "parquet"))
        uris.append(uri)
    return uris


def main(argv: list[str] | None = None) -> None:
    from include.mlops_core.storage import ObjectStore, is_s3

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", required=True, help="s3://bucket/prefix or a local directory")
    parser.add_argument("--start", type=date.fromisoformat, required=True)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--format", choices=["csv", "parquet"], default="csv")
    parser.add_argument("--drift", type=float, default=0.0)
    parser.add_argument("--label-noise", type=float, default=0.0)
    parser.add_argument("--labels", metavar="DEST",
                        help="also write the same rows' labels (customer_id, churned) here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    store = ObjectStore.from_env() if is_s3(args.dest) else ObjectStore()
    write_partitions(store, args.dest, args.start, args.days, rows=args.rows, seed=args.seed,
                     fmt=args.format, drift=args.drift, label_noise=args.label_noise)
    if args.labels:
        write_labels(store, args.labels, args.start, args.days, rows=args.rows, seed=args.seed,
                     drift=args.drift, label_noise=args.label_noise)


if __name__ == "__main__":
    main()
