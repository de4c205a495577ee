"""Facts about an environment on its host, each read in one place: its containers, its resolved
compose configuration, where its database is, and the database's alembic revision.

Every command that needs one of these (status, release, rollback, backups) asks here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from deployer.commands import docker as containers_cmds
from deployer.commands import swarm as swarm_cmds
from deployer.commands.compose import ComposeConfig, parse_config
from deployer.db.url import MYSQL, POSTGRESQL, SQLITE, DatabaseLocation, locate
from deployer.errors import ConfigError, DeployerError, HostError
from deployer.hosts.dockerapi import EngineUnavailable
from deployer.server.target import Target

if TYPE_CHECKING:
    from deployer.hosts import Host

Container = containers_cmds.Container

# Run with python3 in a container of the web image; argv[1] is the database file.
SQLITE_REVISION = """\
import os, sqlite3, sys
if not os.path.exists(sys.argv[1]):
    sys.exit(0)
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
try:
    rows = db.execute("SELECT version_num FROM alembic_version").fetchall()
except sqlite3.OperationalError:
    rows = []
print(" ".join(row[0] for row in rows))
"""


# --------------------------------------------------------------------------- containers


def service_containers(target: Target, service: str | None = None) -> list[Container]:
    """The project's containers (one service's, or all), one-off containers left out.

    Read by the project's label: no compose file to load, and it works before the first
    checkout exists.
    """
    return [c for c in all_containers(target) if not c.oneoff and (service is None or c.service == service)]


def all_containers(target: Target) -> list[Container]:
    """Every container of the project, one-off ones (migrations) included."""
    return project_containers(target.host, target.compose.project)


def project_containers(host: Host, project: str) -> list[Container]:
    """Every container of a compose project on ``host``, one-off ones included.

    Through the host's engine API (no command, no SSH session); with the docker CLI where
    the engine cannot be reached that way (the CLI then names the real problem).
    """
    try:
        engine = host.engine()
        found = containers_cmds.parse_rows(engine.project_containers(project, oneoff=True))
        if any(swarm_cmds.TASK_LABEL in c.labels for c in found):
            gateway = swarm_cmds.parse_gateway((engine.get(f"/networks/{swarm_cmds.GATEWAY_NETWORK}", missing_ok=True)
                                                or {}).get("Containers"))
            found = _reachable(found, gateway)
        return found
    except EngineUnavailable:
        pass
    result = host.run(containers_cmds.project_argv(project, oneoff=True), timeout=60)
    if not result.ok:
        raise HostError(
            f"cannot list the containers of {project} on {host.name}: "
            f"{(result.stderr or result.stdout).strip()[-300:]}",
            hint="the user deployer logs in as must be able to run `docker ps` (the docker group, or root)",
        )
    found = containers_cmds.parse_inspect(result.stdout)
    if any(swarm_cmds.TASK_LABEL in c.labels for c in found):
        read = host.run(swarm_cmds.gateway_argv(), timeout=60)
        found = _reachable(found, swarm_cmds.parse_gateway(json.loads(read.stdout or "{}") if read.ok else {}))
    return found


def _reachable(found: Sequence[Container], gateway: dict[str, str]) -> list[Container]:
    """Swarm's task containers with their address on the node's gateway bridge first: the
    host reaches that one (an overlay network's addresses are the swarm's own)."""
    return [replace(c, ips=(gateway[c.id], *c.ips)) if c.id in gateway else c for c in found]


def running(found: Sequence[Container], service: str) -> Container | None:
    """The running container of ``service`` among ``found``, if any."""
    return next((c for c in found if c.service == service and c.state == "running" and not c.oneoff), None)


def running_db(target: Target) -> Container | None:
    """The running container of the db service (None without one, or for a SQLite app)."""
    if not target.config.app.has_db_service:
        return None
    return running(service_containers(target, target.config.app.db_service), target.config.app.db_service)


# --------------------------------------------------------------------------- configuration


def compose_config(target: Target, compose_file: str | None = None) -> ComposeConfig:
    """The resolved compose configuration on the host, with the host's variables.

    ``compose_file`` is the text of a compose file to resolve instead of the checkout's
    (preflight: the file of the commit about to ship, with deploy.toml's variables, so that
    nothing on the host changes). A file compose refuses is a ConfigError with compose's reason.
    """
    from deployer.server.target import env_file_text

    compose = target.compose
    if compose_file is None:
        argv, stdin = compose.config(), None
    else:
        variables = env_file_text(target.env.env) if target.env.env else None
        argv, stdin = compose.config_of(compose_file, variables)
    result = target.host.run(argv, stdin=stdin, timeout=120)
    if not result.ok:
        reason = [line.strip() for line in (result.stderr or result.stdout).strip().splitlines()[-3:]]
        raise ConfigError(
            f"docker compose cannot read {target.config.app.compose_file} on {target.host.name}: " + " ".join(reason),
            hint="fix the compose file, or the variables in deploy.toml's env table (`deployer config show ENV`)",
        )
    try:
        return parse_config(result.stdout, compose.project)
    except ValueError as error:
        raise ConfigError(f"cannot read the output of `docker compose config`: {error}") from None


def database_location(target: Target, config: ComposeConfig) -> DatabaseLocation:
    """Where the app's database is (see :mod:`deployer.db.url`); ConfigError when unknown."""
    return locate(target.config.app, target.env, config)


