"""Back up and restore the stack's state: its databases and its S3 buckets (docs/backup.md).

Used by ``./deploy.sh backup|restore`` (the embedded stack) and ``./deploy.sh compose
backup|restore`` (the production stack, inside its containers). Standard library and boto3 only.

    backup.py sqlite-backup SRC DST     a consistent copy of a live SQLite database (backup API)
    backup.py s3-export [--out FILE]    every object of the stack's buckets into a tar (default stdout)
    backup.py s3-import [--in FILE]     check the tar, empty the buckets, put every object back
    backup.py manifest DIR --stack S    write DIR/manifest.json: each file's size and sha256
    backup.py verify DIR --stack S      check DIR against its manifest (before anything is changed)

S3 is reached with the admin key: ``MLOPS_S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``. The tar holds ``<bucket>/<key>`` members, nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sqlite3
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUCKETS = ("mlops", "mlops-data", "mlflow")  # stack.ARTIFACTS_BUCKET, DATA_BUCKET, MLFLOW_BUCKET
# What a complete backup of each stack holds (manifest.json lists sizes and hashes).
FILES = {
    "embedded": ("airflow.db", "mlflow.db", "mlflow_auth.db", "s3.tar", "env"),
    "compose": ("airflow.pgdump", "mlflow.pgdump", "mlflow_auth.pgdump", "s3.tar", "env.compose"),
}


class BackupError(Exception):
    """The backup folder is incomplete or altered, or a source is unreachable."""


def sqlite_backup(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` with SQLite's online backup API: consistent while writers
    run (it restarts when the source changes under it). ``target`` is replaced atomically."""
    if not source.exists():
        raise BackupError(f"{source} does not exist")
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60) as src, \
            sqlite3.connect(tmp) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    os.chmod(tmp, 0o600)
    tmp.replace(target)


def _client() -> Any:
    from include.mlops_core.storage import make_s3_client

    missing = [key for key in ("MLOPS_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                               "AWS_SECRET_ACCESS_KEY") if not os.environ.get(key)]
    if missing:
        raise BackupError(f"{', '.join(missing)} not set: S3 is reached with the admin key")
    return make_s3_client(endpoint_url=os.environ["MLOPS_S3_ENDPOINT_URL"],
                          access_key=os.environ["AWS_ACCESS_KEY_ID"],
                          secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])


def _objects(client: Any, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def s3_export(out: IO[bytes], buckets: tuple[str, ...] = BUCKETS) -> dict[str, int]:
    """Every object of ``buckets`` into a tar stream; returns the object count per bucket."""
    client = _client()
    counts = {}
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for bucket in buckets:
            keys = _objects(client, bucket)
            for key in keys:
                data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                info = tarfile.TarInfo(f"{bucket}/{key}")
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
                tar.addfile(info, io.BytesIO(data))
            counts[bucket] = len(keys)
    return counts


def s3_import(source: IO[bytes], buckets: tuple[str, ...] = BUCKETS) -> dict[str, int]:
    """Read the whole tar first (a truncated or foreign file changes nothing), then empty the
    buckets and put every object back; returns the object count per bucket."""
    objects: list[tuple[str, str, bytes]] = []
    try:
        with tarfile.open(fileobj=source, mode="r|") as tar:
            for member in tar:
                bucket, _, key = member.name.partition("/")
                if not member.isfile() or bucket not in buckets or not key:
                    raise BackupError(f"unexpected member {member.name!r} in the S3 archive")
                handle = tar.extractfile(member)
                objects.append((bucket, key, handle.read() if handle else b""))
    except tarfile.TarError as err:
        raise BackupError(f"the S3 archive is not a complete tar: {err}") from err
    client = _client()
    have = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in have:
            client.create_bucket(Bucket=bucket)
        keys = _objects(client, bucket)
        for start in range(0, len(keys), 1000):
            client.delete_objects(Bucket=bucket, Delete={
                "Objects": [{"Key": key} for key in keys[start:start + 1000]], "Quiet": True})
    counts = dict.fromkeys(buckets, 0)
    for bucket, key, data in objects:
        client.put_object(Bucket=bucket, Key=key, Body=data)
        counts[bucket] += 1
    return counts


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(folder: Path, stack: str, extra: dict[str, Any] | None = None) -> dict:
    files = {}
    for name in FILES[stack]:
        path = folder / name
        if not path.exists():
            raise BackupError(f"{path} is missing: the backup is incomplete")
        files[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"stack": stack, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "files": files, **(extra or {})}
    target = folder / "manifest.json"  # private like the rest of the backup (mode 600)
    target.touch(mode=0o600)
    target.chmod(0o600)
    target.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify(folder: Path, stack: str) -> dict:
    """The manifest of ``folder`` if every file is there with its size and hash, else raise."""
    path = folder / "manifest.json"
    if not path.exists():
        raise BackupError(f"{path} is missing: not a backup folder (./deploy.sh backup makes one)")
    manifest = json.loads(path.read_text())
    if manifest.get("stack") != stack:
        raise BackupError(f"{folder} is a backup of the {manifest.get('stack')} stack, not of "
                          f"the {stack} one")
    for name in FILES[stack]:
        want = manifest["files"].get(name)
        file = folder / name
        if not want or not file.exists():
            raise BackupError(f"{file} is missing from the backup")
        if file.stat().st_size != want["bytes"] or _sha256(file) != want["sha256"]:
            raise BackupError(f"{file} does not match its manifest (changed or truncated)")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    copy = sub.add_parser("sqlite-backup")
    copy.add_argument("source", type=Path)
    copy.add_argument("target", type=Path)
    export = sub.add_parser("s3-export")
    export.add_argument("--out", type=Path)
    load = sub.add_parser("s3-import")
    load.add_argument("--in", dest="source", type=Path)
    for name in ("manifest", "verify"):
        cmd = sub.add_parser(name)
        cmd.add_argument("folder", type=Path)
        cmd.add_argument("--stack", choices=sorted(FILES), required=True)
        if name == "manifest":
            cmd.add_argument("--counts", help="JSON of what the backup holds, for people")
    args = parser.parse_args(argv)
    try:
        if args.command == "sqlite-backup":
            sqlite_backup(args.source, args.target)
        elif args.command == "s3-export":
            if args.out:
                with args.out.open("wb") as out:
                    counts = s3_export(out)
            else:
                counts = s3_export(sys.stdout.buffer)
            print(f"S3 objects exported: {json.dumps(counts)}", file=sys.stderr)
        elif args.command == "s3-import":
            if args.source:
                with args.source.open("rb") as source:
                    counts = s3_import(source)
            else:
                counts = s3_import(sys.stdin.buffer)
            print(f"S3 objects restored: {json.dumps(counts)}", file=sys.stderr)
        elif args.command == "manifest":
            extra = {"holds": json.loads(args.counts)} if args.counts else None
            write_manifest(args.folder, args.stack, extra)
        elif args.command == "verify":
            verify(args.folder, args.stack)
    except BackupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
