"""``deployer config check``: what a release needs that can be checked here, without the host.

deploy.toml itself is checked when it loads (:mod:`deployer.config`). On top of that, for
the app: the compose file is there, parses, and has the services deploy.toml names; the
migrations directory holds revisions with one head; both are committed. For each
environment: the ``${NAME}`` it takes from the shell are set; the variables the compose
file requires are given to compose on the host; the playbook loads; the services its hosts'
roles and its ``run`` steps name exist. What needs the host is left for ``release
--dry-run`` and said: :data:`NOT_CHECKED`.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from deployer.commands import compose as compose_files
from deployer.config import Config, _display
from deployer.errors import DeployerError

NOT_CHECKED = (
    "the host: that it answers, and docker and compose there",
    "the database: where it is, its revision",
    "the git remote: the commit to ship and its migrations (this checks the working tree and HEAD)",
)
Level = Literal["ok", "warning", "problem"]


@dataclass(frozen=True)
class Check:
    """One thing checked: ``ok``, a ``warning`` (a release may still work), or a ``problem``
    (a release would be refused or fail)."""

    name: str
    level: Level
    detail: str
    hint: str | None = None


@dataclass(frozen=True)
class EnvironmentReport:
    name: str
    host: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.level != "problem" for check in self.checks)


@dataclass(frozen=True)
class Report:
    """The app's checks, then each environment's, and what was not checked."""

    path: str
    app: str
    checks: tuple[Check, ...]
    environments: tuple[EnvironmentReport, ...]
    not_checked: tuple[str, ...] = NOT_CHECKED

    @property
    def ok(self) -> bool:
        return all(c.level != "problem" for c in self.checks) and all(e.ok for e in self.environments)

    def problems(self) -> list[str]:
        """``WHERE: NAME`` of every problem, for the one-line summary."""
        found = [f"{c.name}" for c in self.checks if c.level == "problem"]
        found += [f"{e.name}: {c.name}" for e in self.environments for c in e.checks if c.level == "problem"]
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "valid": self.ok, "app": self.app, "checks": [asdict(c) for c in self.checks],
                "environments": [{"name": e.name, "host": e.host, "ok": e.ok, "checks": [asdict(c) for c in e.checks]}
                                 for e in self.environments],
                "not_checked": list(self.not_checked)}


def check(cfg: Config, names: tuple[str, ...], *, environ: Mapping[str, str] | None = None) -> Report:
    """Check the app and the environments ``names`` (each usable or not: an environment
    whose variables are not set is reported, not raised)."""
    environ = os.environ if environ is None else environ
    raw = tomllib.loads(cfg.path.read_text(encoding="utf-8"))
    compose_check, data = _compose_file(cfg)
    checks = [compose_check]
    services = set(data["services"]) if data else set()
    if data:
        checks.append(_named_services(cfg, services))
    checks.append(_migrations(cfg))
    checks.extend(_committed(cfg))
    environments = tuple(_environment(cfg, name, raw["environments"][name], data, services, environ) for name in names)
    return Report(path=_display(cfg.path), app=cfg.app.name, checks=tuple(checks), environments=environments)


# --- the app ------------------------------------------------------------------------------


def _compose_file(cfg: Config) -> tuple[Check, dict[str, Any] | None]:
    name = cfg.app.compose_file
    path = cfg.root / name
    try:
        data = compose_files.read_file(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Check("compose file", "problem", f"{name}: no such file",
                     hint="app.compose_file names it, relative to deploy.toml's directory (`deployer init` finds it)"), None
    except (OSError, UnicodeDecodeError) as error:
        return Check("compose file", "problem", f"{name}: cannot read it: {error}"), None
    except ValueError as error:
        return Check("compose file", "problem", f"{name}: {error}", hint="`docker compose -f FILE config` shows where"), None
    services = ", ".join(sorted(data["services"]))
    return Check("compose file", "ok", f"{name}: services {services}"), data


def _named_services(cfg: Config, services: set[str]) -> Check:
    app = cfg.app
    missing = [f"{key} = {json.dumps(value)}" for key, value in (("web_service", app.web_service), ("db_service", app.db_service))
               if value and value not in services]
    if missing:
        return Check("services", "problem", f"{app.compose_file} has no service for {', '.join(missing)} (in [app])",
                     hint=f"its services: {', '.join(sorted(services))}")
    db = f"db_service {app.db_service}" if app.db_service else "no db_service (SQLite in a volume)"
    return Check("services", "ok", f"web_service {app.web_service}, {db}")


def _migrations(cfg: Config) -> Check:
    from deployer.db.migrations import scripts_from_sources, version_files

    directory = cfg.app.migrations_dir
    root = cfg.root / directory
    if not root.is_dir():
        return Check("migrations", "problem", f"{directory}: no such directory (app.migrations_dir)",
                     hint="it is relative to deploy.toml's directory: where alembic.ini or env.py is")
    files = [str(p.relative_to(cfg.root).as_posix()) for p in (root / "versions").glob("*.py")]
    picked = version_files(files, directory)
    try:
        scripts = scripts_from_sources({p: (cfg.root / p).read_text(encoding="utf-8", errors="replace") for p in picked},
                                       location=f"{directory} (working tree)")
        heads = scripts.heads
    except DeployerError as error:
        return Check("migrations", "problem", error.message, hint=error.hint)
    if not picked:
        return Check("migrations", "warning", f"{directory}: no revisions yet (a release then migrates nothing)")
    if len(heads) > 1:
        return Check("migrations", "problem", f"{directory}: several heads ({', '.join(heads)}): a release is refused",
                     hint="merge them: `flask db merge heads` (or `alembic merge heads`), then commit")
    return Check("migrations", "ok", f"{directory}: {len(picked)} revision{'s' * (len(picked) != 1)}, head {heads[0][:12]}")


def _committed(cfg: Config) -> list[Check]:
    """A release ships commits: the compose file and the migrations must be in them."""
    import git

    try:
        repo = git.Repo(cfg.root, search_parent_directories=True)
        repo.head.commit  # noqa: B018 - raises on a repository without commits
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return [Check("repository", "problem", f"{cfg.root} is not inside a git repository",
                      hint="deployer ships commits: `git init`, commit the app, add a remote")]
    except ValueError:
        return [Check("repository", "problem", "the repository has no commit yet", hint="commit the app first")]
    top = Path(repo.working_dir)
    wanted = [(cfg.app.compose_file, "blob"), (cfg.app.migrations_dir, "tree")]
    missing = []
    for path, kind in wanted:
        in_repo = (cfg.root / path).resolve().relative_to(top.resolve()).as_posix() if (cfg.root / path).exists() else None
        if in_repo is None:
            continue  # reported above
        try:
            found = repo.head.commit.tree / in_repo
        except KeyError:
            missing.append(path)
            continue
        if found.type != kind:
            missing.append(path)
    if missing:
        return [Check("repository", "warning", f"not committed (HEAD): {', '.join(missing)}",
                      hint="a release ships the commit on the remote: commit and push them")]
    return [Check("repository", "ok", f"{cfg.app.compose_file} and {cfg.app.migrations_dir} are committed (HEAD)")]


# --- one environment ------------------------------------------------------------------------


def _environment(cfg: Config, name: str, table: Mapping[str, Any], data: dict[str, Any] | None, services: set[str],
                 environ: Mapping[str, str]) -> EnvironmentReport:
    from deployer.config import _Environment

    hosts = [entry if isinstance(entry, dict) else {"host": entry} for entry in table.get("hosts") or ()]
    host = str(table.get("host") or ", ".join(str(h["host"]) for h in hosts))
    checks: list[Check | None] = [_variables(cfg, name)]
    if data is not None:
        given = set(table.get("env") or {}) | {key for h in hosts for key in (h.get("env") or {})}
        checks.append(_compose_variables(cfg, data, given, local=host == "local", environ=environ))
        checks.append(_roles(cfg, hosts, services))
    playbook = str(table.get("playbook") or _Environment.model_fields["playbook"].default)
    checks.append(_playbook(cfg, playbook, services if data is not None else None))
    return EnvironmentReport(name=name, host=host, checks=tuple(c for c in checks if c is not None))


def _variables(cfg: Config, name: str) -> Check:
    if name not in cfg.unresolved:
        return Check("variables", "ok", "every ${NAME} it takes from the shell is set")
    lines = cfg.unresolved[name].splitlines()
    unset: dict[str, list[str]] = {}
    for line in lines:
        found = re.search(r"^.*?: ([^:]+): environment variable ([A-Za-z_][A-Za-z0-9_]*) is not set", line)
        if found is None:  # not an unset variable: the message as it is
            return Check("variables", "problem", "; ".join(lines), hint="export them in the shell that runs deployer")
        unset.setdefault(found.group(2), []).append(found.group(1))
    detail = "; ".join(f"{variable} is not set (for {', '.join(keys)})" for variable, keys in unset.items())
    first = next(iter(unset))
    return Check("variables", "problem", detail,
                 hint=f"export {first}=... in the shell (or CI job) that runs deployer, or give a default: ${{{first}:-default}}")


def _compose_variables(cfg: Config, data: dict[str, Any], given: set[str], *, local: bool,
                       environ: Mapping[str, str]) -> Check:
    """What compose on the host will interpolate: the env table, as an --env-file (the
    checkout's .env when the table is empty); locally, the shell's variables too."""
    seen: dict[str, compose_files.Variable] = {}
    for variable in compose_files.variables(data):
        known = seen.get(variable.name)
        if known is None or (variable.required and not known.required) or (known.default is not None and variable.default is None):
            seen[variable.name] = variable
    provided = given | (set(environ) if local else set())
    required = sorted(v.name for v in seen.values() if v.required and v.name not in provided)
    blank = sorted(v.name for v in seen.values() if not v.required and v.default is None and v.name not in provided)
    if required and not given:
        return Check("compose variables", "warning",
                     f"{cfg.app.compose_file} requires {', '.join(required)}, and env is empty: compose on the host reads "
                     "them from the checkout's .env, if it has one", hint="or set them in the environment's env table")
    if required:
        messages = "; ".join(f"{n}" + (f" ({seen[n].message})" if seen[n].message else "") for n in required)
        return Check("compose variables", "problem", f"{cfg.app.compose_file} requires {messages}, which env does not set",
                     hint=f'add them to the env table, e.g. {required[0]} = "${{{required[0]}}}" (taken from your shell)')
    if blank:
        return Check("compose variables", "warning",
                     f"{cfg.app.compose_file} reads {', '.join(blank)}, with no default and not in env: compose makes them empty")
    unread = sorted(name for name in given if name not in seen)
    if unread:
        from deployer.config import _suggest

        said = "; ".join(f"{name}{_suggest(name, [n for n in seen if n not in given])}" for name in unread)
        return Check("compose variables", "warning", f"env sets what {cfg.app.compose_file} never reads: {said}",
                     hint="a misspelt name leaves the compose file's default in place")
    used = sorted(name for name in seen if name in given)
    return Check("compose variables", "ok", f"env gives {', '.join(used)}" if used else "the compose file needs no variable")


def _roles(cfg: Config, hosts: list[dict[str, Any]], services: set[str]) -> Check | None:
    named = sorted({str(role) for entry in hosts for role in entry.get("roles") or ()})
    if not named:
        return None
    missing = [role for role in named if role not in services]
    if missing:
        return Check("roles", "problem", f"hosts name roles {', '.join(missing)}, which {cfg.app.compose_file} has no service for",
                     hint=f"its services: {', '.join(sorted(services))}")
    return Check("roles", "ok", f"every role is a service ({', '.join(named)})")


def _playbook(cfg: Config, name: str, services: set[str] | None) -> Check:
    from deployer.steps.playbook import load_playbook

    try:
        book = load_playbook(name, cfg.root)
    except DeployerError as error:
        return Check("playbook", "problem", error.message, hint=error.hint)
    unknown = sorted({str(step.params["service"]) for step in book.steps
                      if step.name == "run" and "service" in step.params and services is not None
                      and step.params["service"] not in services})
    if unknown:
        return Check("playbook", "problem", f"{book.path.name}: run steps name services {', '.join(unknown)}, "
                     f"which {cfg.app.compose_file} has no service for")
    return Check("playbook", "ok", f"{name} ({len(book.steps)} steps)")
