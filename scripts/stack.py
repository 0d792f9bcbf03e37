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


# -- long-lived local stack (deploy.sh) ------------------------------------------------------------
# Each service runs detached (its own session) with a pid file in STATE/run and a log in STATE/logs.
# "Running" means: the pid file names a live, non-zombie process whose command line matches, and
# its port answers. A port in use without our pid file is someone else's: refuse, never start twice.

REPO = Path(__file__).resolve().parent.parent
AIRFLOW_PARTS = ("api-server", "scheduler", "dag-processor", "triggerer")
STOP_ORDER = ("scheduler", "triggerer", "dag-processor", "api-server", "mlflow", "seaweedfs")


@dataclass(frozen=True)
class LocalStack:
    """Paths and ports of the stack under ``state`` (``.local/``); ports from MLOPS_*_PORT."""

    state: Path
    s3_port: int
    mlflow_port: int
    airflow_port: int

    @classmethod
    def from_env(cls) -> LocalStack:
        return cls(state=Path(os.environ.get("MLOPS_STATE_DIR") or REPO / ".local").resolve(),
                   s3_port=int(os.environ.get("MLOPS_S3_PORT", "8333")),
                   mlflow_port=int(os.environ.get("MLOPS_MLFLOW_PORT", "5000")),
                   airflow_port=int(os.environ.get("MLOPS_AIRFLOW_PORT", "8080")))

    def pid_file(self, name: str) -> Path:
        return self.state / "run" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def port(self, name: str) -> int | None:
        return {"seaweedfs": self.s3_port, "mlflow": self.mlflow_port,
                "api-server": self.airflow_port}.get(name)

    def url(self, name: str) -> str:
        port = self.port(name)
        return f"http://127.0.0.1:{port}" if port else "-"

    def ports_used_by(self, name: str) -> list[int]:
        """Every port the service binds (weed mini: S3 port..+6 and their +10000 gRPC twins)."""
        if name == "seaweedfs":
            base = range(self.s3_port, self.s3_port + 7)
            return [*base, *(p + 10000 for p in base if p not in (self.s3_port + 5, self.s3_port + 6))]
        port = self.port(name)
        return [port] if port else []


# Words that must appear in a live process's command line for its pid file to count.
MARKERS = {"seaweedfs": "weed", "mlflow": "mlflow", "api-server": "airflow",
           "scheduler": "airflow", "dag-processor": "airflow", "triggerer": "airflow"}


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """Alive, not a zombie, and (if given) ``marker`` in its command line (pid reuse guard)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        if marker is not None:
            return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        return True
    except (OSError, IndexError):
        return False


def read_pid(stack: LocalStack, name: str) -> int | None:
    """The pid from the pid file if that process is still ours and alive; else None."""
    try:
        pid = int(stack.pid_file(name).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid, MARKERS[name]) else None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) succeeds while zombies remain in the group; look for a live member.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def stop_group(pid: int, *, first: signal.Signals = signal.SIGTERM, timeout: float = 30) -> str:
    """Signal the process group led by ``pid``; SIGKILL whatever is left after ``timeout``."""
    for sig, wait in ((first, timeout), (signal.SIGKILL, 10)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return "stopped"
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pid):
                return "stopped" if sig != signal.SIGKILL else "killed"
            time.sleep(0.3)
    return "still running"


def _can_listen(port: int) -> bool:
    """Like the servers do (SO_REUSEADDR): TIME-WAIT leftovers of a stopped server do not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _check_ports_free(stack: LocalStack, name: str) -> None:
    busy = [p for p in stack.ports_used_by(name) if not _can_listen(p)]
    if busy:
        env = {"seaweedfs": "MLOPS_S3_PORT", "mlflow": "MLOPS_MLFLOW_PORT",
               "api-server": "MLOPS_AIRFLOW_PORT"}[name]
        raise SystemExit(
            f"{name}: port(s) {', '.join(map(str, busy))} are in use by a process this stack did "
            f"not start (no live pid file {stack.pid_file(name)}). Stop that process or choose "
            f"another port with {env}=…")


