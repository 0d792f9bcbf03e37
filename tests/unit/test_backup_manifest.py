"""scripts/backup.py: the manifest a restore checks before it changes anything, and SQLite's
online backup. The S3 round trip on a real server: tests/integration/test_backup.py; the whole
production stack backed up, wiped and restored: tests/integration/test_compose_stack.py."""

from __future__ import annotations

import sqlite3
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from backup import FILES, BackupError, sqlite_backup, verify, write_manifest  # noqa: E402


def _folder(tmp_path: Path, stack: str = "embedded") -> Path:
    folder = tmp_path / "backup"
    folder.mkdir()
    for index, name in enumerate(FILES[stack]):
        (folder / name).write_bytes(f"{name} {index}\n".encode() * 100)
    write_manifest(folder, stack)
    return folder


def test_a_complete_backup_verifies(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    manifest = verify(folder, "embedded")
    assert set(manifest["files"]) == set(FILES["embedded"])
    assert (folder / "manifest.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("damage", ["truncated", "changed", "missing", "other stack",
                                    "no manifest"])
def test_a_damaged_backup_is_refused(tmp_path: Path, damage: str) -> None:
    folder = _folder(tmp_path)
    target = folder / "s3.tar"
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[:50])
    elif damage == "changed":
        data = bytearray(target.read_bytes())
        data[10] ^= 1
        target.write_bytes(bytes(data))
    elif damage == "missing":
        target.unlink()
    elif damage == "no manifest":
        (folder / "manifest.json").unlink()
    stack = "compose" if damage == "other stack" else "embedded"
    with pytest.raises(BackupError):
        verify(folder, stack)


def test_an_incomplete_folder_gets_no_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "airflow.db").write_bytes(b"x")
    with pytest.raises(BackupError, match="mlflow.db is missing"):
        write_manifest(folder, "embedded")
    assert not (folder / "manifest.json").exists()


def test_sqlite_backup_is_consistent_while_a_writer_commits(tmp_path: Path) -> None:
    """Rows are inserted in pairs, each pair in one transaction: a consistent copy holds an even
    number of rows whatever moment it was taken at."""
    source, target = tmp_path / "live.db", tmp_path / "copy.db"
    with sqlite3.connect(source) as db:
        db.execute("CREATE TABLE t (i INTEGER, pad TEXT)")
    stop = threading.Event()

    def write() -> None:
        db = sqlite3.connect(source, timeout=30)
        i = 0
        while not stop.is_set():
            with db:
                db.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * 2000))
                db.execute("INSERT INTO t VALUES (?, ?)", (i, "y" * 2000))
            i += 1
        db.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        counts = []
        for _ in range(3):
            sqlite_backup(source, target)
            with sqlite3.connect(target) as copy:
                assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                counts.append(copy.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        stop.set()
        writer.join()
    assert all(count % 2 == 0 for count in counts), counts
    assert counts[-1] > 0 and target.stat().st_mode & 0o777 == 0o600
    with pytest.raises(BackupError):
        sqlite_backup(tmp_path / "absent.db", tmp_path / "x.db")
