"""Reading the live state of an environment's compose project: containers and database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from deployer.commands import docker as facts
from deployer.errors import DeployerError, HostError
from deployer.server.target import Target

POSTGRES_PORT = 5432


def service_containers(target: Target, service: str | None = None) -> list[facts.Container]:
    """The project's containers (one service's, or all), one-off containers left out.

    One ``docker ps | docker inspect`` round trip by the project's label: no compose file
    to load, and it works before the first checkout exists.
    """
    result = target.host.run(facts.project_argv(target.compose.project), timeout=60)
    result.check(f"list the containers of {target.compose.project}")
    found = [c for c in facts.parse_inspect(result.stdout) if not c.oneoff]
    return [c for c in found if service is None or c.service == service]


def running_db(target: Target) -> facts.Container | None:
    for container in service_containers(target, target.config.app.db_service):
        if container.state == "running":
            return container
    return None


def database_url_on_host(target: Target, db: facts.Container) -> str:
    """The database URL as the host sees it.

    ``database_url`` from deploy.toml wins (a hostname equal to the db service's name means
    that container); otherwise the URL is derived from the official postgres image's
    variables (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB) in the db container.
    """
    from sqlalchemy.engine import make_url

    if not db.ips:
        raise HostError(f"the {db.service} container {db.name} has no network address")
    configured = target.env.database_url
    if configured:
        url = make_url(configured)
        if url.host in (None, "", target.config.app.db_service):
            url = url.set(host=db.ips[0])
        return url.render_as_string(hide_password=False)
    user = db.env.get("POSTGRES_USER", "postgres")
    password = db.env.get("POSTGRES_PASSWORD")
    if password is None and db.env.get("POSTGRES_HOST_AUTH_METHOD") != "trust":
        raise DeployerError(
            f"cannot tell how to reach the database of {target.name}: the {db.service} container sets no POSTGRES_PASSWORD",
            hint=f"set environments.{target.name}.database_url in deploy.toml",
        )
    from sqlalchemy.engine import URL

    return URL.create(
        "postgresql+psycopg2",
        username=user,
        password=password,
        host=db.ips[0],
        port=POSTGRES_PORT,
        database=db.env.get("POSTGRES_DB", user),
    ).render_as_string(hide_password=False)


@contextmanager
def database_url_here(target: Target, db: facts.Container) -> Iterator[str]:
    """A URL this process can connect to: through an SSH tunnel for a remote host."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url_on_host(target, db))
    with target.host.forward(url.host or "127.0.0.1", url.port or POSTGRES_PORT) as (host, port):
        yield url.set(host=host, port=port).render_as_string(hide_password=False)


def read_revisions(target: Target, db: facts.Container | None = None) -> tuple[str, ...] | None:
    """The database's alembic revision(s); ``None`` when the db service is not running.

    ``db`` is the db container when the caller already knows it (one round trip less).
    """
    from deployer.db.migrations import database_revisions

    db = db or running_db(target)
    if db is None:
        return None
    with database_url_here(target, db) as url:
        return database_revisions(url)
