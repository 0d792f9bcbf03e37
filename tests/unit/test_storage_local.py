"""include/mlops_core/storage.py on local paths: ObjectStore() without an S3 client, real files."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from include.mlops_core.errors import PipelineError
from include.mlops_core.storage import (
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    is_s3,
    join,
    local_path,
    split_s3,
)
from tests.storage_race import race_create_only


@pytest.fixture
def store() -> ObjectStore:
    return ObjectStore()


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_then_read_round_trips_and_creates_parents(store: ObjectStore, tmp_path: Path) -> None:
    uri = str(tmp_path / "a" / "b" / "obj.json")

    info = store.write_bytes(uri, b'{"x": 1}')

    assert info == ObjectInfo(uri, 8, hashlib.sha256(b'{"x": 1}').hexdigest())
    assert store.read_bytes(uri) == b'{"x": 1}'
    assert store.exists(uri)
    assert store.info(uri) == info
    assert info.as_dict() == {"uri": uri, "size": 8, "etag": info.etag}


def test_overwrite_replaces_content_and_leaves_no_temp_files(store: ObjectStore, tmp_path: Path) -> None:
    uri = str(tmp_path / "obj.bin")
    store.write_bytes(uri, b"old")
    store.write_bytes(uri, b"new content")

    assert store.read_bytes(uri) == b"new content"
    assert entries(tmp_path) == ["obj.bin"]


def test_failed_write_keeps_the_old_object_and_no_partial_file(store: ObjectStore, tmp_path: Path) -> None:
    uri = str(tmp_path / "obj.bin")
    store.write_bytes(uri, b"old")

    with pytest.raises(TypeError):
        store.write_bytes(uri, "not bytes")  # type: ignore[arg-type]  # fails mid-write

    assert store.read_bytes(uri) == b"old"
    assert entries(tmp_path) == ["obj.bin"]


def test_create_only_writes_a_new_object(store: ObjectStore, tmp_path: Path) -> None:
    uri = str(tmp_path / "audit" / "v1.json")
    info = store.write_bytes(uri, b"first", create_only=True)
    assert info.size == 5
    assert store.read_bytes(uri) == b"first"
    assert entries(tmp_path / "audit") == ["v1.json"]


def test_create_only_refuses_to_replace(store: ObjectStore, tmp_path: Path) -> None:
    uri = str(tmp_path / "v1.json")
    store.write_bytes(uri, b"first")

    with pytest.raises(ObjectExistsError, match="already exists") as err:
        store.write_bytes(uri, b"second", create_only=True)

    assert uri in str(err.value)
    assert store.read_bytes(uri) == b"first"
    assert entries(tmp_path) == ["v1.json"]


def test_concurrent_create_only_writes_have_exactly_one_winner(store: ObjectStore, tmp_path: Path) -> None:
    uri = str(tmp_path / "record.json")
    outcomes = race_create_only(store, uri)

    winners = [i for i, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == 8
    assert len(winners) == 1
    assert store.read_bytes(uri) == f"writer {winners[0]}".encode()
    assert entries(tmp_path) == ["record.json"]


def test_create_only_loses_to_a_writer_that_gets_there_after_the_check(
        store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exists() check is only a shortcut: the hard link is what refuses (like O_EXCL)."""
    import include.mlops_core.storage as storage

    uri = str(tmp_path / "record.json")
    real_link = storage.os.link

    def other_writer_first(src: str, dst: Path) -> None:
        Path(dst).write_bytes(b"other writer")
        real_link(src, dst)

    monkeypatch.setattr(storage.os, "link", other_writer_first)

    with pytest.raises(ObjectExistsError, match="already exists"):
        store.write_bytes(uri, b"mine", create_only=True)

    assert store.read_bytes(uri) == b"other writer"
    assert entries(tmp_path) == ["record.json"]  # no temporary file left behind


