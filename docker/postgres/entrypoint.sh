#!/bin/sh
# First start: initdb with password authentication (scram-sha-256) for every TCP client. Every
# start: one role and database per service from MLOPS_DB_* variables, created when missing (an
# upgrade that adds a service gets its role and database on the next start; existing roles keep
# their passwords: rotate with ALTER ROLE, docs/deployment.md).
#   MLOPS_DB_SUPERUSER_PASSWORD  the "postgres" superuser (backups, restores)
#   MLOPS_DB_USERS               "role:database[,database...]:PASSWORD_VARIABLE ..."
#                                (e.g. airflow:airflow:MLOPS_DB_AIRFLOW_PASSWORD)
# The first start initialises into a scratch folder and renames it when complete: a container
# stopped half-way starts over instead of serving a database without its roles.
set -eu
: "${MLOPS_DB_SUPERUSER_PASSWORD:?is required}"

# Create the roles and databases of MLOPS_DB_USERS that do not exist yet (server on the socket
# only, so no client connects meanwhile).
ensure_roles() {
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    for spec in ${MLOPS_DB_USERS:-}; do
        role="${spec%%:*}"; rest="${spec#*:}"; dbs="${rest%%:*}"; var="${rest#*:}"
        if [ -z "$(psql -tAq --username=postgres --dbname=postgres \
                -c "SELECT 1 FROM pg_roles WHERE rolname = '$role'")" ]; then
            eval "password=\${$var:?$var is required for role $role}"
            # The password goes through psql's stdin, never a command line.
            printf "CREATE ROLE \"%s\" LOGIN PASSWORD '%s';\n" \
                "$role" "$(printf '%s' "$password" | sed "s/'/''/g")" \
                | psql -q -v ON_ERROR_STOP=1 --username=postgres --dbname=postgres >/dev/null
            echo "mlops-postgres: created role $role"
        fi
        for db in $(echo "$dbs" | tr ',' ' '); do
            if [ -z "$(psql -tAq --username=postgres --dbname=postgres \
                    -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
                psql -q -v ON_ERROR_STOP=1 --username=postgres --dbname=postgres \
                    -c "CREATE DATABASE \"$db\" OWNER \"$role\"" >/dev/null
                echo "mlops-postgres: created database $db (owner $role)"
            fi
        done
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    final="$PGDATA"
    PGDATA="$PGDATA.init"
    export PGDATA
    rm -rf "$PGDATA"
    pwfile="$(mktemp)"
    printf '%s\n' "$MLOPS_DB_SUPERUSER_PASSWORD" >"$pwfile"
    initdb --username=postgres --auth-local=peer --auth-host=scram-sha-256 --pwfile="$pwfile" \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    {
        echo "listen_addresses = '*'"
        echo "password_encryption = 'scram-sha-256'"
        echo "max_connections = 200"
        echo "shared_buffers = 128MB"
    } >>"$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    ensure_roles
    mv "$PGDATA" "$final"
    PGDATA="$final"
    echo "mlops-postgres: initialised $PGDATA"
else
    ensure_roles
fi
exec postgres -D "$PGDATA"
