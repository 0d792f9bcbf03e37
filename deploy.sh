#!/usr/bin/env bash
# Local stack for the Airflow MLOps package: SeaweedFS (S3), MLflow, Airflow 3 (four processes).
#
#   ./deploy.sh local [--rerun]   venv, .env secrets, services, demo data, one training run + summary
#   ./deploy.sh demo              local, then the monitoring loop: score → drift → retrain
#   ./deploy.sh status            one line per service
#   ./deploy.sh stop              stop every service (data in .local/ is kept)
#   ./deploy.sh test [ARGS...]    venv, then pytest (tests start the services they need)
#   ./deploy.sh airflow ARGS...   the airflow CLI against the local stack (e.g. `dags list`)
#   ./deploy.sh backup [DIR]      databases and S3 buckets of the local stack, while it runs
#   ./deploy.sh restore DIR       replace the local stack's state with a backup (docs/backup.md)
#   ./deploy.sh serve [--model NAME ...] [--port N]
#                                 serve models:/<name>@champion over HTTP (docs/serving.md)
#   ./deploy.sh compose up [--gpu] | down | status | logs | backup [DIR] | restore DIR
#                                 the production stack (docker-compose.yaml: Celery workers,
#                                 PostgreSQL, Redis, MLflow with auth, S3): .env.compose secrets,
#                                 images built offline, health, the demo run on a Celery worker
#
# Environment: MLOPS_S3_PORT (8333), MLOPS_MLFLOW_PORT (5000), MLOPS_AIRFLOW_PORT (8080),
# MLOPS_STATE_DIR (.local), MLOPS_ENV_FILE (.env), MLOPS_DEPLOY_TIMEOUT (seconds to wait for the
# training run, 900), MLOPS_TRAINER (inprocess; docker: start a Docker engine, build the trainer
# image and train in a container).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$REPO"
VENV="$REPO/.venv"
VENV_REQUIREMENTS="requirements.txt"  # ./deploy.sh test: requirements-dev.txt (ensure_venv)
STATE="${MLOPS_STATE_DIR:-$REPO/.local}"
ENV_FILE="${MLOPS_ENV_FILE:-$REPO/.env}"
S3_PORT="${MLOPS_S3_PORT:-8333}"
MLFLOW_PORT="${MLOPS_MLFLOW_PORT:-5000}"
AIRFLOW_PORT="${MLOPS_AIRFLOW_PORT:-8080}"
# The demo: churn data for the three days up to yesterday (UTC). As soon as the DAG is unpaused,
# the daily schedule (CronDataIntervalTimetable, Airflow 3) creates the run for yesterday: logical
# date = data interval start (yesterday 00:00), data interval yesterday → today, run id
# scheduled__<today>T00:00:00+00:00 (named after its run_after, the end of the interval). It
# trains on yesterday's partition. DEMO_LOGICAL_DATE is only for the fallback REST trigger
# (deploy_local__<today>, when the scheduler has not created that run within 60 s): logical_date
# today 00:00, whose manual data interval is also yesterday → today.
TODAY="$(date -u +%Y-%m-%d)"
DEMO_START="$(date -u -d "$TODAY - 3 days" +%Y-%m-%d)"
DEMO_DAYS=3
DEMO_LOGICAL_DATE="${TODAY}T00:00:00Z"
DEMO_RUN_ID="scheduled__${TODAY}T00:00:00+00:00"

# Messages show paths relative to the checkout (.env, .local/logs/...), not this machine's.
say() { local m="$*"; printf '[%4ss] %s\n' "$SECONDS" "${m//$REPO\//}"; }
die() { local m="$*"; printf 'error: %s\n' "${m//$REPO\//}" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo pipefail/{/^set /d;p}' "$0" | sed 's/^# \{0,1\}//'
}

# -- Python and the virtual environment ------------------------------------------------------------
find_python() {
    local candidate version
    for candidate in python3.11 python3.12 python3; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        version="$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
            || continue
        if [[ "$version" == "3.11" || "$version" == "3.12" ]]; then
            echo "$candidate"
            return
        fi
    done
    die "Python 3.11 or 3.12 is required (tried python3.11, python3.12, python3)"
}

