"""include/mlops_core/storage.py against a real SeaweedFS of its own (``weed mini``, as ./deploy.sh
runs it): the create-only write that keeps audit records and retrain claims append-only is
refused by the store itself (``If-None-Match: *`` → 412), also when writers race for the key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stack import free_port, generate_secrets, s3_identities, start_seaweedfs

from include.mlops_core.errors import CredentialsError, PipelineError
from include.mlops_core.storage import (
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStore,
    make_s3_client,
)
from tests.storage_race import race_create_only


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("storage-s3")
    secrets = generate_secrets()
    server = start_seaweedfs(root / "data", port=free_port(7), identities=s3_identities(secrets),
                             log_path=root / "weed.log", buckets=["mlops"])
    try:
        yield {"url": server.url, "access_key": secrets["MLOPS_S3_ADMIN_ACCESS_KEY"],
               "secret_key": secrets["MLOPS_S3_ADMIN_SECRET_KEY"]}
    finally:
        server.stop()


def store_for(seaweed: dict[str, Any], **overrides: str) -> ObjectStore:
    keys = {"access_key": seaweed["access_key"], "secret_key": seaweed["secret_key"], **overrides}
    return ObjectStore(make_s3_client(endpoint_url=seaweed["url"], **keys),
                       endpoint=seaweed["url"], attempts=2, backoff_seconds=0.1,
                       conn_hint="the test's SeaweedFS")


@pytest.fixture
def store(seaweed: dict[str, Any]) -> ObjectStore:
    return store_for(seaweed)


def test_round_trip_list_info_and_delete(store: ObjectStore, request: pytest.FixtureRequest) -> None:
    base = f"s3://mlops/{request.node.name}"
    for day, data in (("date=2025-01-02", b"bb"), ("date=2025-01-01", b"aaa")):
        store.write_bytes(f"{base}/{day}/part-0.csv", data)

    assert store.read_bytes(f"{base}/date=2025-01-01/part-0.csv") == b"aaa"
    assert [(o.uri, o.size) for o in store.list(base)] == [
        (f"{base}/date=2025-01-01/part-0.csv", 3), (f"{base}/date=2025-01-02/part-0.csv", 2)]
    assert store.list_prefixes(base) == ["date=2025-01-01", "date=2025-01-02"]
    assert store.info(f"{base}/date=2025-01-02/part-0.csv").size == 2

    store.delete(f"{base}/date=2025-01-02/part-0.csv")
    store.delete(f"{base}/date=2025-01-02/part-0.csv")  # gone already: no error
    assert not store.exists(f"{base}/date=2025-01-02/part-0.csv")
    with pytest.raises(ObjectNotFoundError, match="object does not exist"):
        store.read_bytes(f"{base}/date=2025-01-02/part-0.csv")


def test_create_only_refuses_to_replace(store: ObjectStore, request: pytest.FixtureRequest) -> None:
    uri = f"s3://mlops/{request.node.name}/audit/v1.json"
    first = store.write_bytes(uri, b"first", create_only=True)

    with pytest.raises(ObjectExistsError, match=f"write {uri}: object already exists"):
        store.write_bytes(uri, b"second", create_only=True)

    assert store.read_bytes(uri) == b"first"
    assert store.info(uri).etag == first.etag
    store.write_bytes(uri, b"replaced")  # a plain write still overwrites
    assert store.read_bytes(uri) == b"replaced"


def test_concurrent_create_only_writes_have_exactly_one_winner(
        store: ObjectStore, request: pytest.FixtureRequest) -> None:
    uri = f"s3://mlops/{request.node.name}/claim.json"
    writers = 8
    outcomes = race_create_only(store, uri, writers)

    winners = [i for i, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == writers, outcomes  # no other error
    assert len(winners) == 1, outcomes
    assert store.read_bytes(uri) == f"writer {winners[0]}".encode()


def test_a_missing_bucket_is_named_and_ensure_bucket_creates_it(
        store: ObjectStore, seaweed: dict[str, Any]) -> None:
    # (SeaweedFS creates a bucket on an admin's PUT, so a read and a list show the error.)
    for call in (lambda: store.read_bytes("s3://it-storage-new/x.json"),
                 lambda: store.list("s3://it-storage-new")):
        with pytest.raises(PipelineError, match=f"bucket does not exist on {seaweed['url']}"):
            call()

    store.ensure_bucket("s3://it-storage-new/x.json")
    assert store.list("s3://it-storage-new") == []
    store.ensure_bucket("s3://it-storage-new")  # there now: no error
    store.write_bytes("s3://it-storage-new/x.json", b"{}", create_only=True)
    assert store.list_prefixes("s3://it-storage-new") == []
    assert [o.uri for o in store.list("s3://it-storage-new")] == ["s3://it-storage-new/x.json"]


def test_a_wrong_secret_is_a_credentials_error_naming_the_connection(
        seaweed: dict[str, Any], tmp_path: Path) -> None:
    store = store_for(seaweed, secret_key="not-the-secret")
    with pytest.raises(CredentialsError, match="rejected the credentials .*the test's SeaweedFS"):
        store.write_bytes("s3://mlops/x.json", b"{}", create_only=True)
