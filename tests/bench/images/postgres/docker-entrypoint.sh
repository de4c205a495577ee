#!/bin/bash
# Minimal re-implementation of the official postgres image's entrypoint contract:
#   POSTGRES_USER (default postgres), POSTGRES_PASSWORD (required unless
#   POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_DB (default: the user),
#   POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD (default scram-sha-256),
#   PGDATA (default /var/lib/postgresql/data), /docker-entrypoint-initdb.d/*.sh|*.sql,
#   and POSTGRES_PASSWORD_FILE / POSTGRES_USER_FILE / POSTGRES_DB_FILE /
#   POSTGRES_INITDB_ARGS_FILE: the value read from a file (Docker and compose secrets).
# On the first start (empty PGDATA) the cluster is created; then the server runs in the
# foreground as PID 1 so `docker stop` (SIGINT, see STOPSIGNAL) shuts it down fast and clean.
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u +'%Y-%m-%d %H:%M:%S UTC')" "$*"; }
die() { log "error: $*" >&2; exit 1; }

# file_env VAR [DEFAULT]: VAR from $VAR, or else from the file named by $VAR_FILE (a
# secret mounted into the container), or else DEFAULT. Both set is an error, as in the
# official image. The _FILE variable is unset afterwards, so the re-exec below (as the
# postgres user, who may not be able to read the secret) finds the value itself.
file_env() {
    local var=$1 file_var="${1}_FILE" value=${2:-}
    if [[ -n ${!var:-} && -n ${!file_var:-} ]]; then
        die "both $var and $file_var are set, but they are exclusive: set one of them"
    fi
    if [[ -n ${!var:-} ]]; then
        value=${!var}
    elif [[ -n ${!file_var:-} ]]; then
        [[ -r ${!file_var} ]] || die "$file_var names ${!file_var}, which does not exist or cannot be read"
        value="$(<"${!file_var}")"
    fi
    export "$var=$value"
    unset "$file_var"
}

# `docker run IMAGE -c shared_buffers=256MB` means "postgres with these options".
if [[ ${1:-} == -* ]]; then
    set -- postgres "$@"
fi

# Anything other than the server (psql, pg_dump, bash ...) is run as given.
if [[ ${1:-} != postgres ]]; then
    exec "$@"
fi

file_env POSTGRES_PASSWORD
file_env POSTGRES_USER postgres
file_env POSTGRES_DB "$POSTGRES_USER"
file_env POSTGRES_INITDB_ARGS
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
export PGDATA POSTGRES_HOST_AUTH_METHOD

if [[ $(id -u) == 0 ]]; then
    # Volumes arrive owned by root: hand them to postgres, then drop privileges.
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

run_init_scripts() {
    local f
    shopt -s nullglob
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh) log "running $f"; bash "$f" ;;
            *.sql) log "running $f"; psql -v ON_ERROR_STOP=1 --no-psqlrc -h "$1" \
                       -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f "$f" ;;
            *) log "ignoring $f" ;;
        esac
    done
}

initialize() {
    if [[ -z ${POSTGRES_PASSWORD:-} && $POSTGRES_HOST_AUTH_METHOD != trust ]]; then
        die "the database is uninitialized and POSTGRES_PASSWORD is not set.
       Set POSTGRES_PASSWORD to a non-empty value for the superuser, or set
       POSTGRES_HOST_AUTH_METHOD=trust to allow connections without a password."
    fi
    log "initializing database cluster in $PGDATA"
    local pwfile
    pwfile="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    # Without an explicit locale initdb would pick SQL_ASCII, and non-ASCII text breaks.
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a word list by contract
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=trust \
        $POSTGRES_INITDB_ARGS >/dev/null
    rm -f "$pwfile"

    # Same as the official image: trust inside the container, the chosen method from outside.
    printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

    # A private socket directory and no TCP listener: nobody (not even a pg_isready
    # healthcheck) sees this temporary server as "ready" while it is being set up.
    local sockdir
    sockdir="$(mktemp -d)"
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$sockdir" start >/dev/null
    if [[ $POSTGRES_DB != postgres ]]; then
        # Through stdin, because psql interpolates :"db" (quoted identifier) only there, not in -c.
        printf 'CREATE DATABASE :"db";\n' | PGHOST="$sockdir" psql -v ON_ERROR_STOP=1 --no-psqlrc \
            -U "$POSTGRES_USER" -d postgres --set db="$POSTGRES_DB" >/dev/null
    fi
    PGHOST="$sockdir" run_init_scripts "$sockdir"
    pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
    rmdir "$sockdir" 2>/dev/null || true
    log "initialization complete"
}

if [[ ! -s $PGDATA/PG_VERSION ]]; then
    initialize
else
    log "database directory $PGDATA already initialized; skipping initdb"
fi

exec "$@"
