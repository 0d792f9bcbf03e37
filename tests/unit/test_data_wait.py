"""Waiting for data: the dataset config's ``data_wait`` and the trigger that waits, on real
local folders (plugins/mlops_airflow/triggers.py). Through the scheduler and triggerer:
tests/integration/test_scheduler.py."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from mlops_airflow.triggers import PartitionsArrivedTrigger
from tests.unit.helpers import churn_config


def test_no_wait_unless_the_dataset_asks_and_bounds_are_checked() -> None:
    assert churn_config().data_wait.timeout_minutes == 0
    assert churn_config(data_wait={"timeout_minutes": 90}).data_wait.poll_seconds == 60
    with pytest.raises(ValidationError, match="poll_seconds"):
        churn_config(data_wait={"timeout_minutes": 5, "poll_seconds": 1})
    with pytest.raises(ValidationError, match="timeout_minutes"):
        churn_config(data_wait={"timeout_minutes": -1})


def events(trigger: PartitionsArrivedTrigger) -> list[dict]:
    async def collect() -> list[dict]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(collect())


def test_fires_once_every_partition_holds_a_data_file(tmp_path: Path) -> None:
    day1, day2 = tmp_path / "date=2025-01-01", tmp_path / "date=2025-01-02"
    day1.mkdir()
    (day1 / "_SUCCESS").write_text("")  # not a data file
    deadline = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    trigger = PartitionsArrivedTrigger(prefixes=[str(day1), str(day2)], s3_conn_id="unused",
                                       deadline=deadline, poll_seconds=0.2)

    def arrive() -> None:
        time.sleep(0.5)
        (day1 / "part-0.csv").write_text("a\n1\n")
        time.sleep(0.5)
        day2.mkdir()
        (day2 / "part-0.parquet").write_bytes(b"x")

    writer = threading.Thread(target=arrive)
    started = time.monotonic()
    writer.start()
    found = events(trigger)
    writer.join()

    assert found == [{"status": "arrived", "deadline": deadline}]
    assert 1.0 <= time.monotonic() - started < 5


def test_gives_up_at_the_deadline_naming_what_is_still_missing(tmp_path: Path) -> None:
    present, absent = tmp_path / "date=2025-01-01", tmp_path / "date=2025-01-02"
    present.mkdir()
    (present / "part-0.csv").write_text("a\n1\n")
    deadline = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    trigger = PartitionsArrivedTrigger(prefixes=[str(present), str(absent)], s3_conn_id="unused",
                                       deadline=deadline, poll_seconds=60)
    started = time.monotonic()

    assert events(trigger) == [{"status": "timeout", "missing": [str(absent)],
                                "deadline": deadline}]
    assert time.monotonic() - started < 5  # sleeps to the deadline, not a whole poll


def test_serializes_to_what_the_triggerer_rebuilds_it_from() -> None:
    trigger = PartitionsArrivedTrigger(prefixes=["s3://b/p/date=2025-01-01"], s3_conn_id="mlops_s3",
                                       deadline="2025-01-02T00:00:00+00:00", poll_seconds=30)
    path, kwargs = trigger.serialize()
    assert path == "mlops_airflow.triggers.PartitionsArrivedTrigger"
    assert PartitionsArrivedTrigger(**kwargs).serialize() == (path, kwargs)
    assert not any(word in str(kwargs).lower() for word in ("password", "secret", "key="))
