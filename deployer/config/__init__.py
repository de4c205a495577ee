"""``deploy.toml``: found, parsed, interpolated and validated once, then frozen typed objects.

Validation happens in private pydantic models that mirror the file (strict types: TOML has
its own, so ``"10"`` is not an integer and ``true`` is not a number). Every problem becomes
one line ``FILE: key.path: expected ..., got ...`` of a single :class:`ConfigError`. The rest
of deployer only sees the frozen dataclasses below.
"""

from __future__ import annotations

import difflib
import json
import os
import posixpath
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from deployer.config.interpolate import (
    REDACTED,
    InterpolationError,
    interpolate_tree,
    looks_secret,
    mask_url_password,
    redact,
    url_password,
)
from deployer.errors import ConfigError
from deployer.hosts.spec import HostSpec, parse_host

__all__ = ["AppConfig", "BackupCopy", "Config", "Environment", "HostEntry", "ProxyConfig", "Rollout", "find_config", "load_config", "redact", "show_config"]

CONFIG_FILENAME = "deploy.toml"
_HINT = f"create a {CONFIG_FILENAME} at the repository root (see docs/configuration.md), or pass --config PATH"


@dataclass(frozen=True)
class AppConfig:
    """The ``[app]`` table: what is deployed, the same in every environment."""

    name: str
    compose_file: str
    web_service: str
    db_service: str
    migrations_dir: str
    migrate_command: tuple[str, ...]
    migrate_timeout: float
    branch: str
    # The variable of the web service's environment that holds the database URL, when it is
    # neither DATABASE_URL nor SQLALCHEMY_DATABASE_URI.
    database_url_variable: str | None = None

    @property
    def has_db_service(self) -> bool:
        """False for an app without a database container (SQLite in a volume): ``db_service = ""``."""
        return bool(self.db_service)


@dataclass(frozen=True)
class ProxyConfig:
    """An ``[environments.NAME.proxy]`` table: the proxy deployer runs in front of the web
    service, which then publishes no port of its own (see docs/zero-downtime.md)."""

    listen: str | None = None  # where the proxy publishes on the host: "80", "127.0.0.1:8000";
    # None: where the web service's compose file publishes it
    web_port: int | None = None  # the web service's port inside its container; None: from its `ports`
    image: str = "haproxy:2.6"
    mode: str = "auto"  # auto | overlap | pause (see deployer.proxy.modes)
    pause_timeout: float = 10.0  # seconds a request may be held in pause mode
    drain_timeout: float = 30.0  # seconds the old container gets to finish its requests


@dataclass(frozen=True)
class HostEntry:
    """One of an environment's hosts: where it is, the compose services it runs (empty:
    all), and whether it is the primary (the one host that takes the backup and migrates)."""

    spec: HostSpec
    roles: tuple[str, ...] = ()
    primary: bool = False
    # Variables for this host only, over the environment's ``env`` (e.g. where the database
    # that runs on the primary is, seen from here).
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    def __str__(self) -> str:
        return str(self.spec)


@dataclass(frozen=True)
class BackupCopy:
    """Where ``backup_copy`` keeps a second copy of every backup: ``local:DIR`` on the machine
    running deployer, or ``host:HOST:DIR`` on another host reached over SSH."""

    where: str  # as written in deploy.toml, e.g. "local:~/backups/shop"
    directory: str  # local: absolute, with ~ expanded when used; host: absolute on that host
    host: HostSpec | None = None  # None: this machine

    @property
    def is_local(self) -> bool:
        return self.host is None

    @property
    def label(self) -> str:
        """How listings name it: ``local`` or the host."""
        return "local" if self.host is None else str(self.host)

    def __str__(self) -> str:
        return self.where


def parse_backup_copy(value: str) -> BackupCopy:
    """``local:DIR`` or ``host:HOST:DIR`` -> :class:`BackupCopy`; ValueError says what is wrong."""
    kind, _, rest = value.partition(":")
    if kind == "local":
        if not (rest.startswith("/") or rest.startswith("~/")) or ".." in PurePosixPath(rest).parts:
            raise ValueError('the directory of "local:DIR" must be absolute (or start with ~/) and contain no ".." '
                             "(a directory inside the repository could be committed with the dumps in it)")
        return BackupCopy(value, posixpath.normpath(rest) if rest.startswith("/") else rest.rstrip("/"))
    if kind == "host":
        host, separator, directory = rest.partition(":/")
        if not separator or not host:
            raise ValueError('expected "host:HOST:DIR" with an absolute DIR (e.g. "host:deploy@backup.example.com:/srv/backups")')
        directory = "/" + directory
        if ".." in PurePosixPath(directory).parts:
            raise ValueError('the directory of "host:HOST:DIR" must contain no ".."')
        spec = parse_host(host)
        if spec.is_local:
            raise ValueError('"host:local:DIR" is this machine: write "local:DIR"')
        return BackupCopy(value, posixpath.normpath(directory), spec)
    raise ValueError('expected "local:DIR" (on the machine running deployer) or "host:HOST:DIR" (on another host)')


