"""``deployer init``: a commented deploy.toml, and the ignore entries deployer needs, from what
:mod:`deployer.discovery` read in the repository and what the command line said.

Only what cannot be told from the files is asked (:func:`questions`); the command line asks
on a terminal and refuses, naming the flags, without one. The file written is loaded back
with deployer's own loader before it replaces anything: what ``init`` writes is valid.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deployer.config import CONFIG_FILENAME, default_state_dir, load_config
from deployer.config.interpolate import looks_secret
from deployer.discovery import Choice, Discovery, discover
from deployer.errors import ConfigError
from deployer.hosts.spec import parse_host

HOST_HELP = '"local", user@host[:port] or an ~/.ssh/config alias'
ENGINES = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB", "sqlite": "SQLite"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_COMMENT_COLUMN = 40


@dataclass(frozen=True)
class Given:
    """What the command line said (None: not said)."""

    environment: str = "production"
    host: str | None = None
    path: str | None = None
    name: str | None = None
    compose_file: str | None = None
    web_service: str | None = None
    db_service: str | None = None  # "" (or "none"): no database service
    migrations_dir: str | None = None
    health_url: str | None = None  # a path, a URL, or "none"
    variables: Mapping[str, str] = field(default_factory=dict)  # --var NAME=VALUE
    proxy: bool = False
    proxy_image: str | None = None
    backup_dir: str | None = None


@dataclass(frozen=True)
class Scaffold:
    """What ``init`` writes and says."""

    root: Path
    environment: str
    text: str  # deploy.toml
    ignores: Mapping[str, tuple[str, ...]]  # a .dockerignore (relative to root) -> the entries it gains
    found: tuple[tuple[str, str], ...]  # (what, what was found and where) for the summary
    from_shell: tuple[str, ...]  # variables taken from the shell at release time
    next: tuple[str, ...]  # commands to run now; the last one is the next step

    def to_dict(self) -> dict[str, object]:
        return {"config": CONFIG_FILENAME, "environment": self.environment, "found": dict(self.found),
                "dockerignore": {path: list(entries) for path, entries in self.ignores.items()},
                "from_shell": list(self.from_shell), "next": list(self.next)}


def check_given(given: Given) -> None:
    """Refuse a flag's value that could not make a valid deploy.toml, naming the flag."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", given.environment):
        raise ConfigError(f"--environment {given.environment!r}: an environment name is letters, digits, \"_\" and \"-\"")
    if given.host is not None:
        try:
            parse_host(given.host)
        except ValueError as error:
            raise ConfigError(f"--host {given.host!r}: {error}", hint=f"give {HOST_HELP}") from None
    if given.path is not None and (not given.path.startswith("/") or ".." in given.path.split("/")):
        raise ConfigError(f"--path {given.path!r}: the checkout's path on the server is absolute, without '..'")
    if given.backup_dir is not None and (not given.backup_dir.startswith("/") or ".." in given.backup_dir.split("/")):
        raise ConfigError(f"--backup-dir {given.backup_dir!r}: a directory on the server is absolute, without '..'")
    if given.name is not None and not _NAME.fullmatch(given.name):
        raise ConfigError(f"--name {given.name!r}: a compose project name is lowercase letters, digits, \"_\" and \"-\"")
    url = given.health_url
    if url is not None and url != "none" and not url.startswith("/") and not re.match(r"https?://[^/\s]+", url):
        raise ConfigError(f"--health-url {url!r}: give a path (/health), a URL (http://127.0.0.1:8000/health), or none")
    for key, value in given.variables.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"--var {key}=...: a variable name is letters, digits and \"_\", not starting with a digit")
        if looks_secret(key):
            raise ConfigError(f"--var {key}=...: a secret does not belong in deploy.toml (it is committed)",
                              hint=f"leave it out: deploy.toml then takes it from your shell as ${{{key}}} at release time")
        if "\n" in value or "\r" in value:
            raise ConfigError(f"--var {key}=...: the value holds a line break, which a compose env file cannot carry")


def discover_for(root: Path, given: Given) -> Discovery:
    """The repository read with what the command line already settled."""
    db = given.db_service
    return discover(root, compose_file=given.compose_file, web_service=given.web_service,
                    db_service="" if db == "none" else db, migrations_dir=given.migrations_dir, values=given.variables)


