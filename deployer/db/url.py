"""Where the app's database is, as the app itself states it: pure URL logic, no I/O.

The order (:func:`locate`): ``database_url`` in deploy.toml; else the web service's own
environment in the resolved compose config (``DATABASE_URL``, ``SQLALCHEMY_DATABASE_URI``, or
the variable ``[app] database_url_variable`` names); else the variables of the official
postgres image on the db service (``POSTGRES_USER``, ``POSTGRES_PASSWORD`` or
``POSTGRES_PASSWORD_FILE``, ``POSTGRES_DB``, ``POSTGRES_HOST_AUTH_METHOD``).

The URL is kept as the app sees it (its host is usually a compose service name); turning it
into an address deployer can connect to is the host's business (:mod:`deployer.server.facts`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deployer.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from deployer.commands.compose import ComposeConfig
    from deployer.config import AppConfig, Environment

POSTGRESQL = "postgresql"
SQLITE = "sqlite"
MYSQL = "mysql"
ENGINES = (POSTGRESQL, SQLITE, MYSQL)
DEFAULT_PORTS = {POSTGRESQL: 5432, MYSQL: 3306}
URL_VARIABLES = ("DATABASE_URL", "SQLALCHEMY_DATABASE_URI")

FROM_CONFIG = "database_url in deploy.toml"


@dataclass(frozen=True)
class DatabaseLocation:
    """The app's database: its URL as the app sees it, and where that came from.

    ``password_file`` is a path inside the db container whose content is the password
    (``POSTGRES_PASSWORD_FILE``); it is read when connecting.
    """

    url: str = field(repr=False)
    engine: str
    source: str
    password_file: str | None = None

    @property
    def shown(self) -> str:
        """The URL with its password hidden, for messages."""
        return redact_url(self.url)

    @property
    def sqlite_path(self) -> str:
        """The database file of a SQLite URL, as the web container sees it."""
        database = parse(self.url).database
        if self.engine != SQLITE or not database or database == ":memory:":
            raise ConfigError(f"the database URL {self.shown} names no SQLite database file")
        return database


def engine_of(url: str) -> str:
    """``postgresql``, ``sqlite`` or ``mysql`` for a URL (``postgres://`` and drivers included)."""
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgres", "postgresql", "pgsql"):
        return POSTGRESQL
    if scheme == "sqlite":
        return SQLITE
    if scheme in ("mysql", "mariadb"):
        return MYSQL
    raise ConfigError(
        f"the database URL {redact_url(url)} is not a PostgreSQL, MySQL/MariaDB or SQLite URL",
        hint="deployer backs up and migrates PostgreSQL and SQLite databases",
    )


def parse(url: str) -> URL:
    """SQLAlchemy's URL for ``url``; a ConfigError (password hidden) when it is malformed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError) as error:
        raise ConfigError(
            f"the database URL {redact_url(url)} is not valid: {error}",
            hint="use a URL such as postgresql://user:password@db:5432/app",
        ) from None


def driver_url(url: str) -> URL:
    """The URL deployer connects with: PostgreSQL through psycopg2, whatever the app wrote.

    ``postgres://`` (Heroku style) is a scheme SQLAlchemy no longer accepts, and a bare
    ``postgresql://`` means psycopg 3 from SQLAlchemy 2.1 on; deployer ships psycopg2.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    parsed = parse(url)
    if engine_of(url) == POSTGRESQL:
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


_PG_SCHEMES = ("postgres", "postgresql", "pgsql")
_ADDRESS_KEYS = ("user", "password", "host", "port", "dbname")


def pg_params(url: str) -> dict[str, str] | None:
    """libpq's own reading of a PostgreSQL URL: its keywords (``user``, ``password``,
    ``host``, ``port``, ``dbname`` and the query's options), any driver suffix ignored.

    ``None`` when libpq cannot read it (a query argument only SQLAlchemy knows, a scheme
    that is not PostgreSQL's): the caller then goes through SQLAlchemy. Reading a URL this
    way needs psycopg2 only, not SQLAlchemy (0.4 s of imports on the path of ``status``).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0].lower() not in _PG_SCHEMES:
        return None
    credentials, at, _ = rest.partition("@")
    if at and "/" in credentials:
        # An unescaped "/" in the password: SQLAlchemy (as the app) reads it as part of the
        # password, libpq as the end of the host. Only SQLAlchemy's reading is the app's.
        return None
    import psycopg2
    from psycopg2.extensions import parse_dsn

    try:
        return dict(parse_dsn("postgresql://" + rest))
    except psycopg2.Error:
        return None


def pg_url(params: Mapping[str, str]) -> str:
    """The ``postgresql://`` URL of libpq keywords: what libpq, psycopg2 and SQLAlchemy all read."""
    from urllib.parse import quote, urlencode

    user = quote(params.get("user", ""), safe="")
    password = params.get("password")
    credentials = user + (":" + quote(password, safe="") if password is not None else "")
    host = params.get("host", "")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    port = f":{params['port']}" if params.get("port") else ""
    options = {key: value for key, value in params.items() if key not in _ADDRESS_KEYS}
    query = "?" + urlencode(options, quote_via=quote) if options else ""
    at = "@" if credentials else ""
    return f"postgresql://{credentials}{at}{host}{port}/{quote(params.get('dbname', ''), safe='')}{query}"


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for messages and logs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Unparseable: still never echo something that may hold a password.
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def locate(app: AppConfig, env: Environment, compose: ComposeConfig) -> DatabaseLocation:
    """Where the app's database is (see the module docstring). Pure; ConfigError when unknown.

    A configuration problem is reported here, at once: it never becomes a wait for a
    database that cannot answer.
    """
    if env.database_url:
        return DatabaseLocation(env.database_url, engine_of(env.database_url), FROM_CONFIG)
    web = compose.services.get(app.web_service)
    if web is None:
        raise ConfigError(
            f"the compose file has no service {app.web_service!r} (app.web_service); services: "
            + (", ".join(sorted(compose.services)) or "none"),
            hint="set app.web_service in deploy.toml to the service that runs the app",
        )
    names = (app.database_url_variable,) if app.database_url_variable else URL_VARIABLES
    for name in names:
        value = (web.environment.get(name) or "").strip()
        if value:
            return DatabaseLocation(value, engine_of(value), f"{name} of the {app.web_service} service")
    if app.database_url_variable:
        raise ConfigError(
            f"the {app.web_service} service's environment has no {app.database_url_variable} "
            "(app.database_url_variable)",
            hint="set it in the compose file (environment: or env_file:), or set database_url in deploy.toml",
        )
    if not app.has_db_service:
        raise ConfigError(
            f"cannot tell where the database is: the {app.web_service} service sets none of "
            f"{', '.join(URL_VARIABLES)} and app.db_service is empty",
            hint="set environments.NAME.database_url in deploy.toml (e.g. sqlite:////data/app.db)",
        )
    db = compose.services.get(app.db_service)
    if db is None:
        raise ConfigError(
            f"the compose file has no service {app.db_service!r} (app.db_service); services: "
            + (", ".join(sorted(compose.services)) or "none"),
            hint='set app.db_service to the database service, or db_service = "" for SQLite',
        )
    return from_postgres_variables(app.db_service, db.environment, db.image)


def from_postgres_variables(service: str, variables: Mapping[str, str], image: str = "") -> DatabaseLocation:
    """The URL the official postgres image's variables describe, reached at ``service``."""
    user = variables.get("POSTGRES_USER") or "postgres"
    password = variables.get("POSTGRES_PASSWORD") or None
    password_file = variables.get("POSTGRES_PASSWORD_FILE") or None
    trust = variables.get("POSTGRES_HOST_AUTH_METHOD") == "trust"
    if password is None and password_file is None and not trust:
        shown = f" ({image})" if image else ""
        raise ConfigError(
            f"cannot tell how to reach the database: neither the web service's environment names it "
            f"(DATABASE_URL, SQLALCHEMY_DATABASE_URI) nor does the {service} service{shown} set POSTGRES_PASSWORD, "
            "POSTGRES_PASSWORD_FILE or POSTGRES_HOST_AUTH_METHOD=trust",
            hint="set environments.NAME.database_url in deploy.toml, or app.database_url_variable",
        )
    port = int(variables.get("PGPORT") or DEFAULT_PORTS[POSTGRESQL])
    address = {"user": user, "host": service, "port": str(port), "dbname": variables.get("POSTGRES_DB") or user}
    url = pg_url({**address, **({"password": password} if password is not None else {})})
    return DatabaseLocation(url, POSTGRESQL, f"the postgres variables of the {service} service", password_file)
