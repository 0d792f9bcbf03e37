"""SeaweedFS (S3) and an MLflow server on free ports, with fresh random keys, for one benchmark
run; the benchmarks' twin of tests/integration/conftest.py's ``services`` fixture."""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass
class BenchServices:
    work: Path
    s3_url: str
    mlflow_url: str
    access_key: str
    secret_key: str

    def connections(self) -> dict[str, str]:
        """The Airflow connections mlflow_default and mlops_s3, as environment variables."""
        return {
            "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "http",
                                                       "host": self.mlflow_url}),
            "AIRFLOW_CONN_MLOPS_S3": json.dumps({"conn_type": "aws", "login": self.access_key,
                                                 "password": self.secret_key,
                                                 "extra": {"endpoint_url": self.s3_url}}),
        }

    def store(self) -> Any:
        from include.mlops.storage import ObjectStore, make_s3_client

        return ObjectStore(make_s3_client(endpoint_url=self.s3_url, access_key=self.access_key,
                                          secret_key=self.secret_key))


@contextmanager
def bench_services(prefix: str) -> Iterator[BenchServices]:
    sys.path[:0] = [str(REPO), str(REPO / "scripts")]
    from stack import free_port, start_mlflow, start_seaweedfs

    work = Path(tempfile.mkdtemp(prefix=prefix))
    key, secret = "AK" + secrets.token_hex(8), secrets.token_hex(20)
    s3 = start_seaweedfs(work / "s3", port=free_port(7), access_key=key, secret_key=secret,
                         log_path=work / "s3.log", buckets=["mlops", "mlops-data"])
    try:
        mlflow = start_mlflow(work / "mlflow", port=free_port(), s3_url=s3.url, access_key=key,
                              secret_key=secret, log_path=work / "mlflow.log",
                              artifacts_destination="s3://mlops/mlflow-artifacts")
        try:
            yield BenchServices(work, s3.url, mlflow.url, key, secret)
        finally:
            mlflow.stop()
    finally:
        s3.stop()