@dataclass(frozen=True)
class Rollout:
    """How the switch rolls across hosts: ``batch`` hosts at a time, ``pause`` seconds between
    batches, each batch healthy before the next starts."""

    batch: int = 1
    pause: float = 0.0


@dataclass(frozen=True)
class Environment:
    """One ``[environments.NAME]`` table, defaults filled in (``branch`` falls back to the app's)."""

    name: str
    host: HostSpec
    path: str
    healthcheck_url: str | None
    backup_dir: str
    keep_backups: int
    playbook: str
    health_timeout: float
    branch: str
    remote: str | None
    env: Mapping[str, str] = field(repr=False)  # may hold secrets: kept out of repr
    database_url: str | None = field(default=None, repr=False)
    # deployer's own files on the host (journal, lock, step log, the compose env file):
    # outside the checkout, so no `COPY . .` bakes them into an image.
    state_dir: str = ""
    healthcheck_command: tuple[str, ...] | None = None  # run in the new web container
    healthcheck_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    healthcheck_status: tuple[int, ...] = ()  # empty: any 2xx
    healthcheck_body: str | None = None  # text the health page must contain
    proxy: ProxyConfig | None = None  # None: no proxy; the web service publishes its port
    # PostgreSQL: how long a migration's statement may wait for a lock (0: no limit), and
    # how many times a migration that gave up waiting is tried again.
    lock_timeout: float = 10.0
    lock_retries: int = 3
    # The migration safety gate (see deployer.db.lint): what a finding on a table of at least
    # ``lint_min_rows`` rows (or one that breaks the running code at any size) does to a release.
    migration_policy: Literal["refuse", "confirm", "warn"] = "confirm"
    lint_min_rows: int = 10_000
    # Every host, the primary first (``host`` is the primary's); one entry for ``host = ...``.
    hosts: tuple[HostEntry, ...] = ()
    rollout: Rollout = field(default_factory=Rollout)
    # What runs the services: docker compose on each host, or Docker Swarm across the hosts
    # (the nodes of one swarm; the primary a manager). See docs/swarm.md.
    engine: Literal["compose", "swarm"] = "compose"
    # How many of the newest successful releases keep their images for a rollback (the one
    # that runs is kept too); a release prunes the others' after it is journaled.
    keep_releases: int = 5
    # Where every backup is copied besides backup_dir (deployer.server.copies).
    backup_copies: tuple[BackupCopy, ...] = ()

    @property
    def many_hosts(self) -> bool:
        """Several hosts, each running its services with compose (on Swarm the hosts are the
        nodes of one swarm, and commands act on the primary, a manager: see :attr:`swarm`)."""
        return len(self.hosts) > 1 and not self.swarm

    @property
    def swarm(self) -> bool:
        return self.engine == "swarm"

    @property
    def nodes(self) -> tuple[HostEntry, ...]:
        """On Swarm, the hosts other than the primary: they receive the release's images."""
        return self.hosts[1:] if self.swarm else ()

    def on(self, entry: HostEntry) -> Environment:
        """This environment as one of its hosts sees it: that host, its variables over the
        environment's."""
        return replace(self, host=entry.spec, env=MappingProxyType({**self.env, **entry.env}))


