"""Where the app's database is, as the app itself states it: pure URL logic, no I/O.

The order (:func:`locate`): ``database_url`` in deploy.toml; else the web service's own
environment in the resolved compose config (``DATABASE_URL``, ``SQLALCHEMY_DATABASE_URI``, or
the variable ``[app] database_url_variable`` names); else the variables of the db service's
image: the official postgres image's (``POSTGRES_USER``, ``POSTGRES_PASSWORD`` or
``POSTGRES_PASSWORD_FILE``, ``POSTGRES_DB``, ``POSTGRES_HOST_AUTH_METHOD``), or the official
mariadb and mysql images' (``MARIADB_USER``/``MYSQL_USER`` with ``MARIADB_PASSWORD``/
``MYSQL_PASSWORD``, else root with ``MARIADB_ROOT_PASSWORD``/``MYSQL_ROOT_PASSWORD`` or an
allowed empty root password; each password also as ``*_FILE``; ``MARIADB_DATABASE``/
``MYSQL_DATABASE``).

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
    (``POSTGRES_PASSWORD_FILE``, ``MARIADB_PASSWORD_FILE``, ...); it is read when connecting.
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
        hint="deployer backs up and migrates PostgreSQL, MySQL/MariaDB and SQLite databases",
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
    """The URL deployer connects with: PostgreSQL through psycopg2, MySQL/MariaDB through
    PyMySQL, whatever driver the app wrote.

    ``postgres://`` (Heroku style) is a scheme SQLAlchemy no longer accepts, and a bare
    ``postgresql://`` means psycopg 3 from SQLAlchemy 2.1 on; deployer ships psycopg2. A
    bare ``mysql://`` means mysqlclient, a C extension deployer does not need: it ships
    PyMySQL (pure Python), which speaks to both servers.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    parsed = parse(url)
    engine = engine_of(url)
    if engine == POSTGRESQL:
        parsed = parsed.set(drivername="postgresql+psycopg2")
    elif engine == MYSQL:
        parsed = parsed.set(drivername="mysql+pymysql")
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


def _authority(params: Mapping[str, str]) -> str:
    """``user:password@host:port`` of libpq-style keywords, each part quoted (IPv6 in brackets)."""
    from urllib.parse import quote

    user = quote(params.get("user", ""), safe="")
    password = params.get("password")
    credentials = user + (":" + quote(password, safe="") if password is not None else "")
    host = params.get("host", "")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    port = f":{params['port']}" if params.get("port") else ""
    return f"{credentials}{'@' if credentials else ''}{host}{port}"


def pg_url(params: Mapping[str, str]) -> str:
    """The ``postgresql://`` URL of libpq keywords: what libpq, psycopg2 and SQLAlchemy all read."""
    from urllib.parse import quote, urlencode

    options = {key: value for key, value in params.items() if key not in _ADDRESS_KEYS}
    query = "?" + urlencode(options, quote_via=quote) if options else ""
    return f"postgresql://{_authority(params)}/{quote(params.get('dbname', ''), safe='')}{query}"


# SQLAlchemy's own pattern for a URL (sqlalchemy.engine.url._parse_url), so that deployer
# reads a MySQL URL exactly as the app does, without importing SQLAlchemy (status stays light).
_SQLALCHEMY_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)
_MYSQL_SCHEMES = ("mysql", "mariadb")


def mysql_params(url: str) -> dict[str, str] | None:
    """A MySQL/MariaDB URL read as SQLAlchemy reads it: ``user``, ``password``, ``host``,
    ``port``, ``database`` (those given) and ``charset`` when the query names one; any driver
    suffix ignored. None for another scheme, or a URL SQLAlchemy could not read either."""
    from urllib.parse import parse_qsl, unquote

    match = _SQLALCHEMY_URL.match(url)
    if match is None or match.group("name").split("+", 1)[0].lower() not in _MYSQL_SCHEMES:
        return None
    parts = match.groupdict()
    params: dict[str, str] = {}
    for key, name in (("username", "user"), ("password", "password"), ("database", "database")):
        if parts[key] is not None:
            params[name] = unquote(parts[key])
    host = parts["ipv4host"] or parts["ipv6host"]
    if host:
        params["host"] = host
    if parts["port"]:
        if not parts["port"].isdigit():
            return None
        params["port"] = parts["port"]
    for key, value in parse_qsl(parts["query"] or ""):
        if key == "charset":
            params["charset"] = value
    return params


def mysql_url(params: Mapping[str, str]) -> str:
    """The ``mysql+pymysql://`` URL of :func:`mysql_params`' keywords: what SQLAlchemy and
    :func:`mysql_params` read back the same."""
    from urllib.parse import quote

    query = f"?charset={quote(params['charset'], safe='')}" if params.get("charset") else ""
    return f"mysql+pymysql://{_authority(params)}/{quote(params.get('database', ''), safe='')}{query}"


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
    if is_mysql_service(db.environment, db.image):
        return from_mysql_variables(app.db_service, db.environment, db.image)
    return from_postgres_variables(app.db_service, db.environment, db.image)


