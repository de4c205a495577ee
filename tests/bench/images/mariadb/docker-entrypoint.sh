#!/bin/bash
# Minimal re-implementation of the official mariadb image's entrypoint contract:
#   MARIADB_ROOT_PASSWORD, or MARIADB_ALLOW_EMPTY_ROOT_PASSWORD, or
#   MARIADB_RANDOM_ROOT_PASSWORD (one of them is required on the first start);
#   MARIADB_ROOT_HOST (default %: root may log in from anywhere, with the password);
#   MARIADB_DATABASE, MARIADB_USER + MARIADB_PASSWORD (the user gets every privilege on
#   that database); /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz.
# Each MARIADB_X may be given as MYSQL_X (MYSQL_ALLOW_EMPTY_PASSWORD, MYSQL_RANDOM_ROOT_PASSWORD
# for the two whose names differ), and as X_FILE: the value read from a file (Docker and
# compose secrets). MARIADB_X wins over MYSQL_X; X and X_FILE both set is an error.
# On the first start (no system tables in /var/lib/mysql) the data directory is created by
# a temporary server that listens on its socket only (so a TCP healthcheck does not call
# it ready); then the server runs in the foreground, as the mysql user, as PID 1.
# The readiness check logs in as its own user (healthcheck@127.0.0.1, no privileges; its password
# in $DATADIR/.my-healthcheck.cnf), as the official image's does.
# Not implemented: time zone tables, MARIADB_AUTO_UPGRADE, replication variables.
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u +'%Y-%m-%d %H:%M:%S UTC')" "$*"; }
die() { log "error: $*" >&2; exit 1; }

# read_var VAR: the value of $VAR or of the file $VAR_FILE names ("" when neither is set).
read_var() {
    local var=$1 file_var="${1}_FILE"
    if [[ -n ${!var:-} && -n ${!file_var:-} ]]; then
        die "both $var and $file_var are set, but they are exclusive: set one of them"
    fi
    if [[ -n ${!var:-} ]]; then
        printf '%s' "${!var}"
    elif [[ -n ${!file_var:-} ]]; then
        [[ -r ${!file_var} ]] || die "$file_var names ${!file_var}, which does not exist or cannot be read"
        printf '%s' "$(<"${!file_var}")"
    fi
}

# file_env VAR [DEFAULT] [MYSQL_VAR]: VAR (or VAR_FILE), else MYSQL_VAR (or its _FILE), else
# DEFAULT; exported as VAR, the _FILE forms unset (the re-exec below, as the mysql user, may
# not be able to read a secret root can).
file_env() {
    local var=$1 default=${2:-} fallback=${3:-} value
    value="$(read_var "$var")"
    if [[ -z $value && -n $fallback ]]; then
        value="$(read_var "$fallback")"
        unset "${fallback}_FILE"
    fi
    export "$var=${value:-$default}"
    unset "${var}_FILE"
}

# `docker run IMAGE --character-set-server=utf8mb4` means "the server with these options".
if [[ ${1:-} == -* ]]; then
    set -- mariadbd "$@"
fi

# Anything other than the server (mariadb, mariadb-dump, bash ...) is run as given.
if [[ ${1:-} != mariadbd && ${1:-} != mysqld ]]; then
    exec "$@"
fi

file_env MARIADB_ROOT_PASSWORD '' MYSQL_ROOT_PASSWORD
file_env MARIADB_ALLOW_EMPTY_ROOT_PASSWORD '' MYSQL_ALLOW_EMPTY_PASSWORD
file_env MARIADB_RANDOM_ROOT_PASSWORD '' MYSQL_RANDOM_ROOT_PASSWORD
file_env MARIADB_ROOT_HOST '%' MYSQL_ROOT_HOST
file_env MARIADB_DATABASE '' MYSQL_DATABASE
file_env MARIADB_USER '' MYSQL_USER
file_env MARIADB_PASSWORD '' MYSQL_PASSWORD
DATADIR=/var/lib/mysql
SOCKET=/run/mysqld/mysqld.sock

if [[ $(id -u) == 0 ]]; then
    # Volumes arrive owned by root: hand them to mysql, then drop privileges.
    mkdir -p "$DATADIR" /run/mysqld
    chown -R mysql:mysql "$DATADIR" /run/mysqld
    exec setpriv --reuid=mysql --regid=mysql --init-groups "$0" "$@"
fi

# SQL literals: a string between single quotes, an identifier between backquotes.
sql_string() { local s=${1//\\/\\\\}; printf "'%s'" "${s//\'/\\\'}"; }
sql_name() { printf '`%s`' "${1//\`/\`\`}"; }

run_sql() {  # run_sql [OPTIONS]: statements on stdin, as root through the socket
    mariadb --no-defaults --protocol=socket --socket="$SOCKET" --user=root --binary-mode "$@"
}

run_init_scripts() {
    local f
    shopt -s nullglob
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh) log "running $f"; bash "$f" ;;
            *.sql) log "running $f"; run_sql --database="$MARIADB_DATABASE" <"$f" ;;
            *.sql.gz) log "running $f"; gunzip -c "$f" | run_sql --database="$MARIADB_DATABASE" ;;
            *) log "ignoring $f" ;;
        esac
    done
}

