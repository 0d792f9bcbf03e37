"""Entry point of the airflow image in the production stack (docker-compose.yaml).

    compose_entry.py s3                 SeaweedFS: S3 on :8333, one key per party, no anonymous access
    compose_entry.py mlflow             MLflow tracking server with basic-auth on PostgreSQL, artifacts in S3
    compose_entry.py init               one-shot: Airflow DB, users, Connections, pool; MLflow users; buckets
    compose_entry.py demo-data ARGS     the demo's churn partitions into s3://mlops-data (the admin's key)
    compose_entry.py s3-export          every object of the buckets as a tar on stdout (backup)
    compose_entry.py s3-import          the buckets replaced by a tar from stdin (restore)
    compose_entry.py health SERVICE     the container's health check (exit 0 = healthy)
    compose_entry.py COMMAND...         anything else runs as given (``airflow scheduler``, ...)

Secrets come from the container's environment, which docker-compose.yaml fills from the generated
``.env.compose`` (each service gets only the ones it needs). They are written only to files of
mode 600 inside the container, never onto a command line or into a log.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from stack import (  # noqa: E402
    AIRFLOW_USERS,
    ARTIFACTS_BUCKET,
    DATA_BUCKET,
    MLFLOW_BUCKET,
    MLFLOW_VIEWER,
    MLFLOW_WORKER,
    _ensure_buckets,
    airflow_connections,
    ensure_mlflow_users,
    s3_identities,
    wait_until,
    write_private,
)

S3_PORT, MLFLOW_PORT, AIRFLOW_PORT = 8333, 5000, 8080
S3_URL = os.environ.get("MLOPS_S3_URL", f"http://s3:{S3_PORT}")
MLFLOW_URL = os.environ.get("MLOPS_MLFLOW_URL", f"http://mlflow:{MLFLOW_PORT}")
AIRFLOW_URL = os.environ.get("MLOPS_AIRFLOW_URL", f"http://airflow-apiserver:{AIRFLOW_PORT}")
# FAB roles of the three people-accounts (the embedded stack's SimpleAuthManager roles, renamed):
# operator may trigger and clear runs; viewer reads; only admin edits Connections, Variables, pools.
FAB_ROLES = {"admin": "Admin", "operator": "User", "viewer": "Viewer"}
PRIVATE = Path("/tmp/mlops-private")


def say(message: str) -> None:
    print(f"mlops: {message}", flush=True)


def secret(key: str) -> str:
    value = os.environ.get(key)
    if not value:
        raise SystemExit(f"mlops: {key} is not set for this service; docker-compose.yaml passes it "
                         "from .env.compose (./deploy.sh compose up generates that file)")
    return value


def secrets_from_env() -> dict[str, str]:
    """The .env.compose keys that this container was given (others are simply absent)."""
    return {key: value for key, value in os.environ.items()
            if key.startswith(("MLOPS_", "AIRFLOW__")) and value}


# -- servers -------------------------------------------------------------------------------------
def run_s3() -> None:
    identities = s3_identities({key: secret(key) for party in ("ADMIN", "MLFLOW", "WORKER")
                                for key in (f"MLOPS_S3_{party}_ACCESS_KEY",
                                            f"MLOPS_S3_{party}_SECRET_KEY")})
    config = PRIVATE / "s3.json"
    write_private(config, json.dumps({"identities": identities}))
    # The master and volume parts listen inside the container only; S3 on every interface of the
    # compose network (nothing publishes it to the host).
    os.execvp("weed", ["weed", "mini", "-dir=/data", "-ip=127.0.0.1", "-ip.bind=0.0.0.0",
                       f"-s3.port={S3_PORT}", "-admin.ui=false", "-webdav=false",
                       f"-s3.config={config}",
                       f"-bucket={','.join([ARTIFACTS_BUCKET, DATA_BUCKET, MLFLOW_BUCKET])}"])


def run_mlflow() -> None:
    db_password = secret("MLOPS_DB_MLFLOW_PASSWORD")
    db = f"postgresql+psycopg://mlflow:{db_password}@postgres:5432"
    ini = PRIVATE / "basic_auth.ini"
    write_private(ini, "[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = {db}/mlflow_auth\n"
                       "admin_username = admin\n"
                       f"admin_password = {secret('MLOPS_MLFLOW_ADMIN_PASSWORD')}\n"
                       "authorization_function = mlflow.server.auth:"
                       "authenticate_request_basic_auth\n"
                       "grant_default_workspace_access = false\n"
                       "auth_cache_ttl_seconds = 60\n")
    public_port = os.environ.get("MLOPS_COMPOSE_MLFLOW_PORT", "5000")
    env = {**os.environ,
           "MLFLOW_AUTH_CONFIG_PATH": str(ini),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secret("MLOPS_MLFLOW_FLASK_SECRET_KEY"),
           # The store's URL holds a password: through the environment, not the command line.
           "MLFLOW_BACKEND_STORE_URI": f"{db}/mlflow",
           "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{MLFLOW_BUCKET}/artifacts",
           "MLFLOW_S3_ENDPOINT_URL": S3_URL,
           "AWS_ACCESS_KEY_ID": secret("MLOPS_S3_MLFLOW_ACCESS_KEY"),
           "AWS_SECRET_ACCESS_KEY": secret("MLOPS_S3_MLFLOW_SECRET_KEY"),
           "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for key in [k for k in env if k.startswith("MLOPS_") and k != "MLOPS_COMPOSE_MLFLOW_PORT"]:
        del env[key]
    allowed = f"mlflow,mlflow:{MLFLOW_PORT},localhost:{public_port},127.0.0.1:{public_port}"
    os.execvpe("mlflow", ["mlflow", "server", "--host", "0.0.0.0", "--port", str(MLFLOW_PORT),
                          "--app-name", "basic-auth", "--allowed-hosts", allowed,
                          "--workers", os.environ.get("MLOPS_MLFLOW_WORKERS", "2")], env)


# -- one-shot set-up ------------------------------------------------------------------------------
def _airflow(*args: str, stdin: str | None = None) -> None:
    import subprocess

    result = subprocess.run(["airflow", *args], input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"mlops: airflow {' '.join(args[:2])} failed:\n"
                         f"{(result.stdout + result.stderr)[-3000:]}")


def ensure_fab_users(secrets: dict[str, str]) -> None:
    """admin, operator and viewer with their .env.compose passwords; an existing account gets its
    role and password set again (so rotating a password in .env.compose takes effect)."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        for username, (_, password_key) in AIRFLOW_USERS.items():
            role = sm.find_role(FAB_ROLES[username])
            user = sm.find_user(username=username)
            if user is None:
                user = sm.add_user(username, username, "account", f"{username}@mlops.invalid",
                                   role, secrets[password_key])
                if not user:
                    raise SystemExit(f"mlops: creating the Airflow user {username} failed")
            else:
                user.roles = [role]
                sm.update_user(user)
                sm.reset_password(user.id, secrets[password_key])
    say("Airflow users admin (Admin), operator (User: may trigger), viewer (Viewer)")