@dataclass(frozen=True)
class Config:
    """A loaded deploy.toml. ``root`` is the directory holding it: the repository root.

    ``environments`` holds the usable environments; one that needs an environment variable
    that is not set is in ``unresolved`` (name -> error) instead, so that a missing secret of
    production does not stop a local release. :meth:`environment` raises that error.
    """

    path: Path
    root: Path
    app: AppConfig
    environments: Mapping[str, Environment]
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    unresolved: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @property
    def environment_names(self) -> tuple[str, ...]:
        """Every environment in the file, usable or not, sorted."""
        return tuple(sorted({*self.environments, *self.unresolved}))

    def environment(self, name: str) -> Environment:
        """The environment called ``name``; a ConfigError if it is unknown or unresolved."""
        if name in self.environments:
            return self.environments[name]
        if name in self.unresolved:
            raise ConfigError(self.unresolved[name])
        names = self.environment_names
        raise ConfigError(
            f"{_display(self.path)}: unknown environment {json.dumps(name)}; "
            f"known environments: {', '.join(names)}{_suggest(name, names)}",
            hint=f"use one of them, or add an [environments.{name}] table",
        )

    def redact(self, text: str) -> str:
        """``text`` with every secret of this configuration replaced by ``***``."""
        return redact(text, self.secrets)


def default_state_dir(path: str) -> str:
    """Where deployer keeps its files for a checkout at ``path``: beside it, never inside it.

    ``/srv/recipes`` -> ``/srv/recipes.deployer``. Inside the checkout they would be in the
    docker build context of every app built from ``.``, and a ``COPY . .`` would bake the
    secrets and the database dumps into the image.
    """
    return posixpath.normpath(path).rstrip("/") + ".deployer"


def find_config(start: Path) -> Path:
    """The nearest ``deploy.toml`` in ``start`` or one of its parents."""
    start = Path(os.path.abspath(start))
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_FILENAME
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no {CONFIG_FILENAME} found in {start} or any parent directory", hint=_HINT)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    cwd: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load and validate ``path`` (relative to ``cwd``), or the deploy.toml found from ``cwd`` up.

    ``${VAR}`` references are resolved from ``environ`` (default: the process environment).
    Raises one :class:`ConfigError` describing every problem found in the file.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    file = Path(os.path.abspath(base / path)) if path is not None else find_config(base)
    shown = _display(file, base)
    raw = _read_toml(file, shown)
    environ = os.environ if environ is None else environ
    try:
        # A missing variable inside an environment only matters when that environment is used.
        resolved = interpolate_tree(raw, environ, defer=lambda path: path[0] == "environments" and len(path) > 2)
    except InterpolationError as error:
        raise ConfigError(f"{shown}: {_key_path(error.path)}: {error.message}") from None
    try:
        _File.model_validate(resolved.data)
    except ValidationError as error:
        problems = [f"{shown}: {_describe_error(e)}" for e in error.errors()
                    if tuple(map(str, e["loc"])) not in resolved.deferred]
        if problems:
            raise ConfigError(redact("\n".join(problems), resolved.secrets, 1),
                              hint="every key is described in docs/configuration.md") from None
    unresolved: dict[str, str] = {}
    for where, problem in resolved.deferred.items():
        line, name = f"{shown}: {_key_path(where)}: {problem.message}", where[1]
        unresolved[name] = f"{unresolved[name]}\n{line}" if name in unresolved else line
    # The whole file is valid but for deferred strings: each usable part validates alone.
    app = _App.model_validate(resolved.data["app"])
    environments = {name: _Environment.model_validate(table)
                    for name, table in resolved.data["environments"].items() if name not in unresolved}
    return _build(file, app, environments, resolved.secrets, unresolved)


def show_config(config: Config, env_name: str) -> dict[str, Any]:
    """The resolved app + environment ``env_name``, shaped like deploy.toml, secrets as ``***``.

    Unset optional keys are left out. Hidden: every value that came from a ``${VAR}``, the
    value of any env key that looks like a password/secret/token, and passwords in URLs.
    """
    environment = config.environment(env_name)
    body = {k: v for k, v in _plain(environment).items() if k != "name" and v is not None}
    if len(environment.hosts) > 1:
        del body["host"]  # the primary, which hosts shows first
    else:
        del body["hosts"], body["rollout"]
    body["env"] = {k: REDACTED if looks_secret(k) else v for k, v in environment.env.items()}
    body.update({k: mask_url_password(body[k]) for k in ("database_url", "remote") if k in body})
    shown = {"app": _plain(config.app), "environments": {env_name: body}}
    return {key: _redact_tree(value, config.secrets) for key, value in shown.items()}


# --- reading ---------------------------------------------------------------------------


