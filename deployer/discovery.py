"""What an app's repository says about how to deploy it, read from its files (``deployer init``).

Pure reading, nothing runs: the compose files of a directory, the services they define
(which one is the web app — it is built, publishes a port, runs flask or gunicorn — and
which one the database — a postgres, mysql or mariadb image, or SQLite in a URL), the
migrations directory (``env.py`` with ``versions/``; Flask-Migrate or plain alembic), the
health page (the service's healthcheck, the Dockerfile's, or a route in the code) and the
variables the compose file reads. What cannot be told is left as a :class:`Choice` for the
command line to ask about (or to refuse without a terminal, naming its flag).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, cast

from deployer.commands import compose as composition
from deployer.errors import ConfigError

# Production compose files first: a repository with docker-compose.yml (development) and
# docker-compose.prod.yml deploys the latter.
PRODUCTION_FILES = tuple(f"{stem}.{kind}.{ext}" for stem in ("docker-compose", "compose")
                         for kind in ("prod", "production") for ext in ("yml", "yaml"))
DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
# Compose files that are not what runs in production.
_NOT_PRODUCTION = re.compile(r"(override|dev|development|local|test|ci|debug)", re.IGNORECASE)
_SKIPPED_DIRS = frozenset({".git", ".hg", "node_modules", ".venv", "venv", "env", "__pycache__", ".tox", ".mypy_cache",
                           ".pytest_cache", "site-packages", "build", "dist"})
_WEB_NAMES = frozenset({"web", "app", "api", "flask", "site", "server", "backend", "www", "frontend"})
_WSGI = re.compile(r"\b(flask|gunicorn|uwsgi|waitress|hypercorn|uvicorn|wsgi)\b")
# By the image's name (its repository, any registry or tag): postgres:15, postgis/postgis,
# timescale/timescaledb, bitnami/mariadb, mysql:8, percona/percona-server.
_ENGINES = (("postgresql", re.compile(r"postgres|postgis|timescale")), ("mariadb", re.compile(r"mariadb")),
            ("mysql", re.compile(r"mysql|percona")))
_URL_SCHEMES = re.compile(r"^(postgres|postgresql|mysql|mariadb|sqlite)(\+\w+)?://", re.IGNORECASE)
_HEALTH_WORDS = ("health", "healthz", "status", "ping", "ready", "alive", "up")
_ROUTE = re.compile(r"""\.(?:route|get)\(\s*['"](/[\w\-./]*)['"]""")
_URL_IN_TEXT = re.compile(r"""https?://[^/\s'"]+(/[^\s'"),;]*)""")
_MAX_SOURCES = 3000


@dataclass(frozen=True)
class Choice:
    """Something only the user can settle: ``what`` (the flag names it), the ``options``
    found (maybe none), and why it is open."""

    what: str
    flag: str
    reason: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Service:
    """A service of the compose file, its values interpolated as compose would."""

    name: str
    image: str = ""
    build_context: str | None = None  # relative to the repository root (posix), "." for the root
    dockerfile: str | None = None  # relative to the repository root
    command: str = ""  # what it runs: its command, else its Dockerfile's CMD / ENTRYPOINT
    ports: tuple[composition.PublishedPort, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    healthcheck: str = ""


@dataclass(frozen=True)
class Migrations:
    directory: str  # relative to the repository root
    command: str  # what upgrades the schema, run in the web container
    flask_migrate: bool


@dataclass(frozen=True)
class Discovery:
    """What the repository at ``root`` tells; ``choices`` are what it does not."""

    root: Path
    compose_files: tuple[str, ...]  # every compose file of the directory
    compose_file: str | None
    services: Mapping[str, Service] = field(default_factory=dict)
    web: Service | None = None
    db: Service | None = None  # None: no database service (see engine)
    engine: str | None = None  # postgresql | mysql | mariadb | sqlite | None (not found)
    database_url_variable: str | None = None  # the web variable with the URL, when not a standard name
    migrations: Migrations | None = None
    health_path: str | None = None
    health_source: str = ""
    variables: tuple[composition.Variable, ...] = ()  # what the compose file reads (first of each name)
    dotenv: Mapping[str, str] = field(default_factory=dict)  # the directory's .env
    name: str = ""  # the compose file's top-level name
    choices: tuple[Choice, ...] = ()

    @property
    def health_url(self) -> str | None:
        """The health page as seen from the host: where the web service publishes its port."""
        return self.url(self.health_path) if self.health_path is not None else None

    def url(self, path: str) -> str | None:
        """``path`` of the web service, as seen from the host (None: it publishes no port)."""
        port = next((p for p in self.web.ports if p.published), None) if self.web is not None else None
        if port is None:
            return None
        address = port.host_ip if port.host_ip not in ("", "0.0.0.0", "::", "[::]") else "127.0.0.1"
        return f"http://{address}:{port.published}{path}"


def discover(root: Path, *, compose_file: str | None = None, web_service: str | None = None, db_service: str | None = None,
             migrations_dir: str | None = None, values: Mapping[str, str] | None = None) -> Discovery:
    """Read the repository at ``root``; the keyword arguments settle what the user already
    said (``db_service=""``: none). ``values`` are compose variables the environment will
    set (ports, image names): the compose file is interpolated with them, defaults else."""
    root = root.resolve()
    choices: list[Choice] = []
    files = compose_candidates(root)
    chosen = compose_file if compose_file is not None else _pick_compose_file(files, choices)
    if chosen is None:
        return Discovery(root=root, compose_files=files, compose_file=None, choices=tuple(choices))
    path = root / chosen
    try:
        raw = composition.read_file(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{chosen}: no such file", hint="name a compose file of this directory with --compose-file") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{chosen}: {error}", hint="fix the compose file (`docker compose config` shows where)") from None
    dotenv = read_dotenv(root / ".env")
    found: list[composition.Variable] = []
    data = cast(dict[str, Any], composition.interpolate_tree(raw, {**dotenv, **(values or {})}, found))
    services = {str(name): _service(root, str(name), body or {}) for name, body in data["services"].items()}

    web = _pick(services, web_service, "web service", "--web-service", choices, _web_candidates)
    db = _pick(services, db_service, "database service", "--db-service", choices,
               lambda all_: [s for s in all_.values() if _engine_of_image(s.image)])
    engine = _engine_of_image(db.image) if db is not None else None
    url_variable = None
    if web is not None:
        url_name, url = _database_url(web)
        if url_name and url_name not in ("DATABASE_URL", "SQLALCHEMY_DATABASE_URI"):
            url_variable = url_name
        if db is None and url and url.lower().startswith("sqlite"):
            engine = "sqlite"
    if db is None and engine is None and db_service is None and not any(c.flag == "--db-service" for c in choices):
        choices.append(Choice("database service", "--db-service",
                              "no service runs a postgres, mysql or mariadb image, and the web service names no SQLite URL",
                              tuple(sorted(services))))

    migrations = _migrations(root, web, migrations_dir, choices)
    health_path, source = _health(root, web) if web is not None else (None, "")
    first: dict[str, composition.Variable] = {}
    for variable in found:
        first.setdefault(variable.name, variable)
    return Discovery(
        root=root, compose_files=files, compose_file=chosen, services=services, web=web, db=db, engine=engine,
        database_url_variable=url_variable, migrations=migrations, health_path=health_path, health_source=source,
        variables=tuple(first.values()), dotenv=dotenv, name=str(data.get("name") or ""), choices=tuple(choices),
    )


# --- compose files --------------------------------------------------------------------------


def compose_candidates(root: Path) -> tuple[str, ...]:
    """The compose files of ``root`` (not of its sub-directories), production ones first."""
    names = sorted(p.name for p in root.iterdir() if p.is_file() and re.fullmatch(r"(docker-)?compose[\w.-]*\.ya?ml", p.name))
    order = {name: i for i, name in enumerate((*PRODUCTION_FILES, *DEFAULT_FILES))}
    return tuple(sorted(names, key=lambda n: (order.get(n, len(order)), n)))


def _pick_compose_file(files: tuple[str, ...], choices: list[Choice]) -> str | None:
    production = [f for f in files if f in PRODUCTION_FILES]
    default = [f for f in files if f in DEFAULT_FILES]
    other = [f for f in files if f not in PRODUCTION_FILES and f not in DEFAULT_FILES and not _NOT_PRODUCTION.search(f)]
    for group in (production, default, other):
        if len(group) == 1:
            return group[0]
        if len(group) > 1:
            choices.append(Choice("compose file", "--compose-file", f"several compose files could be production's: "
                                  f"{', '.join(group)}", tuple(group)))
            return None
    choices.append(Choice("compose file", "--compose-file",
                          "no compose file here (docker-compose.yml, compose.yaml, docker-compose.prod.yml, ...)"
                          + (f"; found only {', '.join(files)}" if files else ""), files))
    return None


def _service(root: Path, name: str, body: Mapping[str, Any]) -> Service:
    build = body.get("build")
    context = dockerfile = None
    if isinstance(build, str):
        build = {"context": build}
    if isinstance(build, dict):
        context = _relative(str(build.get("context") or "."))
        dockerfile = _relative(str(PurePosixPath(context) / str(build.get("dockerfile") or "Dockerfile")))
    command = _words(body.get("entrypoint")) + " " + _words(body.get("command"))
    if not command.strip() and dockerfile:
        command = _dockerfile_command(root / dockerfile)
    environment = body.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(str(item).partition("=")[::2] for item in environment)
    healthcheck = body.get("healthcheck") or {}
    return Service(
        name=name, image=str(body.get("image") or ""), build_context=context, dockerfile=dockerfile,
        command=command.strip(), ports=composition.published_ports(body.get("ports") or ()),
        environment={str(k): "" if v is None else str(v) for k, v in environment.items()},
        healthcheck=_words(healthcheck.get("test")) if isinstance(healthcheck, dict) else "",
    )


def _relative(path: str) -> str:
    """A build path as it is in the repository: ``./src`` -> ``src``, ``.`` stays."""
    return PurePosixPath(os.path.normpath(path.replace("\\", "/"))).as_posix()


def _words(value: object) -> str:
    if isinstance(value, list):
        return " ".join(str(word) for word in value)
    return str(value) if value else ""


def _dockerfile_command(path: Path) -> str:
    """The last CMD and ENTRYPOINT of a Dockerfile (continuation lines joined)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    found: dict[str, str] = {}
    for line in re.sub(r"\\\n", " ", text).splitlines():
        match = re.match(r"\s*(CMD|ENTRYPOINT)\s+(.*)", line, re.IGNORECASE)
        if match:
            found[match.group(1).upper()] = _instruction_words(match.group(2).strip())
    return " ".join(found.get(key, "") for key in ("ENTRYPOINT", "CMD")).strip()


def _instruction_words(value: str) -> str:
    """A CMD / ENTRYPOINT as words: the exec form (a JSON array) or the shell form."""
    if value.startswith("["):
        try:
            words = json.loads(value)
        except ValueError:
            return value
        if isinstance(words, list):
            return " ".join(str(word) for word in words)
    return value


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file as compose reads them (comments, ``export``, quotes)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            values[key.strip()] = value
    return values


# --- services ------------------------------------------------------------------------------


def _web_candidates(services: Mapping[str, Service]) -> list[Service]:
    """The services that look most like the web app (built, publishing a port, serving WSGI)."""
    def score(service: Service) -> int:
        if _engine_of_image(service.image):
            return 0
        points = 3 * bool(service.build_context) + 2 * bool(service.ports) + 2 * bool(_WSGI.search(service.command.lower()))
        if not points:
            return 0
        return points + (service.name.lower() in _WEB_NAMES)

    scored = sorted(((score(s), s.name, s) for s in services.values() if score(s) > 0), key=lambda t: (-t[0], t[1]))
    return [s for points, _, s in scored if points == scored[0][0]] if scored else []


def _pick(services: Mapping[str, Service], given: str | None, what: str, flag: str, choices: list[Choice],
          candidates: Callable[[Mapping[str, Service]], list[Service]]) -> Service | None:
    """The service ``given`` (checked), else the only candidate; several or none: a choice."""
    if given is not None:
        if given == "":
            return None
        if given not in services:
            raise ConfigError(f"{flag} {given}: the compose file has no such service",
                              hint=f"its services: {', '.join(sorted(services))}")
        return services[given]
    found = candidates(services)
    if len(found) == 1:
        return found[0]
    if found:
        choices.append(Choice(what, flag, f"several services could be the {what}: {', '.join(s.name for s in found)}",
                              tuple(s.name for s in found)))
    elif what == "web service":
        choices.append(Choice(what, flag, "no service is built, publishes a port and runs flask or gunicorn",
                              tuple(sorted(services))))
    return None


def _engine_of_image(image: str) -> str | None:
    reference = image.lower().rsplit("@", 1)[0]
    return next((engine for engine, pattern in _ENGINES if pattern.search(reference)), None)


def _database_url(web: Service) -> tuple[str | None, str | None]:
    """The web service's variable holding a database URL (the standard names first)."""
    for name in ("DATABASE_URL", "SQLALCHEMY_DATABASE_URI"):
        if name in web.environment:
            return name, web.environment[name]
    for name, value in sorted(web.environment.items()):
        if _URL_SCHEMES.match(value):
            return name, value
    return None, None


# --- migrations -----------------------------------------------------------------------------


def _walk(top: Path) -> Iterator[Path]:
    """Directories under ``top`` (itself first), skipping virtualenvs, caches and VCS data."""
    for directory, subdirectories, _ in os.walk(top):
        subdirectories[:] = sorted(d for d in subdirectories if d not in _SKIPPED_DIRS and not d.startswith("."))
        yield Path(directory)


def migration_dirs(top: Path) -> list[Path]:
    """Alembic script directories under ``top``: an ``env.py`` beside ``versions/`` or ``script.py.mako``."""
    return [d for d in _walk(top) if (d / "env.py").is_file() and ((d / "versions").is_dir() or (d / "script.py.mako").is_file())]


def _migrations(root: Path, web: Service | None, given: str | None, choices: list[Choice]) -> Migrations | None:
    context = root / web.build_context if web is not None and web.build_context else None
    if given is not None:
        directory = root / given
        if not (directory / "env.py").is_file():
            raise ConfigError(f"--migrations-dir {given}: no env.py there (an alembic scripts directory has one)")
        found = [directory]
    else:
        found = migration_dirs(context) if context is not None and context.is_dir() else []
        found = found or migration_dirs(root)
    if len(found) != 1:
        names = tuple(d.relative_to(root).as_posix() for d in found)
        reason = (f"several alembic directories: {', '.join(names)}" if found
                  else "no alembic directory (an env.py beside versions/) in the repository")
        choices.append(Choice("migrations directory", "--migrations-dir", reason, names))
        return None
    directory = found[0]
    relative = directory.relative_to(root).as_posix()
    env_py = (directory / "env.py").read_text(encoding="utf-8", errors="replace")
    flask_migrate = (directory / "alembic.ini").is_file() or "current_app" in env_py or "flask" in env_py
    base = context if context is not None and directory.is_relative_to(context) else root
    inside = directory.relative_to(base).as_posix()
    if flask_migrate:
        command = "flask db upgrade" if inside == "migrations" else f"flask db upgrade --directory {shlex.quote(inside)}"
        return Migrations(relative, command, True)
    ini = _alembic_ini(base, directory)
    config = "" if ini is None or ini == base / "alembic.ini" else f" -c {shlex.quote(ini.relative_to(base).as_posix())}"
    return Migrations(relative, f"alembic{config} upgrade head", False)


def _alembic_ini(base: Path, directory: Path) -> Path | None:
    """The alembic.ini whose ``script_location`` is ``directory`` (plain alembic)."""
    for ini in sorted(base.rglob("alembic.ini")):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(ini, encoding="utf-8")
            location = parser.get("alembic", "script_location", fallback="")
        except (configparser.Error, UnicodeDecodeError):
            continue
        location = location.replace("%(here)s", str(ini.parent))
        if location and (ini.parent / location).resolve() == directory.resolve():
            return ini
    return None


# --- the health page ------------------------------------------------------------------------


def _health(root: Path, web: Service) -> tuple[str | None, str]:
    """A path that answers when the app is healthy, and where it was found."""
    for text, source in ((web.healthcheck, f"the {web.name} service's healthcheck"),
                         (_dockerfile_health(root, web), "its Dockerfile's HEALTHCHECK")):
        for match in _URL_IN_TEXT.finditer(text):
            if match.group(1) not in ("", "/"):
                return match.group(1), source
    if web.build_context is None:
        return None, ""
    context = root / web.build_context
    routes: list[tuple[int, str, str]] = []
    for count, path in enumerate(_sources(context)):
        if count >= _MAX_SOURCES:
            break
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for match in _ROUTE.finditer(text):
            route = match.group(1)
            last = route.rstrip("/").rsplit("/", 1)[-1].lower()
            if last in _HEALTH_WORDS:
                rank = _HEALTH_WORDS.index(last)
                routes.append((rank, route, path.relative_to(root).as_posix()))
    if not routes:
        return None, ""
    _, route, where = min(routes)
    return route, f"the route in {where}"


def _dockerfile_health(root: Path, web: Service) -> str:
    if not web.dockerfile:
        return ""
    try:
        text = (root / web.dockerfile).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " ".join(line for line in re.sub(r"\\\n", " ", text).splitlines() if line.strip().upper().startswith("HEALTHCHECK"))


def _sources(top: Path) -> Iterator[Path]:
    for directory in _walk(top):
        if directory.name in ("migrations", "tests", "test"):
            continue
        yield from sorted(directory.glob("*.py"))