_MYSQL_IMAGE = re.compile(r"mysql|mariadb|percona")


def is_mysql_service(variables: Mapping[str, str], image: str = "") -> bool:
    """Whether a db service runs MySQL or MariaDB: by the official images' variables (a
    ``MARIADB_*`` or ``MYSQL_*`` one, and no ``POSTGRES_*``), else by its image's name."""
    if any(name.startswith("POSTGRES_") for name in variables):
        return False
    if any(name.startswith(("MARIADB_", "MYSQL_")) for name in variables):
        return True
    repository = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0].lower()
    return bool(_MYSQL_IMAGE.search(repository))


def _mysql_variable(variables: Mapping[str, str], name: str) -> tuple[str | None, str | None]:
    """``MARIADB_<name>`` else ``MYSQL_<name>`` (the official mariadb image reads both, the
    mysql image the second): (its value, or the file its ``_FILE`` form names)."""
    for prefix in ("MARIADB_", "MYSQL_"):
        value = variables.get(prefix + name) or None
        file = variables.get(prefix + name + "_FILE") or None
        if value is not None or file is not None:
            return value, None if value is not None else file
    return None, None


def from_mysql_variables(service: str, variables: Mapping[str, str], image: str = "") -> DatabaseLocation:
    """The URL the official mariadb/mysql images' variables describe, reached at ``service``.

    The app's user when the variables create one (``MARIADB_USER`` or ``MYSQL_USER``, with its
    password): it owns the database and is what the app logs in as; else root, with
    ``MARIADB_ROOT_PASSWORD``/``MYSQL_ROOT_PASSWORD`` (or its ``_FILE``) or an empty password
    the variables allow. A random root password is not known to anyone but the server's log.
    """
    shown = f" ({image})" if image else ""
    database, database_file = _mysql_variable(variables, "DATABASE")
    if database is None:
        if database_file is not None:
            raise ConfigError(
                f"the {service} service{shown} names its database in a file ({database_file}): deployer reads only "
                "passwords from files", hint="set environments.NAME.database_url in deploy.toml")
        raise ConfigError(
            f"cannot tell which database to use: neither the web service's environment names it (DATABASE_URL, "
            f"SQLALCHEMY_DATABASE_URI) nor does the {service} service{shown} set MARIADB_DATABASE or MYSQL_DATABASE",
            hint="set environments.NAME.database_url in deploy.toml, or app.database_url_variable",
        )
    user, user_file = _mysql_variable(variables, "USER")
    if user_file is not None and user is None:
        raise ConfigError(
            f"the {service} service{shown} names its user in a file ({user_file}): deployer reads only passwords "
            "from files", hint="set environments.NAME.database_url in deploy.toml")
    if user is not None and user != "root":
        password, password_file = _mysql_variable(variables, "PASSWORD")
        if password is None and password_file is None:
            raise ConfigError(
                f"the {service} service{shown} sets the user {user} without MARIADB_PASSWORD or MYSQL_PASSWORD "
                "(or their _FILE)", hint="set environments.NAME.database_url in deploy.toml")
    else:
        user = "root"
        password, password_file = _mysql_variable(variables, "ROOT_PASSWORD")
        empty = any((variables.get(name) or "").strip() for name in (
            "MARIADB_ALLOW_EMPTY_ROOT_PASSWORD", "MYSQL_ALLOW_EMPTY_PASSWORD"))
        if password is None and password_file is None and not empty:
            raise ConfigError(
                f"cannot tell how to reach the database: the {service} service{shown} creates no user "
                "(MARIADB_USER / MYSQL_USER) and root's password is not in its variables (MARIADB_ROOT_PASSWORD, "
                "MYSQL_ROOT_PASSWORD or their _FILE; a random root password is known only to the server's log)",
                hint="set environments.NAME.database_url in deploy.toml, or app.database_url_variable",
            )
    port = variables.get("MYSQL_TCP_PORT") or str(DEFAULT_PORTS[MYSQL])
    params = {"user": user, "host": service, "port": port, "database": database, "charset": "utf8mb4"}
    url = mysql_url({**params, **({"password": password} if password is not None else {})})
    return DatabaseLocation(url, MYSQL, f"the {_flavour(variables, image)} variables of the {service} service",
                            password_file)


def _flavour(variables: Mapping[str, str], image: str) -> str:
    if any(name.startswith("MARIADB_") for name in variables) or "mariadb" in image.lower():
        return "mariadb"
    return "mysql"


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