def run_init() -> None:
    secrets = secrets_from_env()
    started = time.monotonic()
    _airflow("db", "migrate")
    say(f"Airflow metadata DB migrated ({time.monotonic() - started:.0f}s)")
    ensure_fab_users(secrets)
    conns = PRIVATE / "connections.json"
    write_private(conns, json.dumps(airflow_connections(secrets, mlflow_url=MLFLOW_URL,
                                                        s3_url=S3_URL, optuna_postgres="postgres")))
    try:
        _airflow("connections", "import", "--overwrite", str(conns))
    finally:
        conns.unlink(missing_ok=True)
    _airflow("pools", "set", "mlops_promotion", "1", "serializes model promotion")
    say(f"Connections mlflow_default ({MLFLOW_WORKER}), mlops_s3 (workers' key), mlops_optuna "
        "(Optuna studies, PostgreSQL role optuna); pool mlops_promotion (1 slot)")
    wait_until(lambda: _http_status(f"{MLFLOW_URL}/health") == 200, 180, "MLflow server")
    ensure_mlflow_users(MLFLOW_URL, admin_password=secrets["MLOPS_MLFLOW_ADMIN_PASSWORD"],
                        users={MLFLOW_WORKER: secrets["MLOPS_MLFLOW_WORKER_PASSWORD"],
                               MLFLOW_VIEWER: secrets["MLOPS_MLFLOW_VIEWER_PASSWORD"]})
    say(f"MLflow users admin, {MLFLOW_WORKER} (service account), {MLFLOW_VIEWER} (read-only)")
    _ensure_buckets(S3_URL, secrets["MLOPS_S3_ADMIN_ACCESS_KEY"],
                    secrets["MLOPS_S3_ADMIN_SECRET_KEY"],
                    [ARTIFACTS_BUCKET, DATA_BUCKET, MLFLOW_BUCKET])
    say(f"S3 buckets {ARTIFACTS_BUCKET}, {DATA_BUCKET}, {MLFLOW_BUCKET}; "
        f"set-up done in {time.monotonic() - started:.0f}s")