def questions(found: Discovery, given: Given) -> list[Choice]:
    """What is still open: the discovery's choices, the host, and a health page not found."""
    open_ = list(found.choices)
    if given.host is None:
        open_.insert(0, Choice("host", "--host", f"where environment {given.environment} runs: {HOST_HELP}"))
    if given.health_url is None and found.web is not None and found.health_url is None:
        reason = (f"no health route found (a healthcheck, a HEALTHCHECK, or a route like /health in {found.web.build_context})"
                  if found.health_path is None else f"the {found.web.name} service publishes no port to reach {found.health_path} at")
        open_.append(Choice("health URL", "--health-url", reason + ": a path (/health), a URL, or none"))
    return open_


def refusal(open_: list[Choice]) -> ConfigError:
    """Without a terminal to ask: one error naming every flag still needed."""
    lines = "; ".join(f"the {c.what} ({c.flag}: {c.reason})" for c in open_)
    flags = " ".join(f"{c.flag} {c.options[0] if len(c.options) == 1 else '...'}" for c in open_)
    return ConfigError(f"deployer init cannot tell, and there is no terminal to ask: {lines}",
                       hint=f"pass them: deployer init {flags}")


def scaffold(root: Path, given: Given) -> Scaffold:
    """The deploy.toml and .dockerignore entries for ``root``; a ConfigError when something
    is still open (see :func:`questions`)."""
    check_given(given)
    found = discover_for(root, given)
    open_ = questions(found, given)
    if open_:
        raise refusal(open_)
    assert found.compose_file and found.web and found.migrations and given.host
    name = given.name or _project_name(found)
    path = given.path or f"/srv/{name}"
    health = _health_url(found, given)
    env = _env_table(found, given)
    text = _deploy_toml(found, given, name=name, path=path, health=health, env=env)
    ignores = _dockerignore(found, path, given.backup_dir)
    from_shell = tuple(key for key, (value, _) in env.items() if value == f'"${{{key}}}"')
    summary = _summary(found, health, path, given.backup_dir, ignores)
    steps = [*(f"export {key}=...   # {_why(found, key)}" for key in from_shell)]
    committed = " ".join([CONFIG_FILENAME, *ignores])
    if _repository(found.root) is None:
        steps.append("git init && git add --all   # deployer ships commits: the app must be in a git repository")
    steps.append(f'git add {committed} && git commit -m "deploy with deployer"   # the server fetches what is committed')
    if not _has_origin(found.root):
        steps.append("git remote add origin URL && git push -u origin HEAD   # deployer ships commits from the remote")
    steps.append(f"deployer config check {given.environment}   # then: deployer release {given.environment} --dry-run")
    return Scaffold(root=found.root, environment=given.environment, text=text, ignores=ignores, found=summary,
                    from_shell=from_shell, next=tuple(steps))


def refuse_overwrite(root: Path, *, force: bool) -> None:
    """An existing deploy.toml is the team's: kept unless ``force``."""
    if (root / CONFIG_FILENAME).exists() and not force:
        raise ConfigError(f"{CONFIG_FILENAME} already exists here: init leaves it as it is",
                          hint="check it with `deployer config check`, or pass --force to replace it")


def write(plan: Scaffold, *, force: bool = False) -> list[str]:
    """Write deploy.toml (checked by loading it back first) and append the ignore entries;
    the paths written. An existing deploy.toml is kept unless ``force``."""
    refuse_overwrite(plan.root, force=force)
    target = plan.root / CONFIG_FILENAME
    handle, temporary = tempfile.mkstemp(prefix=".deploy-", suffix=".toml", dir=plan.root)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(plan.text)
        load_config(temporary, environ={})  # what init writes is valid (a variable not set yet is deferred)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    written = [CONFIG_FILENAME]
    for relative, entries in plan.ignores.items():
        file = plan.root / relative
        before = file.read_text(encoding="utf-8") if file.exists() else ""
        lead = "" if not before or before.endswith("\n") else "\n"
        block = "# deployer: kept out of the image (a `COPY . .` would bake it in)\n" + "".join(f"{e}\n" for e in entries)
        file.write_text(before + lead + block, encoding="utf-8")
        written.append(relative)
    return written


# --- what the file says -----------------------------------------------------------------------


def _project_name(found: Discovery) -> str:
    """The compose file's own name, else the directory's, as a compose project name."""
    for candidate in (found.name, found.root.name):
        name = re.sub(r"[^a-z0-9_-]+", "-", candidate.lower()).strip("-_")
        if name and _NAME.fullmatch(name):
            return name
    return "app"


def _health_url(found: Discovery, given: Given) -> str | None:
    url = given.health_url
    if url == "none":
        return None
    if url is not None and url.startswith("/"):
        whole = found.url(url)
        if whole is None:
            raise ConfigError(f"--health-url {url}: the web service publishes no port to reach it at",
                              hint="give the whole URL as the server reaches it (http://127.0.0.1:PORT/health)")
        return whole
    return url or found.health_url