def _read_toml(file: Path, shown: str) -> dict[str, Any]:
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such file", hint=_HINT) from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{shown}: not UTF-8 text (invalid byte at offset {error.start})",
                          hint="TOML files are UTF-8; re-save it with that encoding") from None
    except OSError as error:
        raise ConfigError(f"{shown}: cannot read the file: {error.strerror or error}",
                          hint="check that the path names a readable file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(_toml_syntax_message(shown, text, str(error)),
                          hint="TOML syntax: https://toml.io/en/v1.0.0") from None


def _toml_syntax_message(shown: str, text: str, reason: str) -> str:
    """``FILE:LINE:COL: invalid TOML: reason`` plus the line and a caret under the column."""
    where = re.search(r" \(at line (\d+), column (\d+)\)$", reason)
    if where is None:
        return f"{shown}: invalid TOML: {reason}"
    line, column = int(where.group(1)), int(where.group(2))
    source = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
    return (f"{shown}:{line}:{column}: invalid TOML: {reason[: where.start()]}\n"
            f"    {source}\n    {' ' * (column - 1)}^")


# --- the schema (private: the file's shape, with strict types) ---------------------------


class _Invalid(ValueError):
    """A value of the right type that breaks a rule; reported as ``expected ..., got ... (why)``."""


def _check_relative(value: str) -> str:
    pure = PurePosixPath(value)
    if not value or pure.is_absolute() or ".." in pure.parts:
        raise _Invalid("it must stay inside the repository: not absolute, no '..'")
    return value


def _check_absolute(value: str) -> str:
    pure = PurePosixPath(value)
    if not pure.is_absolute() or ".." in pure.parts:
        raise _Invalid("it must start with '/' and contain no '..'")
    return posixpath.normpath(value)


def _check_branch(value: str) -> str:
    if (not re.fullmatch(r"[A-Za-z0-9._/-]+", value) or value.startswith(("-", "/", "."))
            or value.endswith(("/", ".lock", ".")) or ".." in value or "//" in value):
        raise _Invalid("not a valid git branch name")
    return value


def _check_host(value: str) -> str:
    parse_host(value)  # its ValueError is already a full sentence
    return value


def _check_command(value: str) -> str:
    try:
        argv = shlex.split(value)
    except ValueError as error:  # shlex: "No closing quotation" / "No escaped character"
        raise _Invalid(str(error).lower()) from None
    if not argv:
        raise _Invalid("it is empty")
    return value


def _check_single_line(value: str) -> str:
    if "\n" in value or "\r" in value:  # compose env files hold one variable per line
        raise _Invalid("it holds a line break, which a compose env file cannot carry")
    return value


def _check_remote(value: str) -> str:
    # The value ends up in git's argv: a leading "-" would be read as an option.
    if not value or value.startswith("-") or re.search(r"\s", value):
        raise _Invalid("it is empty, starts with '-' or contains whitespace")
    return value


def _check_url(value: str, *, http_only: bool) -> str:
    parts = urlsplit(value)
    if http_only and parts.scheme not in ("http", "https"):
        raise _Invalid("the scheme must be http or https")
    if not http_only and not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://.*", value, re.DOTALL):
        raise _Invalid("a database URL starts with dialect:// (e.g. postgresql://)")
    if http_only and not parts.hostname:
        raise _Invalid("it has no host")
    try:
        port = parts.port
    except ValueError:  # not a number, or above 65535
        port = 0
    if port is not None and not 1 <= port <= 65535:
        raise _Invalid("its port is not a number from 1 to 65535")
    return value


_RelativePath = Annotated[str, AfterValidator(_check_relative)]
_AbsolutePath = Annotated[str, AfterValidator(_check_absolute)]
_Branch = Annotated[str, AfterValidator(_check_branch)]
_EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+$")]
_VarName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
_KEY_DESCRIPTIONS = {  # by the length of the key path of a table key that breaks its pattern
    2: 'an environment name: letters, digits, "_" and "-"',
    4: 'an environment variable name: letters, digits and "_", not starting with a digit',
}
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)
_SERVICE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_SERVICE_OR_NONE = r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*)?$"
_SECONDS = "a number of seconds > 0"
_ABSOLUTE = 'an absolute path (e.g. "/srv/recipes")'
_BRANCH = 'a git branch name (e.g. "main")'