# --------------------------------------------------------------------------- the database


class DatabaseNotRunning(DeployerError):
    """The database's container is not running (or, for SQLite, nothing can read the file yet)."""


def _container_for(found: Sequence[Container], service: str) -> Container | None:
    return running(found, service)


@contextmanager
def connectable_url(target: Target, location: DatabaseLocation, found: Sequence[Container] | None = None) -> Iterator[str]:
    """A URL this process can connect to: the service's container address, through the SSH
    connection for a remote host, with the password read from its file when there is one.

    Raises :class:`DatabaseNotRunning` when the URL names a compose service with no running
    container.
    """
    if location.engine not in (POSTGRESQL, MYSQL):
        raise ConfigError(f"deployer connects to PostgreSQL and MySQL/MariaDB only, not to {location.engine} "
                          f"({location.shown})")
    found = all_containers(target) if found is None else found
    services = {c.service for c in found if not c.oneoff}
    named, port, render = _url_parts(location.url)
    host = named or "127.0.0.1"
    password: str | None = None
    if host in services or host == target.config.app.db_service:
        container = _container_for(found, host)
        if container is None:
            raise DatabaseNotRunning(f"the {host} service of {target.name} is not running")
        if not container.ips:
            raise HostError(f"the {host} container {container.name} has no network address")
        host = container.ips[0]
        if location.password_file:
            password = _read_password_file(target, container, location.password_file)
    with target.host.forward(host, port) as (here, local_port):
        yield render(here, local_port, password)


def _url_parts(url: str) -> tuple[str | None, int, Callable[[str, int, str | None], str]]:
    """A database URL's host and port, and how to write it for another address (and password).

    libpq reads a PostgreSQL URL when it can, and deployer a MySQL one as SQLAlchemy does, so
    that `status` imports no SQLAlchemy; SQLAlchemy when the URL carries arguments only it knows.
    """
    from deployer.db.url import DEFAULT_PORTS, driver_url, mysql_params, mysql_url, pg_params, pg_url

    mysql = mysql_params(url)
    if mysql is not None:
        given = mysql

        def with_mysql(host: str, port: int, password: str | None) -> str:
            secret = {"password": password} if password is not None else {}
            return mysql_url({**given, "host": host, "port": str(port), **secret})

        return mysql.get("host"), int(mysql.get("port") or DEFAULT_PORTS[MYSQL]), with_mysql
    params = pg_params(url)
    if params is not None:
        known = params

        def with_libpq(host: str, port: int, password: str | None) -> str:
            secret = {"password": password} if password is not None else {}
            return pg_url({**known, "host": host, "port": str(port), **secret})

        return params.get("host"), int(params.get("port") or 5432), with_libpq
    parsed = driver_url(url)

    def with_sqlalchemy(host: str, port: int, password: str | None) -> str:
        moved = parsed.set(host=host, port=port)
        return (moved if password is None else moved.set(password=password)).render_as_string(hide_password=False)

    return parsed.host, parsed.port or 5432, with_sqlalchemy