def _env_table(found: Discovery, given: Given) -> dict[str, tuple[str, str]]:
    """The environment's variables: NAME -> (TOML value, comment). What the compose file
    requires (or reads with no default) from the shell; what .env held (compose on the
    server reads deployer's env file instead); what --var said."""
    table: dict[str, tuple[str, str]] = {}
    compose = found.compose_file
    for variable in found.variables:
        if variable.default is not None or variable.name in given.variables:
            continue
        if variable.name in found.dotenv and not looks_secret(variable.name):
            table[variable.name] = (_toml(found.dotenv[variable.name]), "from .env (compose on the server reads this table instead)")
        elif variable.required or variable.name not in found.dotenv or looks_secret(variable.name):
            why = f"{compose} requires it" if variable.required else f"{compose} reads it, with no default"
            table[variable.name] = (f'"${{{variable.name}}}"', f"{why}: from your shell (or CI secret) at release time")
    for key, value in given.variables.items():
        table[key] = (_toml(value), "")
    return table


def _toml(value: str) -> str:
    """A TOML basic string of ``value``, a literal ``${`` escaped for deployer's interpolation."""
    return json.dumps(value.replace("${", "$${"))


def _line(text: str, comment: str = "") -> str:
    return f"{text:<{_COMMENT_COLUMN - 1}} # {comment}" if comment else text


def _deploy_toml(found: Discovery, given: Given, *, name: str, path: str, health: str | None,
                 env: Mapping[str, tuple[str, str]]) -> str:
    web, db, migrations = found.web, found.db, found.migrations
    assert web is not None and migrations is not None and found.compose_file is not None
    environment = given.environment
    published = next((p.published for p in web.ports if p.published), None)
    does = [f"built from {web.build_context}" if web.build_context else f"image {web.image}"]
    if published:
        does.append(f"publishes {published}")
    if db is not None:
        db_comment = f"{db.image or 'its image'} ({ENGINES.get(found.engine or '', found.engine)}): started first, backed up before a migration"
    elif found.engine == "sqlite":
        db_comment = "no database service: SQLite in a volume of the web service"
    else:
        db_comment = "no database service"
    lines = [
        f"# deployer configuration, written by `deployer init` from {found.compose_file}.",
        "# Every key: docs/configuration.md; `deployer config schema` gives your editor its JSON Schema.",
        "# `deployer config check` checks it; `deployer release ENV --dry-run` shows what a release runs.",
        "",
        "[app]",
        _line(f"name = {_toml(name)}", "the compose project on the server, prefix of release records"),
        _line(f"compose_file = {_toml(found.compose_file)}"),
        _line(f"web_service = {_toml(web.name)}", f"{', '.join(does)}: its new image runs the migration"),
        _line(f"db_service = {_toml(db.name if db else '')}", db_comment),
    ]
    if found.database_url_variable:
        lines.append(_line(f"database_url_variable = {_toml(found.database_url_variable)}",
                           f"the {web.name} service's variable holding the database URL"))
    lines += [
        _line(f"migrations_dir = {_toml(migrations.directory)}", "Flask-Migrate" if migrations.flask_migrate else "alembic"),
        _line(f"migrate_command = {_toml(migrations.command)}", "run once, in a one-off container of the new web image"),
        _line(f"branch = {_toml(_branch(found.root))}", "what a release ships by default"),
        "",
        f"[environments.{environment}]",
        _line(f"host = {_toml(given.host or '')}", HOST_HELP),
        _line(f"path = {_toml(path)}", "the git checkout deployer keeps on the server"),
    ]
    if health:
        source = f"from {found.health_source}" if found.health_source and given.health_url is None else "as given"
        lines.append(_line(f"healthcheck_url = {_toml(health)}", f"{source}; best a page that reads the database"))
    else:
        lines.append('# healthcheck_url = "http://127.0.0.1:8000/health"   # a page that reads the database, as seen from the host')
    lines.append('# healthcheck_command = "flask check-db"  # or/and a command in the new web container (docs/health.md)')
    if given.backup_dir:
        lines.append(_line(f"backup_dir = {_toml(given.backup_dir)}", "the dumps taken before each migration"))
    lines += [
        "# keep_backups = 10",
        "",
        "# Zero-downtime releases (docs/zero-downtime.md): HAProxy in front of the web service takes over",
        "# the port it publishes; each release starts the new container beside the old one and switches",
        "# when it answers. Opt-in per environment" + (":" if given.proxy else ": uncomment the table to turn it on."),
    ]
    if given.proxy:
        lines.append(f"[environments.{environment}.proxy]")
        if given.proxy_image:
            lines.append(_line(f"image = {_toml(given.proxy_image)}", "default: haproxy:2.6"))
    else:
        lines.append(f"# [environments.{environment}.proxy]")
    lines.append("")
    defaulted = [v for v in found.variables if v.default is not None and v.name not in env]
    header = f"[environments.{environment}.env]"
    if env:
        lines.append(_line(header, "what the compose file interpolates (a 0600 file on the server)"))
        lines += [_line(f"{key} = {value}", comment) for key, (value, comment) in env.items()]
    elif defaulted:
        lines.append(f"# {header}")
    if defaulted:
        lines.append(f"# {found.compose_file} reads these with a default; uncomment one to set it for this environment:")
        lines += [f"# {v.name} = {_toml(v.default or '')}" for v in defaulted]
    return "\n".join(lines) + "\n"