# ensure_venv [--compile-later]: with --compile-later the installed packages' bytecode is left to
# compile_venv (./deploy.sh test runs it in the background, beside the unit tests).
ensure_venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        local python
        python="$(find_python)"
        say "Creating $VENV with $python"
        "$python" -m venv "$VENV"
    fi
    local version
    version="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [[ "$version" == "3.11" || "$version" == "3.12" ]] \
        || die "$VENV has Python $version; 3.11 or 3.12 is required (remove $VENV to rebuild it)"
    # The runtime lock, or with the test tools (./deploy.sh test): requirements-dev.txt holds
    # every pin of requirements.txt, so a venv installed from it serves ./deploy.sh local too.
    local lock="$VENV_REQUIREMENTS" want have
    want="$(sha256sum "$lock" | cut -d' ' -f1)"
    have="$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)"
    if [[ "$want" != "$have" && ! ( "$lock" == requirements.txt
                                    && "$have" == "$(sha256sum requirements-dev.txt | cut -d' ' -f1)" ) ]]; then
        say "Installing $lock into $VENV (it changed since the last install)"
        if [[ ! -x "$VENV/bin/uv" ]]; then
            "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$VENV/bin/python" -m ensurepip >/dev/null
            "$VENV/bin/python" -m pip install -q uv
        fi
        VIRTUAL_ENV="$VENV" "$VENV/bin/uv" pip install -q -r "$lock"
        echo "$want" >"$VENV/.requirements.sha256"
        rm -f "$VENV/.bytecode"
    fi
    [[ "${1:-}" == "--compile-later" ]] || compile_venv
    # include.mlops_core and mlops_airflow (plugins/) must import in every Airflow process, tasks included.
    printf '%s\n%s\n' "$REPO" "$REPO/plugins" >"$(venv_site)/airflow_mlops_repo.pth"
    # The project's own modules as bytecode (under a second): every DAG parse and task imports
    # them, and where PYTHONDONTWRITEBYTECODE is set Python would compile them on every import.
    "$VENV/bin/python" -m compileall -q -j 0 "$REPO/include" "$REPO/plugins" "$REPO/dags" >/dev/null
}

