"""include/mlops_core/retrain.py: the cooldown of alert-triggered retraining, with claims in a local
store (real files under tmp_path)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from include.mlops_core.retrain import blocked, claim, claims_dir
from include.mlops_core.storage import ObjectStore

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
RUN_A = "asset_triggered__2025-01-02T03:04:05+00:00"
RUN_B = "asset_triggered__2025-01-02T09:00:00+00:00"
TRIGGER = {"asset": "drift_detected", "extra": {"partition_date": "2025-01-01", "share": 0.5}}


@pytest.fixture
def store() -> ObjectStore:
    return ObjectStore()


@pytest.fixture
def artifacts(tmp_path: Path) -> str:
    return str(tmp_path / "artifacts")


def claim_files(artifacts: str, model: str = "churn_demo") -> list[Path]:
    folder = Path(claims_dir(artifacts, model))
    return sorted(folder.iterdir()) if folder.exists() else []


def take(store: ObjectStore, artifacts: str, *, at: datetime, run: str, cooldown: float = 24,
         model: str = "churn_demo") -> tuple[bool, str]:
    return claim(store, artifacts, model, at=at, dag_run_id=run, cooldown_hours=cooldown,
                 trigger=TRIGGER)


def test_first_claim_is_granted_and_writes_one_record(store: ObjectStore, artifacts: str) -> None:
    assert blocked(store, artifacts, "churn_demo", at=T0, dag_run_id=RUN_A, cooldown_hours=24) is None

    granted, reason = take(store, artifacts, at=T0, run=RUN_A)

    assert granted
    (record_file,) = claim_files(artifacts)
    assert record_file.parent == Path(artifacts) / "churn_demo" / "retrain-claims"
    assert record_file.name.startswith("20250102T030405Z--")
    assert str(record_file) in reason
    assert "2025-01-03 03:04 UTC" in reason  # when the next alert-triggered retrain may start
    record = json.loads(record_file.read_text())
    assert record == {"model_name": "churn_demo", "at": T0.isoformat(), "dag_run_id": RUN_A,
                      "cooldown_hours": 24, "trigger": TRIGGER}


def test_second_run_within_the_cooldown_is_refused(store: ObjectStore, artifacts: str) -> None:
    take(store, artifacts, at=T0, run=RUN_A)
    (first,) = claim_files(artifacts)
    later = T0 + timedelta(hours=6)

    granted, reason = take(store, artifacts, at=later, run=RUN_B)

    assert not granted
    assert reason.startswith("cooldown:")
    assert first.name.split("--", 1)[1].removesuffix(".json") in reason  # the first run's id
    assert "asset_triggered__2025-01-02T03_04_05_00_00" in reason
    assert str(first) in reason  # the claim's URI
    assert "force=true" in reason
    assert "2025-01-02 03:04 UTC" in reason and "2025-01-03 03:04 UTC" in reason
    assert "retrain_cooldown_hours=24" in reason
    assert claim_files(artifacts) == [first]  # a refusal writes nothing
    assert blocked(store, artifacts, "churn_demo", at=later, dag_run_id=RUN_B,
                   cooldown_hours=24) == reason


def test_a_retry_of_the_claiming_run_is_granted_and_writes_nothing(store: ObjectStore,
                                                                    artifacts: str) -> None:
    take(store, artifacts, at=T0, run=RUN_A)
    (first,) = claim_files(artifacts)
    before = first.read_bytes()

    granted, _ = take(store, artifacts, at=T0, run=RUN_A)

    assert granted
    assert claim_files(artifacts) == [first]
    assert first.read_bytes() == before
    assert blocked(store, artifacts, "churn_demo", at=T0, dag_run_id=RUN_A, cooldown_hours=24) is None


def test_a_retry_is_granted_even_after_another_run_was_refused(store: ObjectStore,
                                                                artifacts: str) -> None:
    take(store, artifacts, at=T0, run=RUN_A)
    assert not take(store, artifacts, at=T0 + timedelta(hours=1), run=RUN_B)[0]
    assert take(store, artifacts, at=T0, run=RUN_A)[0]
    assert len(claim_files(artifacts)) == 1


@pytest.mark.parametrize(
    ("after", "granted"),
    [
        pytest.param(timedelta(hours=23, minutes=59, seconds=59), False, id="one-second-before"),
        pytest.param(timedelta(hours=24), True, id="exactly-at-the-end"),
        pytest.param(timedelta(days=3), True, id="days-later"),
    ],
)
def test_after_the_cooldown_a_new_claim_is_granted(store: ObjectStore, artifacts: str,
                                                    after: timedelta, granted: bool) -> None:
    take(store, artifacts, at=T0, run=RUN_A)

    result, reason = take(store, artifacts, at=T0 + after, run=RUN_B)

    assert result is granted, reason
    assert len(claim_files(artifacts)) == (2 if granted else 1)


def test_the_window_starts_at_the_newest_claim(store: ObjectStore, artifacts: str) -> None:
    take(store, artifacts, at=T0, run=RUN_A)
    assert take(store, artifacts, at=T0 + timedelta(hours=25), run=RUN_B)[0]

    granted, reason = take(store, artifacts, at=T0 + timedelta(hours=30), run="third")

    assert not granted
    assert "asset_triggered__2025-01-02T09_00_00_00_00" in reason  # RUN_B's claim, not RUN_A's


def test_zero_cooldown_always_grants(store: ObjectStore, artifacts: str) -> None:
    for i, run in enumerate(["r1", "r2", "r3"]):
        granted, reason = take(store, artifacts, at=T0 + timedelta(seconds=i), run=run, cooldown=0)
        assert granted, reason
    # even at the very same second as another run's claim
    assert take(store, artifacts, at=T0, run="r4", cooldown=0)[0]
    assert len(claim_files(artifacts)) == 4


def test_claims_of_another_model_do_not_interfere(store: ObjectStore, artifacts: str) -> None:
    assert take(store, artifacts, at=T0, run=RUN_A, model="churn_demo")[0]

    granted, _ = take(store, artifacts, at=T0 + timedelta(hours=1), run=RUN_B, model="fraud")

    assert granted
    assert len(claim_files(artifacts, "churn_demo")) == 1
    assert len(claim_files(artifacts, "fraud")) == 1
    assert not take(store, artifacts, at=T0 + timedelta(hours=2), run="x", model="churn_demo")[0]


def test_unexpected_objects_in_the_claims_folder_are_ignored(store: ObjectStore,
                                                              artifacts: str) -> None:
    folder = Path(claims_dir(artifacts, "churn_demo"))
    folder.mkdir(parents=True)
    (folder / "README.txt").write_text("notes")
    (folder / "not-a-stamp--someone.json").write_text("{}")
    (folder / "2025-01-02--ambiguous.json").write_text("{}")

    granted, reason = take(store, artifacts, at=T0, run=RUN_A)

    assert granted, reason
    assert len(claim_files(artifacts)) == 4
    # the real claim made now still blocks a second run
    assert not take(store, artifacts, at=T0 + timedelta(hours=1), run=RUN_B)[0]


def test_times_in_other_zones_are_compared_in_utc(store: ObjectStore, artifacts: str) -> None:
    take(store, artifacts, at=T0, run=RUN_A)
    plus_two = timezone(timedelta(hours=2))
    # the same instants written in UTC+2: 23 h after the claim is inside the window, 25 h is not
    assert take(store, artifacts, at=(T0 + timedelta(hours=23)).astimezone(plus_two), run=RUN_B)[0] \
        is False
    assert take(store, artifacts, at=(T0 + timedelta(hours=25)).astimezone(plus_two), run=RUN_B)[0]