def _repository(root: Path):  # noqa: ANN202 - git.Repo | None
    import git

    try:
        return git.Repo(root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def _branch(root: Path) -> str:
    """The branch checked out here (what the team ships), else main."""
    repo = _repository(root)
    try:
        return str(repo.active_branch.name) if repo is not None else "main"
    except (TypeError, ValueError):  # a detached HEAD
        return "main"


def _has_origin(root: Path) -> bool:
    repo = _repository(root)
    return repo is not None and any(remote.name == "origin" for remote in repo.remotes)


def _dockerignore(found: Discovery, path: str, backup_dir: str | None) -> dict[str, tuple[str, ...]]:
    """The .dockerignore entries that keep deployer's directories inside a build context out
    of the image (preflight refuses a release otherwise). Its own state directory is beside
    the checkout, never inside; only a backup_dir put inside the checkout can need one."""
    from docker.utils.build import PatternMatcher

    if backup_dir is None:
        return {}
    wanted: dict[str, tuple[str, ...]] = {}
    for service in found.services.values():
        if service.build_context is None:
            continue
        context = posixpath.normpath(posixpath.join(path, service.build_context))
        inside = posixpath.normpath(backup_dir)
        if inside == context or not inside.startswith(context.rstrip("/") + "/"):
            continue
        relative = posixpath.relpath(inside, context)
        ignore = posixpath.normpath(posixpath.join(service.build_context, ".dockerignore"))
        existing = found.root / ignore
        patterns = [line.strip() for line in (existing.read_text(encoding="utf-8").splitlines() if existing.exists() else ())
                    if line.strip() and not line.startswith("#")]
        if not PatternMatcher(patterns).matches(relative) and relative not in wanted.get(ignore, ()):
            wanted[ignore] = (*wanted.get(ignore, ()), relative)
    return wanted


def _summary(found: Discovery, health: str | None, path: str, backup_dir: str | None,
             ignores: Mapping[str, tuple[str, ...]]) -> tuple[tuple[str, str], ...]:
    web, db, migrations = found.web, found.db, found.migrations
    assert web is not None and migrations is not None
    others = [f for f in found.compose_files if f != found.compose_file]
    rows = [("compose file", f"{found.compose_file}" + (f" (not {', '.join(others)})" if others else ""))]
    shown = web.command if len(web.command) <= 60 else web.command[:59].rsplit(" ", 1)[0] + " …"
    command = f", runs {shown}" if web.command else ""
    rows.append(("web service", f"{web.name} (built from {web.build_context}{command})" if web.build_context
                 else f"{web.name} (image {web.image}{command})"))
    engine = ENGINES.get(found.engine or "", "not found")
    rows.append(("database", f"{engine}, service {db.name} ({db.image})" if db else f"{engine}, no database service"))
    if found.database_url_variable:
        rows.append(("database URL", f"in {web.name}'s {found.database_url_variable}"))
    rows.append(("migrations", f"{migrations.directory} ({'Flask-Migrate' if migrations.flask_migrate else 'alembic'}): "
                 f"{migrations.command}"))
    rows.append(("health", f"{health} ({found.health_source or 'as given'})" if health else "no URL check (containers only)"))
    state = default_state_dir(path)
    if ignores:
        rows.append((".dockerignore", "; ".join(f"{file} += {', '.join(entries)}" for file, entries in ignores.items())))
    else:
        where = f"{state} and {backup_dir}" if backup_dir else state
        rows.append((".dockerignore", f"nothing to add: deployer's files ({where}) are outside every build context"))
    return tuple(rows)


def _why(found: Discovery, key: str) -> str:
    variable = next((v for v in found.variables if v.name == key), None)
    message = f" ({variable.message})" if variable is not None and variable.message else ""
    return f"{found.compose_file} needs it{message}: deployer gives it to compose on the server, never prints it"
