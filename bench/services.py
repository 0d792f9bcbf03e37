"""SeaweedFS (S3) and an MLflow server on free ports, with fresh random keys, for one benchmark
run; the benchmarks' twin of tests/integration/conftest.py's ``services`` fixture."""

from __future__ import annotations

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
    secrets: dict[str, str]
    pids: tuple[int, ...] = ()  # SeaweedFS's and MLflow's (each leads its process group)

    @property
    def access_key(self) -> str:  # the S3 admin's (source data)
        return self.secrets["MLOPS_S3_ADMIN_ACCESS_KEY"]

    @property
    def secret_key(self) -> str:
        return self.secrets["MLOPS_S3_ADMIN_SECRET_KEY"]

    def connections(self) -> dict[str, str]:
        """The Airflow connections mlflow_default and mlops_s3 (the workers' accounts), as
        environment variables, plus the workers' MLflow login for the mlflow library."""
        from stack import MLFLOW_WORKER, connection_env

        return {**connection_env(self.secrets, mlflow_url=self.mlflow_url, s3_url=self.s3_url),
                "MLFLOW_TRACKING_USERNAME": MLFLOW_WORKER,
                "MLFLOW_TRACKING_PASSWORD": self.secrets["MLOPS_MLFLOW_WORKER_PASSWORD"]}

    def store(self) -> Any:
        from include.mlops_core.storage import ObjectStore, make_s3_client

        return ObjectStore(make_s3_client(endpoint_url=self.s3_url, access_key=self.access_key,
                                          secret_key=self.secret_key))


@contextmanager
def bench_services(prefix: str) -> Iterator[BenchServices]:
    """SeaweedFS and MLflow secured as ./deploy.sh runs them (scripts/stack.py)."""
    sys.path[:0] = [str(REPO), str(REPO / "scripts")]
    from stack import generate_secrets, start_throwaway_services

    work = Path(tempfile.mkdtemp(prefix=prefix))
    found = generate_secrets()
    s3, mlflow = start_throwaway_services(work, found)
    try:
        yield BenchServices(work, s3.url, mlflow.url, found, (s3.proc.pid, mlflow.proc.pid))
    finally:
        mlflow.stop()
        s3.stop()