venv_site() {
    "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

# The installed packages' bytecode, once per install (about 35 s on 2 cores): uv writes none, and
# where PYTHONDONTWRITEBYTECODE is set every task process would compile pandas, scikit-learn,
# MLflow and Great Expectations again at import (docs/benchmarks.md).
compile_venv() {
    [[ -f "$VENV/.bytecode" ]] && return
    say "Compiling the installed packages to bytecode"
    "$VENV/bin/python" -m compileall -q -j 0 "$(venv_site)" >/dev/null \
        || say "warning: some installed files did not compile to bytecode; they are compiled at import"
    touch "$VENV/.bytecode"
}

# -- Secrets ---------------------------------------------------------------------------------------
# .env holds every secret of the local stack, generated once (mode 600, git-ignored): Airflow's
# admin, operator and viewer passwords and its own keys, MLflow's admin, service and viewer
# passwords, and one S3 key pair each for the admin, MLflow and the Airflow workers. Keys that are
# missing (an older .env) are added; existing values are never changed (scripts/stack.py secrets).
ensure_env_file() {
    MLOPS_ENV_FILE="$ENV_FILE" "$VENV/bin/python" "$REPO/scripts/stack.py" secrets
}

# Secrets are read into shell variables, not exported: each command gets only what it needs.
# The Airflow processes get their own keys (JWT, Fernet, API secret); the workers' credentials
# are in Connections, and nothing else from .env reaches a task's environment.
load_env() {
    # shellcheck disable=SC1090
    . "$ENV_FILE"
    export AIRFLOW__API_AUTH__JWT_SECRET AIRFLOW__CORE__FERNET_KEY AIRFLOW__API__SECRET_KEY
    export MLOPS_ENV_FILE="$ENV_FILE"
}

# The admin's S3 key, for one command (demo data, the demo loop).
with_s3_admin() {
    MLOPS_S3_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ACCESS_KEY_ID="$MLOPS_S3_ADMIN_ACCESS_KEY" \
        AWS_SECRET_ACCESS_KEY="$MLOPS_S3_ADMIN_SECRET_KEY" AWS_DEFAULT_REGION=us-east-1 "$@"
}

# The operator's Airflow login and the read-only MLflow login, for one command (summary, demo).
with_operator() {
    MLOPS_AIRFLOW_OPERATOR_PASSWORD="$MLOPS_AIRFLOW_OPERATOR_PASSWORD" \
        MLOPS_MLFLOW_VIEWER_PASSWORD="$MLOPS_MLFLOW_VIEWER_PASSWORD" "$@"
}

# -- Airflow configuration (environment only; nothing secret on a command line) ------------------
airflow_env() {
    export PATH="$VENV/bin:$PATH"
    export MLOPS_STATE_DIR="$STATE" MLOPS_S3_PORT="$S3_PORT" MLOPS_MLFLOW_PORT="$MLFLOW_PORT" \
        MLOPS_AIRFLOW_PORT="$AIRFLOW_PORT"
    export AIRFLOW_HOME="$STATE/airflow"
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
    export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
    export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO/plugins"
    export AIRFLOW__CORE__LOAD_EXAMPLES=False
    export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
    export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
    export AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES=1
    export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
    # From scripts/stack.py: the users admin, operator (may trigger) and viewer (read-only;
    # passwords from .env, docs/security.md), the executor: a LocalExecutor with 4 task workers
    # (AIRFLOW__CORE__PARALLELISM overrides it), whose workers start from a forkserver that
    # imported the stages' libraries once (docs/benchmarks.md), one log server, and the tasks'
    # environment (stack.py TASK_ENV: MLflow's loaders that trust the artifact off, MLflow's
    # records at their own level in the task log).
    local setting
    while IFS= read -r setting; do
        export "${setting?}"
    done < <("$VENV/bin/python" "$REPO/scripts/stack.py" airflow-settings)
    [[ -n "${AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD:-}" ]] || die "scripts/stack.py airflow-settings failed"
    export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$AIRFLOW_HOME/passwords.json"
    export AIRFLOW__API__HOST=127.0.0.1
    export AIRFLOW__API__PORT="$AIRFLOW_PORT"
    export AIRFLOW__API__WORKERS=1
    export AIRFLOW__API__BASE_URL="http://127.0.0.1:$AIRFLOW_PORT"
    export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$AIRFLOW_PORT/execution/"
    export MLOPS_ARTIFACTS_URI=s3://mlops
    export MLOPS_AIRFLOW_URL="http://127.0.0.1:$AIRFLOW_PORT"
    export MLOPS_MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"
    mkdir -p "$AIRFLOW_HOME" "$STATE/logs" "$STATE/run"
    chmod 700 "$STATE"
}

stack() { "$VENV/bin/python" "$REPO/scripts/stack.py" "$@"; }

# -- Docker engine and the trainer image (trainer=docker; docs/gpu-training.md) -------------------
# A running engine is used as it is. Otherwise Debian's docker.io (and debootstrap, which builds the
# offline base image) is installed when missing, and dockerd is started in the background.
ensure_docker() {
    docker info >/dev/null 2>&1 && return
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "no Docker engine is running and installing one needs root: start dockerd, or run as root"
        sudo=(sudo)
    fi
    mkdir -p "$STATE/logs"
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1 \
        || ! command -v docker-compose >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || die "no Docker engine: install Docker (and debootstrap, docker-compose) with your package manager"
        say "Installing the Docker engine (Debian docker.io), docker-compose and debootstrap"
        { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq docker.io docker-compose debootstrap; } >"$STATE/logs/apt-docker.log" 2>&1 \
            || { tail -n 20 "$STATE/logs/apt-docker.log" >&2; die "installing docker.io failed"; }
    fi
    say "Starting dockerd (log: $STATE/logs/dockerd.log)"
    "${sudo[@]}" nohup dockerd >"$STATE/logs/dockerd.log" 2>&1 &
    local i
    for i in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return
        sleep 0.5
    done
    tail -n 20 "$STATE/logs/dockerd.log" >&2
    die "dockerd did not become ready in 30 s (log: $STATE/logs/dockerd.log)"
}

# Debian's chromium, which the browser test drives through Playwright (tests/integration/
# test_browser.py; Playwright's own browser download is never used). A no-op when installed.
ensure_chromium() {
    command -v chromium >/dev/null 2>&1 && return
    mkdir -p "$STATE/logs"
    command -v apt-get >/dev/null 2>&1 || die "chromium is missing and there is no apt-get to install it: install Chromium with your package manager (the browser test runs \$MLOPS_CHROMIUM, default: chromium on PATH)"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "chromium is missing and installing it needs root: apt-get install chromium"
        sudo=(sudo)
    fi
    say "Installing Chromium for the browser test (Debian chromium; log: $STATE/logs/apt-chromium.log)"
    { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq chromium; } >"$STATE/logs/apt-chromium.log" 2>&1 \
        || { tail -n 20 "$STATE/logs/apt-chromium.log" >&2; die "installing chromium failed (log: $STATE/logs/apt-chromium.log)"; }
}

# Base image offline (debootstrap + docker import), then the trainer; a no-op when current. The
# image's id is what the deployment pins: the workers run no other trainer image.
build_images() {
    mkdir -p "$STATE/logs"
    say "Trainer image (scripts/build_images.py; log: $STATE/logs/build-images.log)"
    local out
    local python="$VENV/bin/python"  # the compose host may have no venv: the script needs none
    [[ -x "$python" ]] || python="$(find_python)"
    out="$("$python" "$REPO/scripts/build_images.py" 2>"$STATE/logs/build-images.log")" \
        || { tail -n 30 "$STATE/logs/build-images.log" >&2; die "building the trainer image failed"; }
    export MLOPS_TRAINER_IMAGE="${MLOPS_TRAINER_IMAGE:-$(tail -n 1 <<<"$out")}"
    say "Trainer image $(tail -n 2 <<<"$out" | head -n 1) is ready; pinned: MLOPS_TRAINER_IMAGE=$MLOPS_TRAINER_IMAGE"
}

cmd_local() {
    local rerun=()
    while (($#)); do
        case "$1" in
            --rerun) rerun=(--rerun) ;;
            *) die "unknown option for local: $1" ;;
        esac
        shift
    done
    ensure_venv
    ensure_env_file
    load_env
    airflow_env
    say "Services (state in $STATE, logs in $STATE/logs)"
    stack up-s3
    say "Demo data: s3://mlops-data/churn, $DEMO_DAYS days from $DEMO_START (deterministic)"
    with_s3_admin "$VENV/bin/python" -m include.mlops_core.demo_data --dest s3://mlops-data/churn \
        --start "$DEMO_START" --days "$DEMO_DAYS" 2>&1 \
        | sed '/Found credentials in environment variables/d; s/^/  /'
    stack up-mlflow
    if [[ "${MLOPS_TRAINER:-inprocess}" == "docker" ]]; then
        ensure_docker
        build_images
    fi
    say "Airflow metadata DB: $AIRFLOW_HOME/airflow.db"
    airflow db migrate >"$STATE/logs/db-migrate.log" 2>&1 \
        || { tail -n 30 "$STATE/logs/db-migrate.log"; die "airflow db migrate failed"; }
    stack configure-airflow
    stack up-airflow
    say "Training run for yesterday's partition: $DEMO_RUN_ID"
    local rc=0
    with_operator "$VENV/bin/python" "$REPO/scripts/summary.py" run --dag-id training \
        --run-id "$DEMO_RUN_ID" --logical-date "$DEMO_LOGICAL_DATE" \
        --timeout "${MLOPS_DEPLOY_TIMEOUT:-900}" "${rerun[@]}" || rc=$?
    echo
    echo "Log in to Airflow as 'operator' (may trigger), 'viewer' (read-only) or 'admin'; the"
    echo "passwords are MLOPS_AIRFLOW_*_PASSWORD in .env (MLflow: 'viewer', MLOPS_MLFLOW_VIEWER_PASSWORD)."
    echo "./deploy.sh status | ./deploy.sh stop (data stays in .local)"
    return $rc
}

cmd_demo() {
    cmd_local || die "./deploy.sh local failed; the demo needs its champion"
    say "Monitoring loop (docs/monitoring.md): scoring, drift, delayed labels, retraining"
    with_s3_admin with_operator "$VENV/bin/python" "$REPO/scripts/demo.py"
}

cmd_stop() {
    [[ -x "$VENV/bin/python" ]] || die "no $VENV yet: nothing to stop"
    airflow_env
    say "Stopping the local stack (data stays in $STATE)"
    stack down "$@"
}

cmd_status() {
    [[ -x "$VENV/bin/python" ]] || die "no $VENV yet: run ./deploy.sh local"
    [[ -f "$ENV_FILE" ]] && load_env
    airflow_env
    stack status
}

cmd_test() {
    VENV_REQUIREMENTS=requirements-dev.txt ensure_venv --compile-later
    mkdir -p "$STATE/logs"
    local args=("$@") pytest=("$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=15)
    # An explicit selection (`./deploy.sh test tests/unit -x`) runs as given; the Docker engine
    # and the trainer image only when it reaches the integration tests.
    if ((${#args[@]})) && [[ "${args[0]}" != -* ]]; then
        compile_venv
        if [[ " ${args[*]} " == *integration* ]]; then
            ensure_docker
            command -v docker-compose >/dev/null 2>&1 || ensure_compose_client
            ensure_chromium
            build_images
        fi
        exec "${pytest[@]}" "${args[@]}"
    fi
    # The whole suite: the unit tests first, while in the background the packages are compiled
    # to bytecode, then the Docker engine is installed and the trainer image built
    # (tests/integration/test_docker_trainer.py runs real containers); a unit failure is reported
    # before any of that is waited for. The integration tests wait for the bytecode only: those
    # that need the image run last (tests/integration/conftest.py) and wait for it there.
    mkdir -p "$STATE/logs"
    local compiled="$STATE/logs/bytecode.done" image_file="$STATE/logs/trainer-image.id"
    local setup_log="$STATE/logs/docker-setup.log" compose_file="$STATE/logs/compose-images.env"
    rm -f "$compiled" "$compiled.failed" "$image_file" "$image_file.failed" "$compose_file" \
        "$compose_file.failed"
    say "Bytecode, then Docker engine and trainer image, in the background (log: $setup_log)"
    (
        if compile_venv >"$STATE/logs/bytecode.log" 2>&1; then touch "$compiled"
        else touch "$compiled.failed"; fi
        # chromium (the browser test) after the engine's apt-get, before the image: the browser
        # test needs the image too, so it is installed by then; a failure is the test's to report.
        ( ( ensure_compose_client && { (ensure_chromium) || true; } && build_images \
              && echo "$MLOPS_TRAINER_IMAGE" >"$image_file.tmp" \
              && mv "$image_file.tmp" "$image_file" ) || true
          [[ -s "$image_file" ]] || touch "$image_file.failed"
          # Then the production stack's images (tests/integration/test_compose_stack.py).
          ( [[ -s "$image_file" ]] && "$VENV/bin/python" "$REPO/scripts/build_images.py" \
                --images "$COMPOSE_IMAGES,docker-proxy" --env >"$compose_file.tmp" \
              && mv "$compose_file.tmp" "$compose_file" ) || true
          [[ -s "$compose_file" ]] || touch "$compose_file.failed" ) >"$setup_log" 2>&1
    ) &
    say "Unit tests"
    "${pytest[@]}" tests/unit "${args[@]}" || die "unit tests failed (above); the integration tests did not run"
    while [[ ! -e "$compiled" && ! -e "$compiled.failed" ]]; do sleep 1; done
    [[ -e "$compiled" ]] || { cat "$STATE/logs/bytecode.log" >&2; die "compiling the packages to bytecode failed (above)"; }
    say "Integration tests"
    MLOPS_TRAINER_IMAGE_FILE="$image_file" MLOPS_TRAINER_SETUP_LOG="$setup_log" \
        MLOPS_COMPOSE_IMAGES_FILE="$compose_file" exec "${pytest[@]}" tests/integration "${args[@]}"
}

cmd_airflow() {
    [[ -f "$ENV_FILE" ]] || die "no $ENV_FILE yet: run ./deploy.sh local"
    load_env
    airflow_env
    exec "$VENV/bin/airflow" "$@"
}

# -- Backup and restore (docs/backup.md) -----------------------------------------------------------
backup_dir() {
    local dir="${1:-$STATE/backups/$(date -u +%Y%m%dT%H%M%SZ)}"
    mkdir -p "$dir"
    chmod 700 "$dir"
    (cd "$dir" && pwd)
}

backup_py() { "$VENV/bin/python" "$REPO/scripts/backup.py" "$@"; }

cmd_backup() {
    [[ -f "$ENV_FILE" && -x "$VENV/bin/python" ]] || die "no local stack here (.env, .venv): run ./deploy.sh local"
    load_env
    airflow_env
    local dir
    dir="$(backup_dir "${1:-}")"
    say "Backing up the local stack into $dir (it keeps running)"
    backup_py sqlite-backup "$AIRFLOW_HOME/airflow.db" "$dir/airflow.db"
    backup_py sqlite-backup "$STATE/mlflow/mlflow.db" "$dir/mlflow.db"
    backup_py sqlite-backup "$STATE/mlflow/basic_auth.db" "$dir/mlflow_auth.db"
    with_s3_admin backup_py s3-export --out "$dir/s3.tar" 2>&1 | sed 's/^/  /'
    install -m 600 "$ENV_FILE" "$dir/env"
    chmod 600 "$dir"/*
    backup_py manifest "$dir" --stack embedded || die "writing the manifest failed"
    say "Backup complete: $dir (it holds .env: keep it as private as .env)"
}

cmd_restore() {
    local dir="${1:-}"
    [[ -n "$dir" && -d "$dir" ]] || die "usage: ./deploy.sh restore DIR (a folder made by ./deploy.sh backup)"
    ensure_venv
    dir="$(cd "$dir" && pwd)"
    backup_py verify "$dir" --stack embedded || die "$dir is not a complete backup (above); nothing was changed"
    if [[ -f "$ENV_FILE" ]] && ! cmp -s "$ENV_FILE" "$dir/env"; then
        cp -p "$ENV_FILE" "$ENV_FILE.before-restore"
        say "The backup's secrets replace .env (the old one: .env.before-restore)"
    fi
    install -m 600 "$dir/env" "$ENV_FILE"
    load_env
    airflow_env
    say "Stopping Airflow and MLflow (S3 keeps running)"
    stack down scheduler triggerer dag-processor api-server mlflow
    stack up-s3
    say "Restoring the databases and the S3 buckets from $dir"
    mkdir -p "$AIRFLOW_HOME" "$STATE/mlflow"
    backup_py sqlite-backup "$dir/airflow.db" "$AIRFLOW_HOME/airflow.db"
    backup_py sqlite-backup "$dir/mlflow.db" "$STATE/mlflow/mlflow.db"
    backup_py sqlite-backup "$dir/mlflow_auth.db" "$STATE/mlflow/basic_auth.db"
    with_s3_admin backup_py s3-import --in "$dir/s3.tar" 2>&1 | sed 's/^/  /'
    stack up-mlflow
    airflow db migrate >"$STATE/logs/db-migrate.log" 2>&1 \
        || { tail -n 30 "$STATE/logs/db-migrate.log"; die "airflow db migrate failed"; }
    stack configure-airflow
    stack up-airflow
    say "Restored from $dir"
}

# -- The production stack (docker-compose.yaml; docs/deployment.md) -------------------------------
COMPOSE_ENV="${MLOPS_COMPOSE_ENV_FILE:-$REPO/.env.compose}"
COMPOSE_PROJECT="${MLOPS_COMPOSE_PROJECT:-mlops}"
COMPOSE_AIRFLOW_PORT="${MLOPS_COMPOSE_AIRFLOW_PORT:-8280}"
COMPOSE_MLFLOW_PORT="${MLOPS_COMPOSE_MLFLOW_PORT:-5500}"
COMPOSE_IMAGES="airflow,postgres,redis"

# PROFILES: the optional services to start (`up --gpu`: the Docker proxy and the gpu worker);
# down, status and logs always see every profile's services.
compose() {
    MLOPS_COMPOSE_PROJECT="$COMPOSE_PROJECT" docker-compose -p "$COMPOSE_PROJECT" \
        --env-file "$COMPOSE_ENV" -f "$REPO/docker-compose.yaml" "${PROFILES[@]}" "$@"
}
PROFILES=(--profile gpu)

# The host needs only Python's standard library, a Docker engine and Debian's docker-compose 1.29
# (compose v2 reads the same file); the images carry everything else.
ensure_compose_client() {
    ensure_docker
    command -v docker-compose >/dev/null 2>&1 && return
    command -v apt-get >/dev/null 2>&1 || die "docker-compose is missing: install it (Debian: apt-get install docker-compose; or Docker's compose plugin)"
    say "Installing docker-compose (Debian)"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq docker-compose; } >"$STATE/logs/apt-compose.log" 2>&1 \
        || { tail -n 20 "$STATE/logs/apt-compose.log" >&2; die "installing docker-compose failed"; }
}

compose_secrets() {
    local python
    python="$(find_python)"
    MLOPS_ENV_FILE="$COMPOSE_ENV" "$python" "$REPO/scripts/stack.py" secrets --compose "$COMPOSE_ENV" \
        | sed "s#$REPO/##"
}

# The images by content hash (a no-op when current); their tags are exported for docker-compose.
compose_images() {
    local python out line
    python="$(find_python)"
    mkdir -p "$STATE/logs"
    say "Images $COMPOSE_IMAGES (scripts/build_images.py; log: $STATE/logs/build-images.log)"
    out="$("$python" "$REPO/scripts/build_images.py" --images "$COMPOSE_IMAGES" --env \
        2>>"$STATE/logs/build-images.log")" \
        || { tail -n 30 "$STATE/logs/build-images.log" >&2; die "building the images failed"; }
    while IFS= read -r line; do
        [[ "$line" == MLOPS_*_IMAGE=* ]] || continue
        export "${line?}"
        say "  ${line}"
    done <<<"$out"
}

# compose_wait_healthy TIMEOUT [SERVICE...]: wait until the containers of the project (or of
# these services) are healthy, or have no health check, or exited 0 (airflow-init).
compose_wait_healthy() {
    local timeout="${1:-300}" started=$SECONDS ids states bad
    shift
    while :; do
        ids="$(compose ps -q "$@")"
        [[ -n "$ids" ]] || die "no containers in project $COMPOSE_PROJECT"
        # shellcheck disable=SC2086
        states="$(docker inspect --format '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}' $ids)"
        bad="$(awk '($2=="running" && $3!="healthy" && $3!="none") || ($2=="exited" && $4!="0") || ($2!="running" && $2!="exited")' <<<"$states")"
        [[ -z "$bad" ]] && return 0
        if ((SECONDS - started > timeout)); then
            echo "$bad" >&2
            die "not healthy after ${timeout}s (above); ./deploy.sh compose logs SERVICE"
        fi
        sleep 3
    done
}

compose_up() {
    local gpu=0
    while (($#)); do
        case "$1" in
            --gpu) gpu=1 ;;
            *) die "unknown option for compose up: $1 (--gpu: train in the trainer container on a gpu-queue worker)" ;;
        esac
        shift
    done
    PROFILES=()
    mkdir -p "$STATE/logs"
    chmod 700 "$STATE"
    compose_secrets
    ensure_compose_client
    if ((gpu)); then
        COMPOSE_IMAGES="$COMPOSE_IMAGES,docker-proxy"
        PROFILES=(--profile gpu)
        export MLOPS_TRAINER_QUEUE=gpu
        build_images  # the trainer; exports MLOPS_TRAINER_IMAGE (its id: the pin)
    fi
    compose_images
    local workers="${MLOPS_WORKERS:-2}"
    say "Starting the stack (project $COMPOSE_PROJECT, $workers Celery workers$( ((gpu)) \
        && echo ", a gpu-queue worker that trains in $MLOPS_TRAINER_IMAGE"))"
    compose up -d --remove-orphans --scale "airflow-worker=$workers" 2>&1 | sed 's/^/  /' \
        || die "docker-compose up failed (above); ./deploy.sh compose status, ./deploy.sh compose logs SERVICE"
    say "Waiting for every service to be healthy"
    compose_wait_healthy "${MLOPS_COMPOSE_TIMEOUT:-600}"
    say "Healthy"
    [[ "${MLOPS_COMPOSE_DEMO:-1}" == "1" ]] || { compose_print_access; return 0; }
    say "Demo data: s3://mlops-data/churn, $DEMO_DAYS days from $DEMO_START (deterministic)"
    compose run --rm --no-deps -T airflow-init demo-data --dest s3://mlops-data/churn \
        --start "$DEMO_START" --days "$DEMO_DAYS" 2>&1 | grep -v "Found credentials" | sed 's/^/  /'
    say "Training run for yesterday's partition on a Celery worker: $DEMO_RUN_ID"
    local rc=0
    compose run --rm --no-deps -T -e MLOPS_AIRFLOW_URL=http://airflow-apiserver:8080 \
        -e MLOPS_MLFLOW_URL=http://mlflow:5000 \
        -e "MLOPS_AIRFLOW_UI_URL=http://localhost:$COMPOSE_AIRFLOW_PORT" \
        -e "MLOPS_MLFLOW_UI_URL=http://localhost:$COMPOSE_MLFLOW_PORT" \
        airflow-init python scripts/summary.py run \
        --dag-id training --run-id "$DEMO_RUN_ID" --logical-date "$DEMO_LOGICAL_DATE" \
        --timeout "${MLOPS_DEPLOY_TIMEOUT:-900}" || rc=$?
    compose_print_access
    return $rc
}

compose_print_access() {
    echo
    echo "Airflow: http://localhost:$COMPOSE_AIRFLOW_PORT  (users admin, operator: may trigger, viewer: read-only)"
    echo "MLflow:  http://localhost:$COMPOSE_MLFLOW_PORT  (users admin, viewer: read-only)"
    echo "Passwords: MLOPS_AIRFLOW_*_PASSWORD and MLOPS_MLFLOW_*_PASSWORD in .env.compose (mode 600)."
    echo "./deploy.sh compose status | logs [SERVICE] | down (volumes are kept; down -v deletes them)"
}

compose_backup() {
    [[ -f "$COMPOSE_ENV" ]] || die "no .env.compose: nothing to back up"
    local dir db python
    python="$(find_python)"
    dir="$(backup_dir "${1:-}")"
    say "Backing up the production stack into $dir (it keeps running)"
    for db in airflow mlflow mlflow_auth; do
        # pg_dump inside the postgres container: one consistent snapshot per database.
        compose exec -T postgres pg_dump --format=custom --dbname="$db" >"$dir/$db.pgdump" \
            || die "pg_dump of $db failed"
    done
    compose run --rm --no-deps -T airflow-init s3-export >"$dir/s3.tar" 2> >(grep -v "airflow-init_run" >&2) \
        || die "exporting the S3 buckets failed"
    install -m 600 "$COMPOSE_ENV" "$dir/env.compose"
    chmod 600 "$dir"/*
    "$python" "$REPO/scripts/backup.py" manifest "$dir" --stack compose || die "writing the manifest failed"
    say "Backup complete: $dir (it holds .env.compose: keep it as private)"
}

compose_restore() {
    local dir="${1:-}" db owner python
    [[ -n "$dir" && -d "$dir" ]] || die "usage: ./deploy.sh compose restore DIR (a folder made by ./deploy.sh compose backup)"
    python="$(find_python)"
    dir="$(cd "$dir" && pwd)"
    "$python" "$REPO/scripts/backup.py" verify "$dir" --stack compose \
        || die "$dir is not a complete backup (above); nothing was changed"
    if [[ -f "$COMPOSE_ENV" ]] && ! cmp -s "$COMPOSE_ENV" "$dir/env.compose"; then
        cp -p "$COMPOSE_ENV" "$COMPOSE_ENV.before-restore"
        say "The backup's secrets replace .env.compose (the old one: .env.compose.before-restore)"
    fi
    install -m 600 "$dir/env.compose" "$COMPOSE_ENV"
    ensure_compose_client
    compose_images
    say "Stopping every service but PostgreSQL and S3"
    compose stop 2>&1 | sed 's/^/  /'
    compose up -d --no-deps postgres s3 2>&1 | sed 's/^/  /'
    compose_wait_healthy 300 postgres s3
    for db in airflow mlflow mlflow_auth; do
        owner="${db%%_*}"
        say "Restoring database $db"
        compose exec -T postgres psql -q -v ON_ERROR_STOP=1 --dbname=postgres \
            -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\" OWNER \"$owner\"" \
            || die "recreating database $db failed"
        compose exec -T postgres pg_restore --exit-on-error --dbname="$db" <"$dir/$db.pgdump" \
            || die "pg_restore of $db failed"
    done
    say "Restoring the S3 buckets"
    compose run --rm --no-deps -T airflow-init s3-import <"$dir/s3.tar" \
        || die "restoring the S3 buckets failed"
    MLOPS_COMPOSE_DEMO=0 compose_up
    say "Restored from $dir"
}

cmd_compose() {
    local sub="${1:-}"
    (($#)) && shift
    case "$sub" in
        up) compose_up "$@" ;;
        down)
            [[ -f "$COMPOSE_ENV" ]] || die "no .env.compose: nothing was started"
            compose down "$@" ;;
        status)
            [[ -f "$COMPOSE_ENV" ]] || die "no .env.compose: run ./deploy.sh compose up"
            compose ps "$@" ;;
        logs)
            [[ -f "$COMPOSE_ENV" ]] || die "no .env.compose: run ./deploy.sh compose up"
            compose logs --tail="${MLOPS_LOG_LINES:-200}" "$@" ;;
        backup) compose_backup "$@" ;;
        restore) compose_restore "$@" ;;
        *) die "usage: ./deploy.sh compose up [--gpu] | down | status | logs | backup [DIR] | restore DIR" ;;
    esac
}

# -- Online serving (include/mlops_core/serving.py; docs/serving.md) ------------------------------------
# ./deploy.sh serve [--model NAME ...] [--port N]: models:/<name>@champion (default: the demo's
# churn_demo) from the local MLflow server, in the foreground (Ctrl-C stops it), logged in as
# MLflow's read-only 'viewer'; no other secret reaches it. A promotion or a rollback is picked
# up within MLOPS_SERVING_POLL_SECONDS (5), without a restart.
cmd_serve() {
    local models=() port="${MLOPS_SERVING_PORT:-8000}" model password path args=()
    while (($#)); do
        case "$1" in
            --model) [[ -n "${2:-}" ]] || die "--model needs a registered model name"
                     models+=("$2"); shift ;;
            --port) [[ "${2:-}" =~ ^[0-9]+$ ]] || die "--port needs a port number"
                    port="$2"; shift ;;
            *) die "unknown option for serve: $1 (--model NAME, repeatable; --port N)" ;;
        esac
        shift
    done
    ((${#models[@]})) || models=(churn_demo)
    [[ -f "$ENV_FILE" && -x "$VENV/bin/python" ]] || die "no local stack here (.env, .venv): run ./deploy.sh local first"
    local mlflow_url="http://127.0.0.1:$MLFLOW_PORT" url="http://127.0.0.1:$port"
    "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
        "$mlflow_url/health" 2>/dev/null \
        || die "MLflow does not answer at $mlflow_url/health: start the stack with ./deploy.sh local"
    password="$(sed -n 's/^MLOPS_MLFLOW_VIEWER_PASSWORD=//p' "$ENV_FILE" | tail -n 1)"
    [[ -n "$password" ]] || die "$ENV_FILE has no MLOPS_MLFLOW_VIEWER_PASSWORD: run ./deploy.sh local (it adds missing secrets)"
    for model in "${models[@]}"; do args+=(--model "$model"); done
    path="/predict"
    ((${#models[@]} == 1)) || path="/models/${models[0]}/predict"
    say "Serving ${models[*]} (@champion) from MLflow at $mlflow_url as 'viewer' (read-only) on $url"
    echo "  routes: POST $url$path | GET $url/models/${models[0]} (its columns) | GET $url/version | GET $url/health"
    if [[ "${models[0]}" == churn_demo ]]; then
        echo "  try:    curl -s $url$path -H 'Content-Type: application/json' -d '{\"rows\": [{\"tenure_months\": 22, \"monthly_charges\": 99.01, \"total_charges\": 2281.44, \"contract\": \"two_year\", \"payment_method\": \"electronic_check\", \"internet_service\": \"none\", \"support_calls\": 2, \"age\": 37, \"region\": \"west\"}]}'"
    else
        echo "  try:    curl -s $url$path -H 'Content-Type: application/json' -d '{\"rows\": [{\"<column>\": <value>, ...}]}'"
    fi
    echo "  Ctrl-C stops it. The rollback DAG smoke-tests it where the scheduler has MLOPS_SERVING_URL=$url."
    MLFLOW_TRACKING_USERNAME=viewer MLFLOW_TRACKING_PASSWORD="$password" \
        exec "$VENV/bin/python" -m include.mlops_core.serving serve "${args[@]}" \
        --tracking-uri "$mlflow_url" --port "$port" --poll-seconds "${MLOPS_SERVING_POLL_SECONDS:-5}"
}

main() {
    local command="${1:-}"
    (($#)) && shift
    case "$command" in
        local) cmd_local "$@" ;;
        demo) cmd_demo "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        test) cmd_test "$@" ;;
        airflow) cmd_airflow "$@" ;;
        compose) cmd_compose "$@" ;;
        backup) cmd_backup "$@" ;;
        restore) cmd_restore "$@" ;;
        serve) cmd_serve "$@" ;;
        -h | --help | help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
