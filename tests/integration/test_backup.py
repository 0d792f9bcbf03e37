"""scripts/backup.py against real SeaweedFS servers of its own (an import empties the buckets, so
not the session's): every object comes back byte for byte into an empty store, objects that were
not in the backup are removed, and a truncated archive changes nothing."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
from stack import free_port, generate_secrets, s3_identities, start_seaweedfs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from backup import BUCKETS, BackupError, s3_export, s3_import  # noqa: E402

from include.mlops_core.storage import make_s3_client  # noqa: E402


@pytest.fixture()
def two_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    secrets = generate_secrets()
    servers = []
    try:
        for name in ("source", "target"):
            servers.append(start_seaweedfs(tmp_path / name, port=free_port(7),
                                           identities=s3_identities(secrets),
                                           log_path=tmp_path / f"{name}.log",
                                           buckets=list(BUCKETS)))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", secrets["MLOPS_S3_ADMIN_ACCESS_KEY"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets["MLOPS_S3_ADMIN_SECRET_KEY"])
        clients = [make_s3_client(endpoint_url=s.url,
                                  access_key=secrets["MLOPS_S3_ADMIN_ACCESS_KEY"],
                                  secret_key=secrets["MLOPS_S3_ADMIN_SECRET_KEY"])
                   for s in servers]
        yield servers, clients
    finally:
        for server in servers:
            server.stop()


def _contents(client) -> dict[tuple[str, str], bytes]:
    found = {}
    for bucket in BUCKETS:
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            found[(bucket, item["Key"])] = client.get_object(
                Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def test_s3_round_trip_restores_every_object_and_removes_the_rest(
        two_stores, monkeypatch: pytest.MonkeyPatch) -> None:
    (source, target), (source_client, target_client) = two_stores
    objects = {("mlops", "audit/churn/2026-12-01.json"): b'{"promoted": true}',
               ("mlops", "runs/a b/ü.parquet"): os.urandom(300_000),
               ("mlops-data", "churn/date=2026-12-01/part-0.csv"): b"a,b\n1,2\n",
               ("mlflow", "artifacts/1/abc/model.skops"): os.urandom(5000),
               ("mlflow", "empty"): b""}
    for (bucket, key), data in objects.items():
        source_client.put_object(Bucket=bucket, Key=key, Body=data)
    target_client.put_object(Bucket="mlops", Key="stale/not-in-backup", Body=b"old")

    monkeypatch.setenv("MLOPS_S3_ENDPOINT_URL", source.url)
    archive = io.BytesIO()
    assert s3_export(archive) == {"mlops": 2, "mlops-data": 1, "mlflow": 2}

    monkeypatch.setenv("MLOPS_S3_ENDPOINT_URL", target.url)
    truncated = io.BytesIO(archive.getvalue()[: len(archive.getvalue()) // 2])
    with pytest.raises(BackupError):
        s3_import(truncated)
    assert _contents(target_client) == {("mlops", "stale/not-in-backup"): b"old"}

    archive.seek(0)
    assert s3_import(archive) == {"mlops": 2, "mlops-data": 1, "mlflow": 2}
    assert _contents(target_client) == objects