initialize() {
    if [[ -z $MARIADB_ROOT_PASSWORD && -z $MARIADB_ALLOW_EMPTY_ROOT_PASSWORD && -z $MARIADB_RANDOM_ROOT_PASSWORD ]]; then
        die "the database is uninitialized and no root password option is set.
       Set one of MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD or MARIADB_RANDOM_ROOT_PASSWORD."
    fi
    if [[ -n $MARIADB_USER && -z $MARIADB_PASSWORD ]]; then
        die "MARIADB_USER is set without MARIADB_PASSWORD (or MYSQL_PASSWORD)"
    fi
    if [[ -n $MARIADB_RANDOM_ROOT_PASSWORD ]]; then
        MARIADB_ROOT_PASSWORD="$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 32)"
        log "GENERATED ROOT PASSWORD: $MARIADB_ROOT_PASSWORD"
    fi
    log "initializing the data directory $DATADIR"
    # Root logs in with a password (no unix_socket shortcut), as in the official image.
    mariadb-install-db --datadir="$DATADIR" --auth-root-authentication-method=normal --skip-test-db \
        --skip-name-resolve --skip-log-bin --default-time-zone=SYSTEM >/dev/null

    "$@" --skip-networking --socket="$SOCKET" --skip-log-bin &
    local pid=$! i
    for ((i = 0; i < 120; i++)); do
        if echo 'SELECT 1' | run_sql >/dev/null 2>&1; then break; fi
        kill -0 "$pid" 2>/dev/null || die "the temporary server exited during initialization"
        sleep 0.5
    done
    echo 'SELECT 1' | run_sql >/dev/null || die "the temporary server did not start"

    local root_host_sql='' database_sql='' user_sql='' healthcheck_password
    # The readiness check's own user (as the official image's healthcheck.sh has): it may
    # only log in, from inside the container; its password is in a file of the data directory.
    healthcheck_password="$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 32)"
    printf '[client]\nuser=healthcheck\npassword=%s\n' "$healthcheck_password" >"$DATADIR/.my-healthcheck.cnf"
    chmod 0600 "$DATADIR/.my-healthcheck.cnf"
    if [[ $MARIADB_ROOT_HOST != localhost ]]; then
        root_host_sql="CREATE USER 'root'@$(sql_string "$MARIADB_ROOT_HOST") IDENTIFIED BY $(sql_string "$MARIADB_ROOT_PASSWORD");
GRANT ALL ON *.* TO 'root'@$(sql_string "$MARIADB_ROOT_HOST") WITH GRANT OPTION;"
    fi
    if [[ -n $MARIADB_DATABASE ]]; then
        database_sql="CREATE DATABASE IF NOT EXISTS $(sql_name "$MARIADB_DATABASE");"
    fi
    if [[ -n $MARIADB_USER ]]; then
        user_sql="CREATE USER $(sql_string "$MARIADB_USER")@'%' IDENTIFIED BY $(sql_string "$MARIADB_PASSWORD");"
        if [[ -n $MARIADB_DATABASE ]]; then
            user_sql+="
GRANT ALL ON $(sql_name "${MARIADB_DATABASE//_/\\_}").* TO $(sql_string "$MARIADB_USER")@'%';"
        fi
    fi
    run_sql --database=mysql <<-EOSQL
		SET @@SESSION.SQL_LOG_BIN = 0;
		SET @@SESSION.SQL_MODE = REPLACE(@@SESSION.SQL_MODE, 'NO_BACKSLASH_ESCAPES', '');
		DROP USER IF EXISTS root@'127.0.0.1', root@'::1';
		EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\'', @@hostname, '\'');
		SET PASSWORD FOR 'root'@'localhost' = PASSWORD($(sql_string "$MARIADB_ROOT_PASSWORD"));
		CREATE USER 'healthcheck'@'127.0.0.1' IDENTIFIED BY $(sql_string "$healthcheck_password");
		CREATE USER 'healthcheck'@'::1' IDENTIFIED BY $(sql_string "$healthcheck_password");
		${root_host_sql}
		${database_sql}
		${user_sql}
	EOSQL
    # From here on, root has its password: the init scripts log in with it.
    export MYSQL_PWD="$MARIADB_ROOT_PASSWORD"
    run_init_scripts
    unset MYSQL_PWD

    kill "$pid"
    wait "$pid" || die "the temporary server did not shut down cleanly"
    log "initialization complete"
}

if [[ ! -d $DATADIR/mysql ]]; then
    initialize "$@"
else
    log "data directory $DATADIR already initialized; skipping initialization"
fi

exec "$@"
