"""Start, check and stop the embedded services: SeaweedFS (S3) and an MLflow tracking server.

Used by ``deploy.sh`` (long-lived, pid files under ``.local/``) and by the integration tests
(throw-away instances on free ports). Each server is a child process whose log goes to a file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port(span: int = 1) -> int:
    """A port P such that P..P+span-1 and their +10000 gRPC twins look free."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span + 10000 >= 65535:
            continue
        if all(_is_free(p) and (span == 1 or _is_free(p + 10000)) for p in range(port, port + span)):
            return port
    raise RuntimeError("no free port range found")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None,
               log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text()[-3000:] if log_path and log_path.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting:\n{tail}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.3)
    tail = log_path.read_text()[-3000:] if log_path and log_path.exists() else ""
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s:\n{tail}")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
        return response.status < 300


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    url: str
    log_path: Path

    def stop(self, timeout: float = 15) -> None:
        stop_pid(self.proc.pid, timeout)


def stop_pid(pid: int, timeout: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL after ``timeout`` (weed is slow on SIGTERM)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
                waited = os.waitpid(pid, os.WNOHANG) if _is_child(pid) else (0, 0)
                if waited[0] == pid:
                    return
            except (ProcessLookupError, ChildProcessError):
                return
            time.sleep(0.2)


def _is_child(pid: int) -> bool:
    try:
        return os.getppid() != pid and Path(f"/proc/{pid}/stat").read_text().split()[3] == \
            str(os.getpid())
    except OSError:
        return False


def start_seaweedfs(data_dir: Path, *, port: int, access_key: str, secret_key: str,
                    log_path: Path, buckets: list[str] = ()) -> Service:
    """``weed mini`` with S3 on ``port`` and its other parts on port+1..port+6."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir.parent / f"{data_dir.name}-s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "mlops", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    config.chmod(0o600)
    cmd = [str(BIN / "weed"), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-s3.port={port}", f"-master.port={port + 1}", f"-volume.port={port + 2}",
           f"-filer.port={port + 3}", f"-admin.port={port + 4}", f"-s3.port.iceberg={port + 5}",
           f"-s3.port.lance={port + 6}", "-admin.ui=false", "-webdav=false",
           f"-s3.config={config}"]
    if buckets:
        cmd.append(f"-bucket={','.join(buckets)}")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: port_open(port), 60, "SeaweedFS", proc, log_path)
        wait_until(lambda: _s3_ready(url, access_key, secret_key), 60, "SeaweedFS S3 API", proc,
                   log_path)
    except Exception:
        stop_pid(proc.pid, 5)
        raise
    return Service("seaweedfs", proc, url, log_path)


def _s3_ready(url: str, access_key: str, secret_key: str) -> bool:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from include.mlops.storage import make_s3_client

    make_s3_client(endpoint_url=url, access_key=access_key, secret_key=secret_key).list_buckets()
    return True


def start_mlflow(home: Path, *, port: int, artifacts_destination: str, s3_url: str,
                 access_key: str, secret_key: str, log_path: Path) -> Service:
    """MLflow server: SQLite backend in ``home``, artifacts proxied to S3."""
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_url, "AWS_ACCESS_KEY_ID": access_key,
           "AWS_SECRET_ACCESS_KEY": secret_key, "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # 1.2 GB → 390 MB RSS
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
           "--artifacts-destination", artifacts_destination, "--workers", "1"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
                            env=env, cwd=home, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/health"), 120, "MLflow server", proc, log_path)
    except Exception:
        stop_pid(proc.pid, 5)
        raise
    return Service("mlflow", proc, url, log_path)
