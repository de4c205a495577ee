#!/bin/bash
# The official mariadb image's readiness check, as compose files use it:
#   healthcheck: {test: ["CMD", "healthcheck.sh", "--connect", "--innodb_initialized"]}
# Healthy once the server answers on its TCP port: only the real server opens it (the
# temporary server of the first start's initialisation listens on its socket only), and it
# opens it once InnoDB is initialised. It logs in as the healthcheck user the entrypoint made
# (its password in the data directory), so the server logs no refused login every few seconds;
# `mariadb-admin ping` would answer 0 for a server that is up even if it refused the login.
set -eu
for arg in "$@"; do
    case "$arg" in
        --connect|--innodb_initialized|--su-mysql|--su=*|--no-defaults) ;;
        *) echo "healthcheck.sh: $arg is not supported here (only --connect and --innodb_initialized)" >&2; exit 2 ;;
    esac
done
defaults=--no-defaults
[ -r /var/lib/mysql/.my-healthcheck.cnf ] && defaults=--defaults-file=/var/lib/mysql/.my-healthcheck.cnf
exec mariadb-admin "$defaults" --protocol=tcp --host=127.0.0.1 --port=3306 --connect-timeout=2 ping >/dev/null 2>&1