class _App(BaseModel):
    model_config = _STRICT
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description=(
        'a compose project name: lowercase letters, digits, "_" and "-", starting with a letter or digit'))
    compose_file: _RelativePath = Field("docker-compose.yml", description="a path relative to the repository root")
    web_service: str = Field("web", pattern=_SERVICE, description='a compose service name (e.g. "web")')
    db_service: str = Field("db", pattern=_SERVICE_OR_NONE, description=(
        'a compose service name (e.g. "db"), or "" when the database is SQLite in a volume'))
    migrations_dir: _RelativePath = Field("migrations", description="a path relative to the repository root")
    migrate_command: Annotated[str, AfterValidator(_check_command)] = Field(
        "flask db upgrade", description='a command line (e.g. "flask db upgrade")')
    migrate_timeout: float = Field(600.0, gt=0, description=_SECONDS)
    branch: _Branch = Field("main", description=_BRANCH)
    database_url_variable: _VarName | None = Field(None, description=(
        'an environment variable name of the web service (e.g. "APP_DATABASE_URL")'))


def _check_listen(value: str) -> str:
    address, _, port = value.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _Invalid("the port is not a number from 1 to 65535")
    if address and not re.fullmatch(r"[0-9.]+|\[[0-9A-Fa-f:]+\]", address):
        raise _Invalid("the address must be an IP address (e.g. 127.0.0.1)")
    return value


class _Proxy(BaseModel):
    model_config = _STRICT
    listen: Annotated[str, AfterValidator(_check_listen)] | None = Field(None, description=(
        'the host port the proxy publishes, optionally with an address (e.g. "80" or "127.0.0.1:8000")'))
    web_port: int | None = Field(None, ge=1, le=65535,
                                 description="the port the web service listens on in its container (e.g. 8000)")
    image: str = Field("haproxy:2.6", pattern=r"^[^\s]+$", description='an image reference (e.g. "haproxy:2.6")')
    mode: Literal["auto", "overlap", "pause"] = Field("auto", description='"auto", "overlap" or "pause"')
    pause_timeout: float = Field(10.0, gt=0, le=120, description="a number of seconds > 0, at most 120")
    drain_timeout: float = Field(30.0, gt=0, description=_SECONDS)


_HostText = Annotated[str, AfterValidator(_check_host)]
_HOST = '"local" or "[user@]host[:port]" (e.g. "deploy@203.0.113.10")'


class _HostEntry(BaseModel):
    model_config = _STRICT
    host: _HostText = Field(description=_HOST)
    roles: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]] = Field(
        default_factory=list, description='an array of compose service names (e.g. ["web", "worker"])')
    primary: bool = Field(False, description="true or false")
    env: dict[_VarName, Annotated[str, AfterValidator(_check_single_line)]] = Field(
        default_factory=dict, description="a table of compose variables for this host only, over the environment's env")


class _Rollout(BaseModel):
    model_config = _STRICT
    batch: int = Field(1, ge=1, description="an integer >= 1 (hosts switched at a time)")
    pause: float = Field(0.0, ge=0, le=3600, description="a number of seconds from 0 to 3600 (between batches)")