def _read_password_file(target: Target, container: Container, path: str) -> str:
    result = target.host.run(["docker", "exec", container.id, "cat", path], timeout=30)
    if not result.ok:
        raise ConfigError(
            f"cannot read the password file {path} (the db image's *_PASSWORD_FILE) in the {container.service} "
            f"container: {result.stderr.strip()[-200:]}",
            hint="set database_url in deploy.toml instead",
        )
    return result.stdout.rstrip("\r\n")


def database_password(target: Target, location: DatabaseLocation, found: Sequence[Container] | None = None) -> str | None:
    """The password of the app's database user: its URL's, else read from the password file
    in the running db container (None: the URL has none and there is no file)."""
    from deployer.db.url import mysql_params, pg_params

    if location.password_file:
        service = target.config.app.db_service
        container = running(all_containers(target) if found is None else found, service)
        if container is None:
            raise DatabaseNotRunning(f"the {service} service of {target.name} is not running")
        return _read_password_file(target, container, location.password_file)
    params = mysql_params(location.url) if location.engine == MYSQL else pg_params(location.url)
    if params is not None:
        return params.get("password")
    from deployer.db.url import parse

    return parse(location.url).password


def read_revisions(
    target: Target, location: DatabaseLocation, found: Sequence[Container] | None = None, *, connect_timeout: int = 10
) -> tuple[str, ...] | None:
    """The database's alembic revision(s), sorted; ``()`` when none is applied.

    ``None`` means the database is not there to ask: its container is not running (for a
    SQLite app: neither a web container nor, before the first build, its image).
    Raises :class:`HostError` when a running database cannot be reached and
    :class:`ConfigError` for a URL or credentials that cannot work.
    """
    found = all_containers(target) if found is None else found
    if location.engine == SQLITE:
        return _sqlite_revisions(target, location, found)
    if location.engine == MYSQL:
        from deployer.db.mysql import revisions

        try:
            with connectable_url(target, location, found) as url:
                return revisions(url, connect_timeout=connect_timeout)
        except DatabaseNotRunning:
            return None
    from deployer.db.migrations import database_revisions

    try:
        with connectable_url(target, location, found) as url:
            return database_revisions(url, connect_timeout=connect_timeout)
    except DatabaseNotRunning:
        return None


def _sqlite_revisions(target: Target, location: DatabaseLocation, found: Sequence[Container]) -> tuple[str, ...] | None:
    web = running(found, target.config.app.web_service)
    script = ["python3", "-c", SQLITE_REVISION, location.sqlite_path]
    if web is not None:
        result = target.host.run(["docker", "exec", web.id, *script], timeout=120)
    else:
        if not target.host.run(["test", "-e", target.compose.files[0]]).ok:
            return None
        result = target.host.run(target.compose.run(target.config.app.web_service, script), timeout=300)
        if not result.ok and "No such image" in (result.stderr + result.stdout):
            return None
    if not result.ok:
        raise HostError(
            f"cannot read the SQLite database {location.sqlite_path} of {target.name}: "
            f"{(result.stderr or result.stdout).strip()[-300:]}"
        )
    return tuple(sorted(result.stdout.split()))


def wait_gone(target: Target, names: Sequence[str]) -> None:
    """Remove containers by name (one-off migrations left behind), ignoring absent ones."""
    if names:
        with contextlib.suppress(DeployerError):
            target.host.run(["docker", "rm", "--force", *names], timeout=120)