def _write_pid(stack: LocalStack, name: str, pid: int) -> None:
    path = stack.pid_file(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n")


def _credentials() -> tuple[str, str]:
    try:
        return os.environ["MLOPS_S3_ACCESS_KEY"], os.environ["MLOPS_S3_SECRET_KEY"]
    except KeyError as err:
        raise SystemExit(f"{err.args[0]} is not set: run through ./deploy.sh (it reads .env)") \
            from None


def _say(name: str, what: str, pid: int | None, url: str) -> None:
    print(f"  {name:<14} {what:<8} pid {pid or '-':<8} {url}", flush=True)


def up_s3(stack: LocalStack) -> None:
    access_key, secret_key = _credentials()
    url = stack.url("seaweedfs")
    pid = read_pid(stack, "seaweedfs")
    if pid is not None:
        wait_until(lambda: _s3_ready(url, access_key, secret_key), 60, "SeaweedFS S3 API")
        what = "reused"
    else:
        _check_ports_free(stack, "seaweedfs")
        service = start_seaweedfs(stack.state / "seaweedfs", port=stack.s3_port,
                                  access_key=access_key, secret_key=secret_key,
                                  log_path=stack.log_file("seaweedfs"),
                                  buckets=["mlops", "mlops-data"])
        pid = service.proc.pid
        _write_pid(stack, "seaweedfs", pid)
        what = "started"
    _ensure_buckets(url, access_key, secret_key, ["mlops", "mlops-data"])
    _say("seaweedfs", what, pid, f"{url}  (S3; buckets mlops, mlops-data)")


def _ensure_buckets(url: str, access_key: str, secret_key: str, buckets: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    from include.mlops.storage import make_s3_client

    client = make_s3_client(endpoint_url=url, access_key=access_key, secret_key=secret_key)
    have = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in have:
            client.create_bucket(Bucket=bucket)


def up_mlflow(stack: LocalStack) -> None:
    access_key, secret_key = _credentials()
    url = stack.url("mlflow")
    pid = read_pid(stack, "mlflow")
    if pid is not None:
        wait_until(lambda: http_ok(f"{url}/health"), 120, "MLflow server")
        what = "reused"
    else:
        _check_ports_free(stack, "mlflow")
        service = start_mlflow(stack.state / "mlflow", port=stack.mlflow_port,
                               artifacts_destination="s3://mlops/mlflow-artifacts",
                               s3_url=stack.url("seaweedfs"), access_key=access_key,
                               secret_key=secret_key, log_path=stack.log_file("mlflow"))
        pid = service.proc.pid
        _write_pid(stack, "mlflow", pid)
        what = "started"
    _say("mlflow", what, pid, url)


def start_airflow_part(part: str, *, port: int, log_path: Path, cwd: Path,
                       env: dict[str, str] | None = None) -> subprocess.Popen:
    """One Airflow component (``api-server`` on 127.0.0.1:``port``, or ``scheduler``,
    ``dag-processor``, ``triggerer``) detached in its own session, output appended to ``log_path``.

    Configuration comes from ``env`` (default: this process's environment).
    """
    cmd = [str(BIN / "airflow"), part]
    if part == "api-server":
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=env, start_new_session=True)


def up_airflow(stack: LocalStack, timeout: float = 180) -> None:
    """api-server, scheduler, dag-processor, triggerer as four detached processes.

    Configuration comes from the environment (AIRFLOW_HOME, AIRFLOW__*), set by deploy.sh.
    """
    started: dict[str, subprocess.Popen] = {}
    for part in AIRFLOW_PARTS:
        pid = read_pid(stack, part)
        if pid is not None:
            _say(part, "reused", pid, stack.url(part))
            continue
        if part == "api-server":
            _check_ports_free(stack, part)
        proc = start_airflow_part(part, port=stack.airflow_port, log_path=stack.log_file(part),
                                  cwd=stack.state)
        _write_pid(stack, part, proc.pid)
        started[part] = proc
        _say(part, "started", proc.pid, stack.url(part))
    try:
        if "api-server" in started or read_pid(stack, "api-server"):
            health = f"{stack.url('api-server')}/api/v2/monitor/health"
            wait_until(lambda: http_ok(health), timeout, "Airflow api-server",
                       started.get("api-server"), stack.log_file("api-server"))
        for part, proc in started.items():  # the others have no port: they must still be up
            if proc.poll() is not None:
                raise RuntimeError(f"{part} exited with {proc.returncode}; see "
                                   f"{stack.log_file(part)}")
    except Exception:
        for part, proc in started.items():
            stop_group(proc.pid, timeout=10)
            stack.pid_file(part).unlink(missing_ok=True)
        raise


def down(stack: LocalStack, names: list[str]) -> None:
    for name in STOP_ORDER:
        if names and name not in names:
            continue
        path = stack.pid_file(name)
        pid = read_pid(stack, name)
        if pid is None:
            path.unlink(missing_ok=True)
            print(f"  {name:<14} not running", flush=True)
            continue
        # Airflow parts shut down cleanly on SIGTERM (the scheduler ends its task processes);
        # weed is slow on SIGTERM, so give it less time before SIGKILL.
        began = time.monotonic()
        result = stop_group(pid, timeout=10 if name == "seaweedfs" else 30)
        if result != "still running":
            path.unlink(missing_ok=True)
        print(f"  {name:<14} {result:<8} pid {pid:<8} {time.monotonic() - began:.1f}s", flush=True)


def _json_get(url: str, timeout: float = 3) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read())