def _as_s3_admin() -> None:
    os.environ.update(MLOPS_S3_ENDPOINT_URL=S3_URL, AWS_DEFAULT_REGION="us-east-1",
                      AWS_ACCESS_KEY_ID=secret("MLOPS_S3_ADMIN_ACCESS_KEY"),
                      AWS_SECRET_ACCESS_KEY=secret("MLOPS_S3_ADMIN_SECRET_KEY"))


def run_demo_data(args: list[str]) -> None:
    _as_s3_admin()
    from include.mlops_core.demo_data import main

    sys.exit(main(args))


def run_backup(command: str) -> int:
    """scripts/backup.py s3-export / s3-import with the admin's key, the tar on stdout / stdin."""
    _as_s3_admin()
    import backup

    return backup.main([command])


# -- health checks ----------------------------------------------------------------------------------
def _http_status(url: str, timeout: float = 5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def health(service: str) -> int:
    """Cheap checks (one HTTP request; no Airflow import): every one runs every 30 s."""
    if service == "s3":
        # Any S3 answer (403 for an anonymous request) means the gateway serves.
        return 0 if _http_status(f"http://127.0.0.1:{S3_PORT}/") in (200, 403) else 1
    if service == "mlflow":
        return 0 if _http_status(f"http://127.0.0.1:{MLFLOW_PORT}/health") == 200 else 1
    if service == "scheduler":
        return 0 if _http_status("http://127.0.0.1:8974/health") == 200 else 1
    if service == "worker":
        # The worker's log server answers (404 without a path): the worker process is up. Its
        # broker connection is Celery's to keep (it reconnects; the scheduler re-queues).
        return 0 if _http_status("http://127.0.0.1:8793/") in (403, 404) else 1
    try:
        with urllib.request.urlopen(f"http://{'127.0.0.1' if service == 'api-server' else 'airflow-apiserver'}"
                                    f":{AIRFLOW_PORT}/api/v2/monitor/health",
                                    timeout=5) as response:  # noqa: S310
            monitor = json.loads(response.read())
    except (OSError, ValueError):
        return 1
    key = {"api-server": "metadatabase", "dag-processor": "dag_processor",
           "triggerer": "triggerer"}[service]
    return 0 if (monitor.get(key) or {}).get("status") == "healthy" else 1


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "s3":
        run_s3()
    elif command == "mlflow":
        run_mlflow()
    elif command == "init":
        run_init()
    elif command == "demo-data":
        run_demo_data(rest)
    elif command in ("s3-export", "s3-import"):
        return run_backup(command)
    elif command == "health":
        return health(rest[0])
    else:
        os.execvp(command, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