class _Environment(BaseModel):
    model_config = _STRICT
    host: _HostText | None = Field(None, description=_HOST)
    hosts: list[_HostEntry] | None = Field(None, description=(
        'an array of hosts: "[user@]host[:port]" strings or tables {host = "...", roles = [...], primary = true}'))
    rollout: _Rollout = Field(default_factory=lambda: _Rollout(batch=1, pause=0.0), description="a table {batch = 1, pause = 5}")
    path: _AbsolutePath = Field(description=_ABSOLUTE)
    healthcheck_url: Annotated[str, AfterValidator(partial(_check_url, http_only=True))] | None = Field(
        None, description='an http(s) URL (e.g. "http://127.0.0.1:8000/health")')
    backup_dir: _AbsolutePath | None = Field(None, description=_ABSOLUTE)
    state_dir: _AbsolutePath | None = Field(None, description=_ABSOLUTE)
    healthcheck_command: Annotated[str, AfterValidator(_check_command)] | list[Annotated[str, StringConstraints(min_length=1)]] | None = Field(
        None, description='a command line run in the new web container (e.g. "flask check-db"), or a list of words')
    healthcheck_headers: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")],
                              Annotated[str, AfterValidator(_check_single_line)]] = Field(
        default_factory=dict, description='a table of HTTP header = "value" strings')
    healthcheck_status: Annotated[int, Field(ge=100, le=599)] | list[Annotated[int, Field(ge=100, le=599)]] | None = Field(
        None, description="an HTTP status (e.g. 200) or an array of them")
    healthcheck_body: Annotated[str, StringConstraints(min_length=1)] | None = Field(
        None, description="text the health page's body must contain")
    keep_backups: int = Field(10, ge=1, description="an integer >= 1")
    keep_releases: int = Field(5, ge=1, description="an integer >= 1 (the newest releases whose images a rollback can use)")
    backup_copy: list[str] | None = Field(None, description=(
        '"local:DIR" or "host:HOST:DIR", or an array of them (e.g. ["local:~/backups/shop"])'))
    playbook: str = Field("release", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", description=(
        'a playbook name: letters, digits, "_" and "-" (e.g. "release", "classic")'))
    health_timeout: float = Field(60.0, gt=0, description=_SECONDS)
    branch: _Branch | None = Field(None, description=_BRANCH)
    remote: Annotated[str, AfterValidator(_check_remote)] | None = Field(
        None, description='a git remote URL (e.g. "git@example.com:team/app.git")')
    env: dict[_VarName, Annotated[str, AfterValidator(_check_single_line)]] = Field(
        default_factory=dict, description='a table of NAME = "value" strings')
    database_url: Annotated[str, AfterValidator(partial(_check_url, http_only=False))] | None = Field(
        None, description='a database URL (e.g. "postgresql://user:pw@db:5432/app")')
    proxy: _Proxy | None = Field(None, description="a table [environments.NAME.proxy] (empty: every value inferred)")
    lock_timeout: float = Field(10.0, ge=0, description="seconds a migration may wait for a lock (a number >= 0; 0: no limit)")
    lock_retries: int = Field(3, ge=0, le=20, description="an integer from 0 to 20")
    migration_policy: Literal["refuse", "confirm", "warn"] = Field(
        "confirm", description='"refuse", "confirm" or "warn" (what a migration that locks a big table does to a release)')
    lint_min_rows: int = Field(10_000, ge=0, description="an integer >= 0 (rows from which a table counts as big)")
    engine: Literal["compose", "swarm"] = Field(
        "compose", description='"compose" (docker compose on each host) or "swarm" (Docker Swarm across the hosts)')

    @field_validator("hosts", mode="before")
    @classmethod
    def _host_text_is_a_table(cls, value: Any) -> Any:
        """``"deploy@a"`` in hosts is short for ``{host = "deploy@a"}``."""
        return [{"host": item} if isinstance(item, str) else item for item in value] if isinstance(value, list) else value

    @field_validator("backup_copy", mode="before")
    @classmethod
    def _one_copy_is_a_list(cls, value: Any) -> Any:
        """``backup_copy = "local:DIR"`` is short for ``["local:DIR"]``."""
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise ValueError('expected an array of strings, each "local:DIR" or "host:HOST:DIR", got ' + _show(value))
        return [value] if isinstance(value, str) else value

    @field_validator("backup_copy")
    @classmethod
    def _copies_are_places(cls, value: list[str] | None) -> list[str] | None:
        for text in value or ():
            try:
                parse_backup_copy(text)
            except ValueError as error:
                raise ValueError(f"{json.dumps(text)}: {error}") from None
        if duplicates := sorted({c for c in value or () if (value or []).count(c) > 1}):
            raise ValueError(f"{', '.join(duplicates)} is listed twice")
        return value

    @model_validator(mode="after")
    def _one_way_to_name_hosts(self) -> _Environment:
        if (self.host is None) == (self.hosts is None):
            raise ValueError("set either host = \"...\" or hosts = [...], not both" if self.host is not None
                             else "missing required key host (or hosts = [...] for several)")
        entries = list(self.hosts or ())
        if self.hosts is not None and not entries:
            raise ValueError("hosts is empty: name at least one host")
        specs = [parse_host(e.host) for e in entries]
        if len(specs) > 1 and any(spec.is_local for spec in specs):
            raise ValueError('hosts: "local" cannot be one of several hosts (this machine is one host)')
        seen = [str(spec) for spec in specs]
        if duplicates := sorted({text for text in seen if seen.count(text) > 1}):
            raise ValueError(f"hosts: {', '.join(duplicates)} is listed twice")
        if sum(e.primary for e in entries) > 1:
            raise ValueError("hosts: more than one host is primary = true (one host takes the backup and migrates)")
        if self.engine == "swarm":
            if any(e.roles for e in entries):
                raise ValueError('hosts: roles are for engine = "compose"; on Swarm the stack\'s placement '
                                 "(deploy.placement in the compose file) says where services run")
            if any(e.env for e in entries):
                raise ValueError('hosts: a host\'s own env is for engine = "compose"; on Swarm one stack '
                                 "configuration serves every node: put the variables in env")
        return self


