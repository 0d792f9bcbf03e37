"""Start, check and stop the embedded services: SeaweedFS (S3) and an MLflow tracking server.

Used by ``deploy.sh`` (long-lived, pid files under ``.local/``) and by the integration tests
(throw-away instances on free ports). Each server is a child process whose log goes to a file.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil

BIN = Path(sys.executable).parent

# -- secrets (.env) --------------------------------------------------------------------------------
# Every secret of the local stack, generated once into .env (mode 600, git-ignored). Who holds what:
# docs/security.md. Keys missing from an older .env are added; existing values are never changed.
AIRFLOW_USERS = {"admin": ("admin", "MLOPS_AIRFLOW_ADMIN_PASSWORD"),  # user: (role, password key)
                 "operator": ("user", "MLOPS_AIRFLOW_OPERATOR_PASSWORD"),
                 "viewer": ("viewer", "MLOPS_AIRFLOW_VIEWER_PASSWORD")}
MLFLOW_WORKER, MLFLOW_VIEWER = "airflow-worker", "viewer"  # MLflow accounts besides "admin"
MLFLOW_BUCKET, ARTIFACTS_BUCKET, DATA_BUCKET = "mlflow", "mlops", "mlops-data"


def _access_key() -> str:
    import secrets

    return "AK" + secrets.token_hex(9).upper()


def _token(size: int) -> Any:
    import secrets

    return lambda: secrets.token_urlsafe(size)


def _fernet() -> str:
    """``cryptography.fernet.Fernet.generate_key()``, in the standard library (the host that runs
    ``./deploy.sh compose`` needs no packages)."""
    import base64

    return base64.urlsafe_b64encode(os.urandom(32)).decode()


SECRETS: dict[str, Any] = {
    "MLOPS_AIRFLOW_ADMIN_PASSWORD": _token(18),
    "MLOPS_AIRFLOW_OPERATOR_PASSWORD": _token(18),
    "MLOPS_AIRFLOW_VIEWER_PASSWORD": _token(18),
    "AIRFLOW__API_AUTH__JWT_SECRET": _token(48),
    "AIRFLOW__CORE__FERNET_KEY": _fernet,
    "AIRFLOW__API__SECRET_KEY": _token(48),
    "MLOPS_MLFLOW_ADMIN_PASSWORD": _token(18),
    "MLOPS_MLFLOW_WORKER_PASSWORD": _token(18),
    "MLOPS_MLFLOW_VIEWER_PASSWORD": _token(18),
    "MLOPS_MLFLOW_FLASK_SECRET_KEY": _token(32),
    "MLOPS_S3_ADMIN_ACCESS_KEY": _access_key,
    "MLOPS_S3_ADMIN_SECRET_KEY": _token(30),
    "MLOPS_S3_MLFLOW_ACCESS_KEY": _access_key,
    "MLOPS_S3_MLFLOW_SECRET_KEY": _token(30),
    "MLOPS_S3_WORKER_ACCESS_KEY": _access_key,
    "MLOPS_S3_WORKER_SECRET_KEY": _token(30),
}
# The production stack (docker-compose.yaml, .env.compose) has the same secrets and its own database
# and broker passwords.
COMPOSE_SECRETS: dict[str, Any] = {
    **SECRETS,
    "MLOPS_DB_SUPERUSER_PASSWORD": _token(24),
    "MLOPS_DB_AIRFLOW_PASSWORD": _token(24),
    "MLOPS_DB_MLFLOW_PASSWORD": _token(24),
    "MLOPS_DB_OPTUNA_PASSWORD": _token(24),
    "MLOPS_REDIS_PASSWORD": _token(24),
}
# Keys of SECRETS that the Airflow processes themselves need (their own configuration); every
# other secret stays out of their environment: workers get theirs from Connections.
AIRFLOW_PROCESS_SECRETS = ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY",
                           "AIRFLOW__API__SECRET_KEY")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only (mode 600 from the first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def generate_secrets() -> dict[str, str]:
    """A fresh value for every key of :data:`SECRETS` (the tests' stacks use this too)."""
    return {key: make() for key, make in SECRETS.items()}


def ensure_env_file(path: Path, wanted: dict[str, Any] | None = None,
                    stack: str = "the local stack (./deploy.sh local)") -> str:
    """Create ``path`` with every secret of ``wanted`` (default :data:`SECRETS`), or add the
    missing ones; mode 600. Returns what it did."""
    from datetime import UTC, datetime

    wanted = SECRETS if wanted is None else wanted
    text = path.read_text() if path.exists() else ""
    present = read_env_file(path) if text else {}
    missing = [key for key in wanted if key not in present]
    said = ""
    if not text:
        text = (f"# Secrets of {stack}, generated "
                f"{datetime.now(UTC):%Y-%m-%d}. Keep this file private (mode 600); who holds "
                "which secret and how to rotate it: docs/security.md.\n"
                "# Airflow users: admin, operator (may trigger), viewer (read-only); MLflow "
                f"users: admin, {MLFLOW_VIEWER} (read-only).\n")
    if missing:
        if not text.endswith("\n"):
            text += "\n"
        text += "".join(f"{key}={wanted[key]()}\n" for key in missing)
        write_private(path, text)
        said = ("Created " if len(missing) == len(wanted) else
                f"Added {', '.join(missing)} to ") + f"{_shown(path)} (random secrets, mode 600)"
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
        said += f"{'; r' if said else 'R'}estricted {_shown(path)} to mode 600"
    return said


def _shown(path: Path) -> str:
    """``path`` as printed: relative to the checkout when inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a .env file (comments and blank lines skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def s3_identities(secrets: dict[str, str]) -> list[dict[str, Any]]:
    """SeaweedFS identities: one key pair per party, each allowed what it needs and no more.
    The admin (buckets, demo data, backups) may do anything; MLflow only its own bucket; the
    Airflow workers read the source data and read and write run outputs, never the models
    (MLflow's bucket: they log and load models through the MLflow server). Anonymous requests
    match no identity and are refused."""
    def creds(party: str) -> list[dict[str, str]]:
        return [{"accessKey": secrets[f"MLOPS_S3_{party}_ACCESS_KEY"],
                 "secretKey": secrets[f"MLOPS_S3_{party}_SECRET_KEY"]}]

    return [
        {"name": "admin", "credentials": creds("ADMIN"),
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "mlflow", "credentials": creds("MLFLOW"),
         "actions": [f"{a}:{MLFLOW_BUCKET}" for a in ("Read", "Write", "List")]},
        {"name": "airflow-worker", "credentials": creds("WORKER"),
         "actions": [*(f"{a}:{ARTIFACTS_BUCKET}" for a in ("Read", "Write", "List", "Tagging")),
                     f"Read:{DATA_BUCKET}", f"List:{DATA_BUCKET}"]},
    ]


# Ports handed out by free_port in this process: two calls before either port is bound must
# not return overlapping ranges.
_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(span: int = 1) -> int:
    """A port P such that P..P+span-1 (and, for span > 1, their +10000 gRPC twins) look free.

    Picked below the kernel's ephemeral range: any outgoing connection may take a port from
    that range between this check and the server's bind (a SeaweedFS start failed in CI with
    "Port allocation failed" that way)."""
    twin = 10000 if span > 1 else 0
    top = min(_ephemeral_low(), 32768) - span - twin
    for _ in range(500):
        if top > 10000:
            port = random.randrange(10000, top)
        else:  # an unusual ephemeral range: let the kernel choose
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port + span + twin >= 65535:
                continue
        wanted = set(range(port, port + span)) | {p + twin for p in range(port, port + span)}
        if wanted & _HANDED_OUT:
            continue
        if all(_is_free(p) and (not twin or _is_free(p + twin)) for p in range(port, port + span)):
            _HANDED_OUT.update(wanted)
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
        stop_group(self.proc.pid, timeout=timeout)


# -- processes (psutil) ------------------------------------------------------------------------------
# Every service is started in a session of its own (start_new_session), so its pid is also its
# process group's id. Stopping one stops its whole tree: the group, and the descendants that
# left it (Airflow puts task processes in process groups of their own). psutil is imported in
# the functions: ./deploy.sh compose runs this module's `secrets` and `images` commands with the
# host's bare Python (standard library only) before any venv exists.

def _running(proc: psutil.Process) -> bool:
    """Alive: neither gone nor a zombie (exited, not yet reaped by its parent), and not another
    process that got the same pid since."""
    import psutil

    try:
        return proc.is_running() and proc.status() not in (psutil.STATUS_ZOMBIE,
                                                           psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def _members(pid: int, known: set[psutil.Process]) -> set[psutil.Process]:
    """The running processes of the service led by ``pid``: ``known`` ones still running, the
    leader and its descendants, and the rest of its process group (a process whose parent
    exited is no longer a descendant, but still in the group)."""
    import psutil

    found = set(known)
    try:
        leader = psutil.Process(pid)
        found |= {leader, *leader.children(recursive=True)}
    except psutil.Error:
        pass
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pid:
                found.add(proc)
        except OSError:
            pass
    return {proc for proc in found if _running(proc)}


def stop_group(pid: int, *, first: signal.Signals = signal.SIGTERM, timeout: float = 30) -> str:
    """Stop the service led by ``pid`` (:func:`_members`): ``first`` to every process of it,
    SIGKILL to whatever is left after ``timeout``, for up to 10 s more. A process it forks
    meanwhile gets the same signal. Returns ``stopped``, ``killed`` or ``still running``."""
    import psutil

    known: set[psutil.Process] = set()
    for sig, wait in ((first, timeout), (signal.SIGKILL, 10)):
        signalled: set[psutil.Process] = set()
        deadline = time.monotonic() + wait
        while True:
            known = _members(pid, known)
            if not known:
                return "stopped" if sig != signal.SIGKILL else "killed"
            for proc in known - signalled:
                try:
                    proc.send_signal(sig)
                except psutil.Error:
                    pass  # gone meanwhile
            signalled |= known
            if time.monotonic() >= deadline:
                break
            time.sleep(0.3)
    return "still running"


def start_seaweedfs(data_dir: Path, *, port: int, identities: list[dict[str, Any]],
                    log_path: Path, buckets: list[str] = ()) -> Service:
    """``weed mini`` with S3 on ``port`` and its other parts on port+1..port+6. ``identities``
    (:func:`s3_identities`; the first must be an admin) are the only keys it accepts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir.parent / f"{data_dir.name}-s3.json"
    write_private(config, json.dumps({"identities": identities}))
    admin = identities[0]["credentials"][0]
    access_key, secret_key = admin["accessKey"], admin["secretKey"]
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
        stop_group(proc.pid, timeout=5)
        raise
    return Service("seaweedfs", proc, url, log_path)


def _s3_ready(url: str, access_key: str, secret_key: str) -> bool:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from include.mlops_core.storage import make_s3_client

    make_s3_client(endpoint_url=url, access_key=access_key, secret_key=secret_key).list_buckets()
    return True


def start_mlflow(home: Path, *, port: int, artifacts_destination: str, s3_url: str,
                 access_key: str, secret_key: str, log_path: Path,
                 auth: dict[str, str] | None = None, backend_uri: str | None = None,
                 auth_db_uri: str | None = None) -> Service:
    """MLflow server: SQLite backend in ``home`` (or ``backend_uri``, e.g. PostgreSQL), artifacts
    proxied to S3 with MLflow's own key.

    ``auth`` (``admin_password``, ``flask_secret_key``): MLflow's basic-auth app, every request
    but ``/health`` needs a login, and users without a grant may only read. The admin account
    is created from ``admin_password`` on the first start (MLflow has no default password). Its
    users live in ``auth_db_uri`` (default: SQLite in ``home``)."""
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_url, "AWS_ACCESS_KEY_ID": access_key,
           "AWS_SECRET_ACCESS_KEY": secret_key, "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # 1.2 GB → 390 MB RSS
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend_uri or f"sqlite:///{home / 'mlflow.db'}",
           "--artifacts-destination", artifacts_destination, "--workers", "1"]
    if auth:
        ini = home / "basic_auth.ini"
        default_auth_db = f"sqlite:///{home / 'basic_auth.db'}"
        write_private(ini, "[mlflow]\ndefault_permission = READ\n"
                           f"database_uri = {auth_db_uri or default_auth_db}\n"
                           "admin_username = admin\n"
                           f"admin_password = {auth['admin_password']}\n"
                           "authorization_function = mlflow.server.auth:"
                           "authenticate_request_basic_auth\n"
                           "grant_default_workspace_access = false\n"
                           # a login is checked once a minute, not on every request (PBKDF2)
                           "auth_cache_ttl_seconds = 60\n")
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini),
                   MLFLOW_FLASK_SERVER_SECRET_KEY=auth["flask_secret_key"])
        cmd += ["--app-name", "basic-auth"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
                            env=env, cwd=home, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/health"), 180, "MLflow server", proc, log_path)
    except Exception:
        stop_group(proc.pid, timeout=5)
        raise
    return Service("mlflow", proc, url, log_path)


class MlflowLogin:
    """MLflow's client reads the login from the environment: set it for a block, then restore."""

    def __init__(self, username: str, password: str) -> None:
        self.values = {"MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}

    def __enter__(self) -> None:
        self.saved = {key: os.environ.get(key) for key in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ensure_mlflow_users(url: str, *, admin_password: str, users: dict[str, str],
                        manage: tuple[str, ...] = (MLFLOW_WORKER,)) -> None:
    """Create the MLflow accounts (or reset their password to ``users``'), through MLflow's own
    auth client as the admin. The ``manage`` accounts get MANAGE on every experiment and
    registered model that exists already (a stack that ran without auth before); what they
    create later is theirs. Everyone else keeps the default: read-only."""
    import warnings

    from mlflow.exceptions import MlflowException

    sys.path.insert(0, str(REPO))
    with MlflowLogin("admin", admin_password), warnings.catch_warnings():
        # MLflow's server package imports starlette's deprecated WSGI middleware (MLflow's own
        # concern, nothing a user can act on): only that warning, only in this block.
        warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")
        from mlflow.server import get_app_client

        auth = get_app_client("basic-auth", tracking_uri=url)
        for username, password in users.items():
            try:
                auth.get_user(username)
                auth.update_user_password(username, password)
            except MlflowException as err:
                if "RESOURCE_DOES_NOT_EXIST" not in str(err.error_code):
                    raise
                auth.create_user(username, password)
        if manage:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=url, registry_uri=url)
            resources = [("experiment", e.experiment_id) for e in client.search_experiments()]
            resources += [("registered_model", m.name) for m in client.search_registered_models()]
            for username in manage:
                for kind, resource_id in resources:
                    if auth.get_user_permission(username, kind, resource_id).permission != "MANAGE":
                        try:
                            auth.revoke_user_permission(username, kind, resource_id)
                        except MlflowException:
                            pass  # no direct grant yet (the default applied)
                        auth.grant_user_permission(username, kind, resource_id, "MANAGE")


def start_throwaway_services(workdir: Path, secrets: dict[str, str]) -> tuple[Service, Service]:
    """SeaweedFS and MLflow on free ports, secured as the local stack is (a key per party,
    MLflow basic-auth with its accounts): for the integration tests and the benchmarks."""
    s3 = start_seaweedfs(workdir / "seaweedfs", port=free_port(7),
                         identities=s3_identities(secrets), log_path=workdir / "seaweedfs.log",
                         buckets=[ARTIFACTS_BUCKET, DATA_BUCKET, MLFLOW_BUCKET])
    try:
        mlflow = start_mlflow(
            workdir / "mlflow", port=free_port(),
            artifacts_destination=f"s3://{MLFLOW_BUCKET}/artifacts", s3_url=s3.url,
            access_key=secrets["MLOPS_S3_MLFLOW_ACCESS_KEY"],
            secret_key=secrets["MLOPS_S3_MLFLOW_SECRET_KEY"], log_path=workdir / "mlflow.log",
            auth={"admin_password": secrets["MLOPS_MLFLOW_ADMIN_PASSWORD"],
                  "flask_secret_key": secrets["MLOPS_MLFLOW_FLASK_SECRET_KEY"]})
        try:
            ensure_mlflow_users(mlflow.url, admin_password=secrets["MLOPS_MLFLOW_ADMIN_PASSWORD"],
                                users={MLFLOW_WORKER: secrets["MLOPS_MLFLOW_WORKER_PASSWORD"],
                                       MLFLOW_VIEWER: secrets["MLOPS_MLFLOW_VIEWER_PASSWORD"]})
        except Exception:
            mlflow.stop()
            raise
    except Exception:
        s3.stop()
        raise
    return s3, mlflow


def connection_env(secrets: dict[str, str], *, mlflow_url: str, s3_url: str,
                   optuna_db: Path | None = None, **s3_extra: Any) -> dict[str, str]:
    """The workers' Connections (:func:`airflow_connections`) as ``AIRFLOW_CONN_*`` variables."""
    out = {}
    for conn_id, conn in airflow_connections(secrets, mlflow_url=mlflow_url, s3_url=s3_url,
                                             optuna_db=optuna_db).items():
        conn = {k: v for k, v in conn.items() if k != "description"}
        extra = conn.pop("extra_dejson", None)
        if extra is not None:
            conn["extra"] = {**extra, **s3_extra}
        out[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    return out


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
    import psutil

    try:
        proc = psutil.Process(pid)
        return _running(proc) and (marker is None or marker in " ".join(proc.cmdline()))
    except psutil.Error:
        return False


def read_pid(stack: LocalStack, name: str) -> int | None:
    """The pid from the pid file if that process is still ours and alive; else None."""
    try:
        pid = int(stack.pid_file(name).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid, MARKERS[name]) else None


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


def env_file() -> Path:
    """The stack's secrets file (``$MLOPS_ENV_FILE``, default ``.env`` of the checkout)."""
    return Path(os.environ.get("MLOPS_ENV_FILE") or REPO / ".env")


def _secrets() -> dict[str, str]:
    """The secrets this command needs, read from the .env file itself: they are never put into
    the environment of the long-lived processes that do not need them."""
    path = env_file()
    if not path.exists():
        raise SystemExit(f"no {path}: run ./deploy.sh local (it generates the secrets)")
    found = read_env_file(path)
    missing = [key for key in SECRETS if key not in found]
    if missing:
        raise SystemExit(f"{path} lacks {', '.join(missing)}: run ./deploy.sh local (it adds "
                         "missing secrets and keeps the others)")
    return found


def _admin_s3(secrets: dict[str, str]) -> tuple[str, str]:
    return secrets["MLOPS_S3_ADMIN_ACCESS_KEY"], secrets["MLOPS_S3_ADMIN_SECRET_KEY"]


def _say(name: str, what: str, pid: int | None, url: str) -> None:
    print(f"  {name:<14} {what:<8} pid {pid or '-':<8} {url}", flush=True)


def _settings_changed(stack: LocalStack, name: str, settings: str) -> bool:
    """Whether a running service was started with other settings (keys, auth) than ``settings``
    (kept as a hash next to its pid file, never the settings themselves)."""
    import hashlib

    digest = hashlib.sha256(settings.encode()).hexdigest()
    path = stack.state / "run" / f"{name}.settings"
    changed = not path.exists() or path.read_text().strip() != digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(digest + "\n")
    return changed


def _restart_if_changed(stack: LocalStack, name: str, settings: str) -> int | None:
    """The pid of the running service, or None when it is not running or was stopped because
    its settings changed (it is then started anew with the new ones)."""
    pid = read_pid(stack, name)
    if _settings_changed(stack, name, settings) and pid is not None:
        print(f"  {name:<14} restarting: its keys or auth settings changed", flush=True)
        _stop_service(stack, name, pid)
        return None
    return pid


def up_s3(stack: LocalStack) -> None:
    secrets = _secrets()
    access_key, secret_key = _admin_s3(secrets)
    identities = s3_identities(secrets)
    url = stack.url("seaweedfs")
    pid = _restart_if_changed(stack, "seaweedfs", json.dumps(identities))
    buckets = [ARTIFACTS_BUCKET, DATA_BUCKET, MLFLOW_BUCKET]
    if pid is not None:
        wait_until(lambda: _s3_ready(url, access_key, secret_key), 60, "SeaweedFS S3 API")
        what = "reused"
    else:
        _check_ports_free(stack, "seaweedfs")
        service = start_seaweedfs(stack.state / "seaweedfs", port=stack.s3_port,
                                  identities=identities, log_path=stack.log_file("seaweedfs"),
                                  buckets=buckets)
        pid = service.proc.pid
        _write_pid(stack, "seaweedfs", pid)
        what = "started"
    _ensure_buckets(url, access_key, secret_key, buckets)
    _say("seaweedfs", what, pid, f"{url}  (S3; buckets {', '.join(buckets)}; keys per party, "
                                 "no anonymous access)")


def _ensure_buckets(url: str, access_key: str, secret_key: str, buckets: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    from include.mlops_core.storage import make_s3_client

    client = make_s3_client(endpoint_url=url, access_key=access_key, secret_key=secret_key)
    have = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in have:
            client.create_bucket(Bucket=bucket)
    _move_mlflow_artifacts(client)


def _move_mlflow_artifacts(client: Any) -> None:
    """Stacks from before MLflow had its own bucket kept its artifacts under
    ``s3://mlops/mlflow-artifacts/``: copy them once to ``s3://mlflow/artifacts/`` (where the
    server now looks) so models trained before still load. The originals stay."""
    if client.list_objects_v2(Bucket=MLFLOW_BUCKET, MaxKeys=1).get("KeyCount"):
        return
    copied = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=ARTIFACTS_BUCKET,
                                                                 Prefix="mlflow-artifacts/"):
        for item in page.get("Contents", []):
            key = "artifacts/" + item["Key"].removeprefix("mlflow-artifacts/")
            client.copy_object(Bucket=MLFLOW_BUCKET, Key=key,
                               CopySource={"Bucket": ARTIFACTS_BUCKET, "Key": item["Key"]})
            copied += 1
    if copied:
        print(f"  seaweedfs      copied {copied} MLflow artifact(s) from "
              f"s3://{ARTIFACTS_BUCKET}/mlflow-artifacts/ to s3://{MLFLOW_BUCKET}/artifacts/",
              flush=True)


def up_mlflow(stack: LocalStack) -> None:
    secrets = _secrets()
    url = stack.url("mlflow")
    auth = {"admin_password": secrets["MLOPS_MLFLOW_ADMIN_PASSWORD"],
            "flask_secret_key": secrets["MLOPS_MLFLOW_FLASK_SECRET_KEY"]}
    s3_key = (secrets["MLOPS_S3_MLFLOW_ACCESS_KEY"], secrets["MLOPS_S3_MLFLOW_SECRET_KEY"])
    pid = _restart_if_changed(stack, "mlflow", json.dumps([auth, s3_key, MLFLOW_BUCKET]))
    if pid is not None:
        wait_until(lambda: http_ok(f"{url}/health"), 120, "MLflow server")
        what = "reused"
    else:
        _check_ports_free(stack, "mlflow")
        service = start_mlflow(stack.state / "mlflow", port=stack.mlflow_port,
                               artifacts_destination=f"s3://{MLFLOW_BUCKET}/artifacts",
                               s3_url=stack.url("seaweedfs"), access_key=s3_key[0],
                               secret_key=s3_key[1], log_path=stack.log_file("mlflow"),
                               auth=auth)
        pid = service.proc.pid
        _write_pid(stack, "mlflow", pid)
        what = "started"
    ensure_mlflow_users(url, admin_password=auth["admin_password"],
                        users={MLFLOW_WORKER: secrets["MLOPS_MLFLOW_WORKER_PASSWORD"],
                               MLFLOW_VIEWER: secrets["MLOPS_MLFLOW_VIEWER_PASSWORD"]})
    _say("mlflow", what, pid, f"{url}  (basic auth: admin, {MLFLOW_WORKER}, {MLFLOW_VIEWER} "
                              "read-only)")


def simple_auth_users() -> str:
    """``[core] simple_auth_manager_users``: admin, operator (role USER: may trigger and clear),
    viewer (read-only). Nobody gets OP: only the admin changes Connections, Variables, pools."""
    return ",".join(f"{user}:{role}" for user, (role, _) in AIRFLOW_USERS.items())


SCHEDULER_IDLE_SLEEP = "0.2"
WORKER_LOG_SERVER_PORT = "8793"  # Airflow's default


def task_slots(environ: dict[str, str] | None = None) -> str:
    """``[core] parallelism``: 4 task workers, unless the environment sets it."""
    environ = os.environ if environ is None else environ
    return environ.get("AIRFLOW__CORE__PARALLELISM") or "4"


# [workers] min_heartbeat_interval (Airflow's default 5 s). Airflow 3.3's task supervisor waits
# in select() up to this long per loop; when the task process closes its sockets before it has
# exited, the supervisor sleeps the whole interval before it notices the exit, and the worker
# slot stays taken. It happened to 18-25 % of the tasks here: 5 s each, which a worker
# with one free slot adds to the next task's start (bench/celery_bench.py, docs/scaling.md).
# 1 s bounds that wait; the cost is one heartbeat per second per running task.
MIN_HEARTBEAT_INTERVAL = "1"


# What every Airflow process of every stack has in its environment, for the tasks it runs
# (./deploy.sh exports these through `stack.py airflow-settings`; docker-compose.yaml's
# x-airflow-worker-env repeats them and tests/unit/test_compose_config.py checks it does):
# - no Great Expectations usage statistics and no MLflow progress bars in task logs;
# - models load only through include/mlops_core/model_loading.py (a fixed type allow-list): MLflow's
#   own loaders, which trust what the artifact says, are switched off in every task;
# - MLflow's records go to Airflow's task log at their own level. Otherwise MLflow gives its
#   loggers a handler of their own on stderr, and Airflow logs every stderr line of a task at
#   level error: "Waiting up to 300 seconds for model version to finish creation" (INFO) was an
#   error line in each successful `register`.
TASK_ENV = {
    "GX_ANALYTICS_ENABLED": "False",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    "MLFLOW_CONFIGURE_LOGGING": "false",
    # MLflow 3's usage telemetry: nothing to send it to offline, and its client sets and unsets
    # an environment variable from a thread, which failed a task reading os.environ meanwhile
    # (KeyError '_MLFLOW_TELEMETRY_SESSION_ID').
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def local_settings(environ: dict[str, str] | None = None) -> dict[str, str]:
    """What the one-machine stack sets beyond :func:`scheduler_settings`: the number of task
    workers, one log server for the whole machine, and the task supervisor's loop interval
    (:data:`MIN_HEARTBEAT_INTERVAL`). The scheduler's log server also serves the triggerer's
    logs (same folder), so the triggerer starts none of its own (``--skip-serve-logs``; about
    80 MB less)."""
    environ = os.environ if environ is None else environ
    port = environ.get("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT") or WORKER_LOG_SERVER_PORT
    return {"AIRFLOW__CORE__PARALLELISM": task_slots(environ),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": port,
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": port,
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL":
                environ.get("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL") or MIN_HEARTBEAT_INTERVAL}


def scheduler_settings() -> dict[str, str]:
    """The scheduler's task workers start from a forkserver that imported the libraries the DAGs
    and their stages import, once (plugins/mlops_airflow/worker_preload.py), and it is started with the
    scheduler (mlops_airflow.executor.PreloadedLocalExecutor), so no task, the first of a run included,
    imports pandas, scikit-learn, MLflow or Great Expectations again. Scheduler only: the
    dag-processor and triggerer keep the platform default."""
    sys.path[:0] = [p for p in (str(REPO), str(REPO / "plugins")) if p not in sys.path]
    from mlops_airflow.worker_preload import preload_setting

    return {"AIRFLOW__CORE__EXECUTOR": "mlops_airflow.executor.PreloadedLocalExecutor",
            "AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver",
            "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": preload_setting(),
            # A loop with nothing to do sleeps this long (default 1 s): the wait between a
            # task's end and the next one's start. Its idle cost: docs/benchmarks.md.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": SCHEDULER_IDLE_SLEEP}


def airflow_process_env(home: Path, port: int, secrets: dict[str, str], *,
                        passwords_file: Path, base: dict[str, str] | None = None,
                        preload: bool = True) -> dict[str, str]:
    """The complete environment of throw-away Airflow processes (tests, benchmarks) as
    ``./deploy.sh`` sets it: SQLite in ``home``, LocalExecutor, the local stack's users, the
    api-server on 127.0.0.1:``port``. Nothing AIRFLOW* and no credential is taken from ``base``
    (default: this process's environment): the workers' are in Connections, encrypted with the
    Fernet key, and the processes hold only Airflow's own keys. ``preload=False``: tasks start
    from a plain LocalExecutor worker (the comparison in bench/scheduler_bench.py)."""
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in (os.environ if base is None else base).items()
           if not key.startswith(("AIRFLOW", "PYTEST_", "MLFLOW_TRACKING_USERNAME",
                                  "MLFLOW_TRACKING_PASSWORD", "AWS_"))}
    env.update({key: secrets[key] for key in AIRFLOW_PROCESS_SECRETS})
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'plugins'}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple."
                                      "simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": simple_auth_users(),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "MLOPS_ARTIFACTS_URI": f"s3://{ARTIFACTS_BUCKET}",
        **TASK_ENV,
    })
    env.update(local_settings(env))
    if preload:
        env.update(scheduler_settings())
    return env


def airflow_connections(secrets: dict[str, str], *, mlflow_url: str, s3_url: str,
                        optuna_db: Path | None = None,
                        optuna_postgres: str | None = None) -> dict[str, dict[str, Any]]:
    """The workers' Connections: MLflow as its service account, S3 with the workers' key, and
    where the tune step's Optuna studies live: the SQLite file ``optuna_db`` on one machine, or
    the ``optuna`` database on the PostgreSQL host ``optuna_postgres`` (its own role)."""
    optuna: dict[str, dict[str, Any]] = {}
    if optuna_db is not None:
        optuna["mlops_optuna"] = {
            "conn_type": "sqlite", "host": str(optuna_db),
            "description": "Optuna studies of the tune step (a SQLite file on this machine)"}
    elif optuna_postgres is not None:
        optuna["mlops_optuna"] = {
            "conn_type": "postgres", "host": optuna_postgres, "port": 5432, "schema": "optuna",
            "login": "optuna", "password": secrets["MLOPS_DB_OPTUNA_PASSWORD"],
            "description": "Optuna studies of the tune step (PostgreSQL, role optuna)"}
    return {**optuna,
        "mlflow_default": {"conn_type": "http", "host": mlflow_url, "login": MLFLOW_WORKER,
                           "password": secrets["MLOPS_MLFLOW_WORKER_PASSWORD"],
                           "description": "MLflow tracking server (service account of the "
                                          "Airflow workers)"},
        "mlops_s3": {"conn_type": "aws", "login": secrets["MLOPS_S3_WORKER_ACCESS_KEY"],
                     "password": secrets["MLOPS_S3_WORKER_SECRET_KEY"],
                     "extra_dejson": {"endpoint_url": s3_url, "region_name": "us-east-1"},
                     "description": "S3 (SeaweedFS) with the Airflow workers' key"},
    }


def configure_airflow(secrets: dict[str, str], *, mlflow_url: str, s3_url: str,
                      passwords_file: Path, scratch: Path, env: dict[str, str] | None = None,
                      optuna_db: Path | None = None) -> None:
    """The users' passwords file, the Connections and the promotion pool; idempotent. The
    secrets go through files of mode 600 (the connections file in ``scratch`` is deleted at
    once), never a command line or an environment variable. ``env``: of the airflow CLI."""
    write_private(passwords_file, json.dumps({user: secrets[key] for user, (_, key)
                                              in AIRFLOW_USERS.items()}) + "\n")
    conns = scratch / "connections.json"
    write_private(conns, json.dumps(airflow_connections(secrets, mlflow_url=mlflow_url,
                                                        s3_url=s3_url, optuna_db=optuna_db)))
    try:
        for args in (["connections", "import", "--overwrite", str(conns)],
                     ["pools", "set", "mlops_promotion", "1", "serializes model promotion"]):
            result = subprocess.run([str(BIN / "airflow"), *args], capture_output=True,
                                    text=True, env=env)
            if result.returncode != 0:
                raise RuntimeError(f"airflow {args[0]} {args[1]} failed:\n"
                                   f"{(result.stdout + result.stderr)[-2000:]}")
    finally:
        conns.unlink(missing_ok=True)


def start_airflow_part(part: str, *, port: int, log_path: Path, cwd: Path,
                       env: dict[str, str] | None = None) -> subprocess.Popen:
    """One Airflow component (``api-server`` on 127.0.0.1:``port``, or ``scheduler``,
    ``dag-processor``, ``triggerer``) detached in its own session, output appended to ``log_path``.

    Configuration comes from ``env`` (default: this process's environment).
    """
    cmd = [str(BIN / "airflow"), part]
    if part == "api-server":
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    elif part == "triggerer":
        cmd += ["--skip-serve-logs"]  # the scheduler's log server serves its logs (local_settings)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=env, start_new_session=True)


def wait_for_api_server(url: str, timeout: float, proc: subprocess.Popen | None = None,
                        log_path: Path | None = None) -> None:
    """Wait for the api-server's health, then ask its execution API (what task processes talk
    to) once: that first request builds the app (about 5 s on 2 cores), which the first task
    of the first run would otherwise wait for."""
    wait_until(lambda: http_ok(f"{url}/api/v2/monitor/health"), timeout, "Airflow api-server",
               proc, log_path)
    wait_until(lambda: http_ok(f"{url}/execution/health"), 120, "Airflow execution API", proc,
               log_path)


def start_airflow(parts: tuple[str, ...], *, port: int, home: Path, env: dict[str, str],
                  logs: dict[str, Path], timeout: float = 180) -> dict[str, subprocess.Popen]:
    """Throw-away Airflow processes (tests, benchmarks): ``parts`` started with ``env``, then
    wait for the api-server as ``./deploy.sh`` does (:func:`wait_for_api_server`), and check
    that none exited. On failure the started processes are stopped and the error raised."""
    procs: dict[str, subprocess.Popen] = {}
    try:
        for part in parts:
            procs[part] = start_airflow_part(part, port=port, log_path=logs[part], cwd=home,
                                             env=env)
        wait_for_api_server(f"http://127.0.0.1:{port}", timeout, procs.get("api-server"),
                            logs.get("api-server"))
        dead = {part: proc.returncode for part, proc in procs.items() if proc.poll() is not None}
        if dead:
            raise RuntimeError(f"exited while starting: {dead}")
    except BaseException:
        for proc in procs.values():
            stop_group(proc.pid, timeout=15)
        raise
    return procs


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
            wait_for_api_server(stack.url("api-server"), timeout, started.get("api-server"),
                                stack.log_file("api-server"))
        for part, proc in started.items():  # the others have no port: they must still be up
            if proc.poll() is not None:
                raise RuntimeError(f"{part} exited with {proc.returncode}; see "
                                   f"{stack.log_file(part)}")
    except Exception:
        for part, proc in started.items():
            _stop_service(stack, part, proc.pid)
        raise


def _stop_service(stack: LocalStack, name: str, pid: int) -> str:
    """Stop a service of the stack (:func:`stop_group`) and remove its pid file, unless it still
    runs. Airflow parts shut down cleanly on SIGTERM (the scheduler ends its task processes);
    weed is slow on SIGTERM, so it gets less time before SIGKILL."""
    result = stop_group(pid, timeout=10 if name == "seaweedfs" else 30)
    if result != "still running":
        stack.pid_file(name).unlink(missing_ok=True)
    return result


def down(stack: LocalStack, names: list[str]) -> None:
    for name in STOP_ORDER:
        if names and name not in names:
            continue
        pid = read_pid(stack, name)
        if pid is None:
            stack.pid_file(name).unlink(missing_ok=True)
            print(f"  {name:<14} not running", flush=True)
            continue
        began = time.monotonic()
        result = _stop_service(stack, name, pid)
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
            access_key, secret_key = _admin_s3(_secrets())
            _s3_ready(stack.url(name), access_key, secret_key)
            return "healthy (S3 API accepts the .env admin key)"
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
    secrets_cmd = sub.add_parser("secrets", help="create .env ($MLOPS_ENV_FILE) or add missing "
                                 "secrets")
    secrets_cmd.add_argument("--compose", type=Path, metavar="FILE",
                             help="the production stack's .env.compose instead (its database "
                                  "and broker passwords too)")
    sub.add_parser("airflow-settings", help="print KEY=VALUE lines: the users, the task workers "
                   "(how many; forkserver, preloaded modules), the log server port")
    sub.add_parser("configure-airflow", help="users' passwords, Connections, promotion pool")
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
        if args.command == "secrets" and args.compose:
            said = ensure_env_file(args.compose, COMPOSE_SECRETS,
                                   "the production stack (./deploy.sh compose up)")
            if said:
                print(said, flush=True)
        elif args.command == "secrets":
            said = ensure_env_file(env_file())
            if said:
                print(said, flush=True)
        elif args.command == "airflow-settings":
            settings = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": simple_auth_users(),
                        **local_settings(), **scheduler_settings(), **TASK_ENV}
            print("\n".join(f"{key}={value}" for key, value in settings.items()))
        elif args.command == "configure-airflow":
            configure_airflow(
                _secrets(), mlflow_url=stack.url("mlflow"), s3_url=stack.url("seaweedfs"),
                passwords_file=Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]),
                scratch=stack.state / "run", optuna_db=stack.state / "optuna.db")
            print("  Airflow users admin, operator, viewer; connections mlflow_default "
                  f"({MLFLOW_WORKER}), mlops_s3 (workers' key), mlops_optuna (studies); pool "
                  "mlops_promotion (1 slot)", flush=True)
        elif args.command == "up-s3":
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