def status(stack: LocalStack) -> int:
    """One line per service; returns the number of services not running and healthy."""
    bad = 0
    monitor: dict = {}
    if read_pid(stack, "api-server"):
        try:
            monitor = _json_get(f"{stack.url('api-server')}/api/v2/monitor/health")
        except Exception as err:  # noqa: BLE001
            monitor = {"error": str(err)}
    for name in ("seaweedfs", "mlflow", *AIRFLOW_PARTS):
        pid = read_pid(stack, name)
        if pid is None:
            state, health = "stopped", "-"
        else:
            state, health = "running", _health(stack, name, monitor)
        ok = state == "running" and health.startswith("healthy")
        bad += not ok
        url = stack.url(name) if name != "api-server" else f"{stack.url(name)}/dags/training"
        print(f"{name:<14} {state:<8} pid {pid or '-':<8} {url:<38} {health}")
    return bad


def _health(stack: LocalStack, name: str, monitor: dict) -> str:
    try:
        if name == "seaweedfs":
            access_key, secret_key = _credentials()
            _s3_ready(stack.url(name), access_key, secret_key)
            return "healthy (S3 API accepts the .env credentials)"
        if name == "mlflow":
            http_ok(f"{stack.url(name)}/health")
            return "healthy (/health)"
        if "error" in monitor:
            return f"unhealthy: api-server health check failed: {monitor['error']}"
        key = {"api-server": "metadatabase", "scheduler": "scheduler",
               "dag-processor": "dag_processor", "triggerer": "triggerer"}[name]
        info = monitor.get(key) or {}
        beat = info.get("latest_scheduler_heartbeat") or info.get("latest_triggerer_heartbeat") \
            or info.get("latest_dag_processor_heartbeat")
        if beat:
            from datetime import UTC, datetime

            age = (datetime.now(UTC) - datetime.fromisoformat(beat)).total_seconds()
            detail = f" (heartbeat {age:.0f}s ago)"
        else:
            detail = " (metadata DB)" if key == "metadatabase" else ""
        return f"{info.get('status') or 'unknown'}{detail}"
    except Exception as err:  # noqa: BLE001
        return f"unhealthy: {type(err).__name__}: {err}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="Run the local stack (used by deploy.sh; reads MLOPS_* and AIRFLOW_* env)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up-s3", help="start SeaweedFS (or reuse the running one)")
    sub.add_parser("up-mlflow", help="start the MLflow server (or reuse the running one)")
    sub.add_parser("up-airflow", help="start api-server, scheduler, dag-processor, triggerer")
    stop = sub.add_parser("down", help="stop services (all by default); data is kept")
    stop.add_argument("names", nargs="*", metavar="NAME", help=" ".join(STOP_ORDER))
    sub.add_parser("status", help="one line per service")
    args = parser.parse_args(argv)
    stack = LocalStack.from_env()
    unknown = set(getattr(args, "names", [])) - set(STOP_ORDER)
    if unknown:
        parser.error(f"unknown service(s) {sorted(unknown)}; choose from {', '.join(STOP_ORDER)}")
    try:
        if args.command == "up-s3":
            up_s3(stack)
        elif args.command == "up-mlflow":
            up_mlflow(stack)
        elif args.command == "up-airflow":
            up_airflow(stack)
        elif args.command == "down":
            down(stack, args.names)
        elif args.command == "status":
            return 1 if status(stack) else 0
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