class _File(BaseModel):
    model_config = _STRICT
    app: _App = Field(description="a table [app]")
    environments: dict[_EnvName, _Environment] = Field(
        default_factory=dict, min_length=1, validate_default=True, description="a table of [environments.NAME] tables")


# --- errors ------------------------------------------------------------------------------


def _describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error as ``key.path: what is expected, got what``."""
    loc = tuple(str(part) for part in error["loc"])
    kind, given = error["type"], error.get("input")
    if loc and loc[-1] == "[key]":  # an environment or variable name that breaks the pattern
        loc = loc[:-1]
        return f"{_key_path(loc)}: expected {_KEY_DESCRIPTIONS[len(loc)]}, got {_show(loc[-1])}"
    where = _key_path(loc)
    cause = (error.get("ctx") or {}).get("error")
    if kind == "extra_forbidden":
        noun = "table" if isinstance(given, dict) else "key"
        if len(loc) == 1 and isinstance(given, dict) and {"host", "hosts", "path"} & set(given):
            # [production] with host and path: an environment without its "environments." prefix
            return f"{where}: unknown table; did you mean [environments.{loc[0]}]?"
        aliases = _TABLE_ALIASES if len(loc) == 1 else {}
        return f"{where}: unknown {noun}{_suggest(loc[-1], _model(loc[:-1]).model_fields, aliases)}"
    if kind == "missing":
        if loc == ("app",):
            return "app: missing required table [app] (at least: name = \"...\")"
        return f"{where}: missing required key: expected {_expectation(loc)}"
    if kind == "too_short":
        return f"{where}: no environments: add at least one [environments.NAME] table with host and path"
    if isinstance(cause, _Invalid):
        return f"{where}: expected {_expectation(loc)}, got {_show(given)}: {cause}"
    if cause is not None:
        return f"{where}: {cause}"
    return f"{where}: expected {_expectation(loc)}, got {_show(given)}"


def _expectation(loc: tuple[str, ...]) -> str:
    if loc[0] == "environments" and (len(loc) == 2 or (len(loc) == 4 and loc[2] == "env")):
        # an environment; a value in its env table
        return f"a table [environments.{loc[1]}] with at least host and path" if len(loc) == 2 else "a string"
    info = _model(loc[:-1]).model_fields.get(loc[-1])
    return info.description if info and info.description else "a valid value"


def _model(table: tuple[str, ...]) -> type[BaseModel]:
    """The schema of the table at key path ``table`` (the file, [app] or an environment)."""
    if not table:
        return _File
    if table[0] == "app":
        return _App
    nested: dict[str, type[BaseModel]] = {"proxy": _Proxy, "rollout": _Rollout, "hosts": _HostEntry}
    return nested.get(table[2], _Environment) if len(table) >= 3 else _Environment


# The long (or other) names people give the file's tables: `[aplication]` is close to
# "application", which is what `[app]` holds.
_TABLE_ALIASES = {"application": "app", "project": "app", "environment": "environments", "env": "environments",
                  "envs": "environments", "targets": "environments", "stages": "environments"}


def _suggest(word: str, known: Iterable[str], aliases: Mapping[str, str] | None = None) -> str:
    """``; did you mean X?`` for a close spelling (of a name, or of another word for it,
    ``aliases``: other word -> name) or the only name ``word`` abbreviates."""
    known = list(known)
    aliases = {other: name for other, name in (aliases or {}).items() if name in known}
    close = difflib.get_close_matches(word, [*known, *aliases], n=1, cutoff=0.6)
    prefixed = [name for name in known if name.startswith(word)] if word else []
    close = close or (prefixed if len(prefixed) == 1 else [])
    return f"; did you mean {aliases.get(close[0], close[0])}?" if close else ""


def _show(value: Any) -> str:
    """A value the way it is written in TOML."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, (str, bool, int, float)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _key_path(loc: Iterable[str]) -> str:
    return ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+|\[\d+\]", p) else json.dumps(p) for p in loc)


def _display(file: Path, cwd: Path | None = None) -> str:
    """``file`` relative to ``cwd`` when it is below it (how users name it), else absolute."""
    try:
        return str(file.relative_to(Path(os.path.abspath(cwd or Path.cwd()))))
    except ValueError:
        return str(file)


