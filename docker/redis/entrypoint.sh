#!/bin/sh
# The password goes into a config file readable by the redis user only, not onto the command line.
set -eu
: "${MLOPS_REDIS_PASSWORD:?is required}"
umask 077
conf="$(mktemp)"
{
    echo "bind 0.0.0.0"
    echo "protected-mode no"
    echo "port 6379"
    echo "save \"\""
    echo "appendonly no"
    printf 'requirepass "%s"\n' "$MLOPS_REDIS_PASSWORD"
} >"$conf"
exec redis-server "$conf"