def test_list_is_recursive_sorted_and_skips_hidden_files(store: ObjectStore, tmp_path: Path) -> None:
    for name, data in [("date=2025-01-02/part-0.csv", b"bb"), ("date=2025-01-01/part-1.csv", b"a"),
                       ("date=2025-01-01/part-0.csv", b"aaa"), ("date=2025-01-01/.part-2.tmp", b"x")]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)

    listed = store.list(str(tmp_path))

    assert [o.uri for o in listed] == [str(tmp_path / "date=2025-01-01/part-0.csv"),
                                       str(tmp_path / "date=2025-01-01/part-1.csv"),
                                       str(tmp_path / "date=2025-01-02/part-0.csv")]
    assert [o.size for o in listed] == [3, 1, 2]
    assert listed[0].etag == hashlib.sha256(b"aaa").hexdigest()
    assert [o.uri for o in store.list(str(tmp_path / "date=2025-01-02"))] == \
        [str(tmp_path / "date=2025-01-02/part-0.csv")]


def test_list_and_list_prefixes_of_a_missing_folder_are_empty(store: ObjectStore, tmp_path: Path) -> None:
    assert store.list(str(tmp_path / "absent")) == []
    assert store.list_prefixes(str(tmp_path / "absent")) == []


def test_list_prefixes_returns_immediate_folders_only(store: ObjectStore, tmp_path: Path) -> None:
    for folder in ("date=2025-01-02", "date=2025-01-01/nested", "date=2024-12-31"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "file.csv").write_bytes(b"")

    assert store.list_prefixes(str(tmp_path)) == ["date=2024-12-31", "date=2025-01-01",
                                                  "date=2025-01-02"]


def test_read_of_a_missing_object_names_it(store: ObjectStore, tmp_path: Path) -> None:
    uri = str(tmp_path / "nope.csv")
    assert not store.exists(uri)
    with pytest.raises(ObjectNotFoundError, match="file does not exist") as err:
        store.read_bytes(uri)
    assert uri in str(err.value)


def test_file_uris_work_like_paths(store: ObjectStore, tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/x/y.txt"
    store.write_bytes(uri, b"hello")
    assert (tmp_path / "x" / "y.txt").read_bytes() == b"hello"
    assert store.read_bytes(uri) == b"hello"
    assert store.exists(uri)
    assert [o.size for o in store.list(f"file://{tmp_path}")] == [5]
    assert store.list_prefixes(f"file://{tmp_path}") == ["x"]


def test_ensure_bucket_is_a_no_op_for_local_paths(store: ObjectStore, tmp_path: Path) -> None:
    store.ensure_bucket(str(tmp_path / "bucket"))
    assert entries(tmp_path) == []


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.read_bytes("s3://bucket/key"), id="read"),
        pytest.param(lambda s: s.list("s3://bucket/prefix"), id="list"),
        pytest.param(lambda s: s.write_bytes("s3://bucket/key", b"x"), id="write"),
        pytest.param(lambda s: s.exists("s3://bucket/key"), id="exists"),
    ],
)
def test_s3_uri_without_a_client_says_a_connection_is_needed(
        store: ObjectStore, call: Callable[[ObjectStore], object]) -> None:
    with pytest.raises(PipelineError, match="an s3:// URI needs an S3 connection, none is configured"):
        call(store)


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        pytest.param("s3://b/prefix/", ("date=1/", "/part.csv"), "s3://b/prefix/date=1/part.csv",
                     id="slashes"),
        pytest.param("/data", ("x",), "/data/x", id="local"),
        pytest.param("s3://b", (), "s3://b", id="no-parts"),
    ],
)
def test_join(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert join(base, *parts) == expected


def test_uri_helpers() -> None:
    assert split_s3("s3://bucket/a/b.csv") == ("bucket", "a/b.csv")
    assert split_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="has no bucket"):
        split_s3("s3:///key")
    assert is_s3("s3://b/k") and not is_s3("/tmp/s3://x") and not is_s3("file:///x")
    assert local_path("file:///tmp/a") == Path("/tmp/a")
    assert local_path("/tmp/a") == Path("/tmp/a")