# --- building the public objects and showing them ---------------------------------------


def _host_entries(raw: _Environment) -> tuple[HostEntry, ...]:
    """The environment's hosts, the primary first (the first listed when none says so)."""
    if raw.host is not None:
        return (HostEntry(parse_host(raw.host), primary=True),)
    entries = list(raw.hosts or ())
    primary = next((i for i, e in enumerate(entries) if e.primary), 0)
    ordered = [entries[primary], *entries[:primary], *entries[primary + 1:]]
    return tuple(HostEntry(parse_host(e.host), tuple(e.roles), i == 0, MappingProxyType(dict(e.env)))
                 for i, e in enumerate(ordered))


def _build(file: Path, app_schema: _App, schemas: Mapping[str, _Environment],
           interpolated: frozenset[str], unresolved: Mapping[str, str]) -> Config:
    app = AppConfig(**{**app_schema.model_dump(), "migrate_command": tuple(shlex.split(app_schema.migrate_command))})
    environments: dict[str, Environment] = {}
    secrets = set(interpolated)
    for name, raw in schemas.items():
        state_dir = raw.state_dir or default_state_dir(raw.path)
        command = raw.healthcheck_command
        status = raw.healthcheck_status
        hosts = _host_entries(raw)
        environments[name] = Environment(**{
            **raw.model_dump(exclude={"backup_copy"}), "name": name, "host": hosts[0].spec, "hosts": hosts,
            "rollout": Rollout(**raw.rollout.model_dump()),
            # One host: its own variables are the environment's (several: each host's, see Environment.on).
            "env": MappingProxyType({**raw.env, **(hosts[0].env if len(hosts) == 1 else {})}),
            "state_dir": state_dir, "backup_dir": raw.backup_dir or posixpath.join(state_dir, "backups"),
            "branch": raw.branch or app.branch,
            "healthcheck_command": None if command is None else tuple(shlex.split(command) if isinstance(command, str) else command),
            "healthcheck_headers": MappingProxyType(dict(raw.healthcheck_headers)),
            "healthcheck_status": () if status is None else ((status,) if isinstance(status, int) else tuple(status)),
            "proxy": None if raw.proxy is None else ProxyConfig(**raw.proxy.model_dump()),
            "backup_copies": tuple(parse_backup_copy(text) for text in raw.backup_copy or ()),
        })
        secrets.update(value for key, value in raw.env.items() if looks_secret(key))
        secrets.update(value for entry in hosts for key, value in entry.env.items() if looks_secret(key))
        secrets.update(credential for key, value in raw.healthcheck_headers.items()
                       if looks_secret(key) or key.lower() in _CREDENTIAL_HEADERS for credential in _header_credentials(value))
        passwords = [url_password(url) for url in (raw.database_url, raw.remote) if url]
        secrets.update(form for p in passwords if p for form in (p, unquote(p)))
    secrets.discard("")
    return Config(file, file.parent, app, MappingProxyType(environments), frozenset(secrets),
                  MappingProxyType(dict(unresolved)))


def _plain(obj: Any) -> dict[str, Any]:
    """A dataclass as TOML-like plain values (host as text, the command line re-joined)."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name == "backup_copies":  # shown as written: backup_copy = [...]
            out["backup_copy"] = [str(c) for c in value] or None
            continue
        if f.name == "hosts":
            value = [{"host": str(e.spec), "roles": list(e.roles), "primary": e.primary,
                      "env": {k: REDACTED if looks_secret(k) else v for k, v in e.env.items()}} for e in value]
        elif isinstance(value, HostSpec):
            value = str(value)
        elif isinstance(value, tuple) and all(isinstance(item, str) for item in value):
            value = shlex.join(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, ProxyConfig | Rollout):
            value = _plain(value)

        out[f.name] = value
    return out


_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token"})


def _header_credentials(value: str) -> tuple[str, ...]:
    """A credential header's secret forms: the whole value and, for ``Bearer TOKEN``, the token."""
    scheme, _, credential = value.partition(" ")
    return (value, credential.strip()) if credential.strip() and scheme.isalpha() else (value,)


def _redact_tree(node: Any, secrets: frozenset[str]) -> Any:
    if isinstance(node, dict):
        return {key: _redact_tree(value, secrets) for key, value in node.items()}
    return redact(node, secrets, 1) if isinstance(node, str) else node
