"""``deployer status`` and ``deployer history``: what runs on an environment, read in one go.

Status answers "is production where I think it is?" without starting a container: the
deployed commit against the branch tip on the remote, the database's alembic revision
(read over SQLAlchemy, through the SSH connection's tunnel) against the migrations of
both, the compose services, the deploy lock, the last release and the newest backup.

Speed matters (a monitor polls it), so everything goes over ONE SSH connection, and the
independent reads run at once in threads: local git (ls-remote + fetch), and on the host
the checkout's HEAD, the containers, the lock, the journal and the backups. Containers are
read through the engine API in a channel of that connection (``docker system dial-stdio``,
see :mod:`deployer.hosts.dockerapi`) rather than with ``docker compose ps`` (which parses
the compose file first).

The assessment itself (:func:`assess`, :func:`exit_code_for`, :func:`render_status`) is
pure, so every verdict and exit code is unit-tested without a server.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from deployer.errors import DeployerError, ExitCode

if TYPE_CHECKING:
    from deployer.commands.docker import Container
    from deployer.config import Config, HostEntry
    from deployer.db.migrations import MigrationScripts
    from deployer.hosts import Host
    from deployer.server.journal import Record
    from deployer.server.target import Target

T = TypeVar("T")

SCHEMA_VERSION = 1


class StatusCode(IntEnum):
    """Exit codes of ``deployer status`` (0 and 3 are shared with :class:`ExitCode`)."""

    IN_SYNC = 0
    UNREACHABLE = int(ExitCode.UNREACHABLE)  # the host, or the database on it, did not answer
    PENDING = 10  # the database is behind the deployed code: migrations not run
    AHEAD = 11  # the database is ahead of the deployed code: old code on a newer schema
    UNKNOWN_REVISION = 12  # the database names a revision no script knows
    MULTIPLE_HEADS = 13  # the deployed code or the branch tip has unmerged migration heads
    NOT_INITIALISED = 14  # no migration applied yet, or nothing deployed at all
    DRIFT = 15  # schema fine, but the code is not the branch tip or a service is not healthy
    INTERRUPTED = 16  # a release or rollback was interrupted: `deployer recover ENV` converges it


# Verdict names as they appear in text and JSON (migrations.VerdictKind values, plus two).
UP_TO_DATE = "up to date"
PENDING = "pending"
AHEAD = "ahead"
UNKNOWN_REVISION = "unknown revision"
MULTIPLE_HEADS = "multiple heads"
NOT_INITIALISED = "not initialised"
NOT_DEPLOYED = "not deployed"
DATABASE_UNREACHABLE = "database unreachable"

_VERDICT_CODES = {
    UP_TO_DATE: StatusCode.IN_SYNC,
    PENDING: StatusCode.PENDING,
    AHEAD: StatusCode.AHEAD,
    UNKNOWN_REVISION: StatusCode.UNKNOWN_REVISION,
    MULTIPLE_HEADS: StatusCode.MULTIPLE_HEADS,
    NOT_INITIALISED: StatusCode.NOT_INITIALISED,
    NOT_DEPLOYED: StatusCode.NOT_INITIALISED,
    DATABASE_UNREACHABLE: StatusCode.UNREACHABLE,
}


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Migration:
    revision: str
    message: str


@dataclass(frozen=True)
class CodeState:
    """The deployed commit against the tip of the configured branch on the remote."""

    branch: str
    deployed: str | None  # None: no checkout on the host yet
    deployed_subject: str | None
    tip: str | None  # None: the remote could not be read (see error)
    tip_subject: str | None
    ahead: int | None  # commits in deployed not in tip
    behind: int | None  # commits in tip not in deployed
    error: str | None = None


@dataclass(frozen=True)
class DatabaseState:
    """The database's alembic revision(s) against the migration heads of the code."""

    reachable: bool
    revisions: tuple[str, ...] | None  # None when unreachable
    deployed_heads: tuple[str, ...]
    tip_heads: tuple[str, ...]
    verdict: str
    summary: str
    pending: tuple[Migration, ...] = ()  # upgrades the deployed code still needs, in order
    ahead: tuple[Migration, ...] = ()  # revisions the database has beyond the deployed code
    unknown: tuple[str, ...] = ()  # revisions no script knows
    tip_pending: tuple[Migration, ...] = ()  # what releasing the tip would run
    error: str | None = None


@dataclass(frozen=True)
class Service:
    service: str
    container: str
    state: str
    health: str
    image: str
    started_at: str
    restart_count: int
    healthy: bool
    # Running, its Docker healthcheck still "starting": not run once yet (the first run comes
    # one interval after the start), or failed fewer times than its retries. Docker has not
    # judged it: not healthy yet, not unhealthy either; not a problem (unhealthy is).
    health_pending: bool = False
    health_checks: int = 0  # how many results of its healthcheck the engine keeps


@dataclass(frozen=True)
class ProxyState:
    container: str
    state: str  # running, exited, … ("missing": no such container)
    routes_to: tuple[str, ...]  # the web containers (or addresses) it sends new requests to
    error: str | None = None


def proxy_state(routes: Any, containers: Sequence[Container], web_service: str) -> tuple[ProxyState, list[str]]:
    """The proxy as status shows it, and what is wrong with it (pure)."""
    by_address = {ip: c.name for c in containers if c.service == web_service and c.state == "running" for ip in c.ips}
    named = tuple(f"{by_address.get(address, address)}" + ("" if address in by_address else f":{port}")
                  for address, port in routes.serving)
    problems = []
    if routes.state != "running":
        problems.append(f"the proxy {routes.name} does not run ({routes.state or 'no such container'}): the site does not answer")
    elif routes.error:
        problems.append(f"the proxy {routes.name} does not answer its runtime API: {routes.error}")
    elif not routes.serving:
        problems.append(f"the proxy {routes.name} sends requests to no container")
    else:
        strays = [f"{a}:{p}" for a, p in routes.serving if a not in by_address]
        if strays:
            problems.append(f"the proxy {routes.name} sends requests to {', '.join(strays)}, which no running "
                            f"{web_service} container has")
    return ProxyState(routes.name, routes.state or "missing", named, routes.error), problems


@dataclass(frozen=True)
class SwarmService:
    """One service of the stack on Swarm, as its manager reports it."""

    service: str
    image: str
    desired: int | None  # None: global (a task per node)
    running: int  # tasks running its spec's image
    update: str  # its last update: "", updating, completed, paused, rollback_*
    update_message: str
    tasks: tuple[str, ...]  # "node: state" of each task Swarm wants running (errors included)


@dataclass(frozen=True)
class SwarmNodeState:
    name: str
    address: str
    state: str  # ready, down, …
    availability: str
    role: str


def swarm_problems(services: Sequence[SwarmService], nodes: Sequence[SwarmNodeState], expected: Sequence[str]) -> list[str]:
    """Sentences for what is wrong with a stack on its swarm (pure)."""
    problems = []
    present = {s.service for s in services}
    for name in expected:
        if name not in present:
            problems.append(f"the stack has no service {name}")
    for s in services:
        wanted = s.desired if s.desired is not None else sum(1 for n in nodes if n.state == "ready" and n.availability == "active")
        if s.running < wanted:
            problems.append(f"service {s.service}: {s.running} of {wanted} task(s) running"
                            + (f" ({'; '.join(t for t in s.tasks if 'running' not in t)})" if s.tasks else ""))
        if s.update in ("paused", "rollback_started", "rollback_paused", "rollback_completed"):
            problems.append(f"the last update of {s.service} was {s.update.replace('_', ' ')}: {s.update_message or 'no message'}")
    for n in nodes:
        if n.state != "ready" and n.availability == "active":
            problems.append(f"node {n.name} ({n.address}) is {n.state}")
    return problems


@dataclass(frozen=True)
class LockState:
    held: bool
    holder: str | None = None
    command: str | None = None
    acquired_at: str | None = None
    stale: bool = False  # left by an owner that is gone (the lease itself is free)
    gone_since: str | None = None


@dataclass(frozen=True)
class ReleaseSummary:
    id: str
    kind: str
    outcome: str
    commit: str | None
    finished_at: str
    user: str


@dataclass(frozen=True)
class BackupSummary:
    id: str
    created_at: str
    size: int
    revision: tuple[str, ...]
    release: str | None
    path: str
    verification: str | None = None  # verified | failed | inconclusive; None: never restore-verified
    verification_summary: str | None = None  # the verdict in one line, with its evidence or problems
    copies: tuple[str, ...] = ()  # the backup_copy places a copy was made to ("local:DIR", "host:HOST:DIR")


@dataclass(frozen=True)
class Status:
    """Everything ``deployer status`` reports; ``to_dict()`` is the ``--json`` document."""

    environment: str
    host: str
    path: str
    checked_at: str
    seconds: float
    code: CodeState
    database: DatabaseState
    services: tuple[Service, ...]
    lock: LockState
    last_release: ReleaseSummary | None
    last_backup: BackupSummary | None
    problems: tuple[str, ...]
    exit_code: int
    interrupted: str | None = None  # an interrupted run, described
    running: str | None = None  # the commit the running web container was built from
    proxy: ProxyState | None = None  # behind deployer's proxy: where it sends requests
    swarm: tuple[SwarmService, ...] | None = None  # on Swarm: the stack's services and their tasks
    nodes: tuple[SwarmNodeState, ...] = ()  # on Swarm: the swarm's nodes

    @property
    def in_sync(self) -> bool:
        return self.exit_code == StatusCode.IN_SYNC

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data = {"schema": SCHEMA_VERSION, **data, "in_sync": self.in_sync}
        data["verdict"] = self.database.verdict
        return data


@dataclass(frozen=True)
class History:
    """The journal of an environment, newest first; ``to_dict()`` is the ``--json`` document."""

    environment: str
    host: str
    total: int
    entries: tuple[Record, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **asdict(self)}


# --------------------------------------------------------------------------- pure assessment


def _migrations(steps: Sequence[Any]) -> tuple[Migration, ...]:
    return tuple(Migration(step.revision, step.message) for step in steps)


def assess(
    revisions: Sequence[str] | None,
    deployed: MigrationScripts | None,
    tip: MigrationScripts | None,
    *,
    error: str | None = None,
) -> DatabaseState:
    """Judge the database against the deployed code's migrations (and the tip's).

    ``revisions`` None means the database could not be read (``error`` says why);
    ``deployed`` None means nothing is deployed. A revision the deployed scripts do not
    know but the tip's do is a database AHEAD of the deployed code (old code on a newer
    schema); known to neither, it is UNKNOWN. The tip's heads only decide the verdict
    when the database is otherwise up to date: unmerged heads there block the next release.
    """
    from deployer.db.migrations import VerdictKind, verdict

    deployed_heads = deployed.heads if deployed else ()
    tip_heads = tip.heads if tip else ()
    if deployed is None:
        shown = "not read" if revisions is None else (", ".join(revisions) or "no revision")
        return DatabaseState(
            reachable=revisions is not None, revisions=tuple(revisions) if revisions is not None else None,
            deployed_heads=(), tip_heads=tip_heads, verdict=NOT_DEPLOYED,
            summary=f"nothing deployed yet (database: {shown})", error=error,
        )
    if revisions is None:
        return DatabaseState(
            reachable=False, revisions=None, deployed_heads=deployed_heads, tip_heads=tip_heads,
            verdict=DATABASE_UNREACHABLE, summary=f"cannot read the database: {error or 'unknown error'}", error=error,
        )
    current = tuple(sorted(revisions))
    found = verdict(current, deployed)
    if (found.kind is VerdictKind.UNKNOWN_REVISION and tip is not None and len(deployed_heads) == 1
            and all(r in tip.revisions for r in current) and deployed_heads[0] in tip.revisions):
        beyond = verdict(current, tip, target=deployed_heads[0])
        if beyond.kind is VerdictKind.AHEAD:
            found = beyond
    tip_pending: tuple[Migration, ...] = ()
    tip_split = len(tip_heads) > 1
    if tip is not None and not tip_split and all(r in tip.revisions for r in current):
        ahead_of_tip = verdict(current, tip)
        if ahead_of_tip.kind in (VerdictKind.PENDING, VerdictKind.NOT_INITIALISED):
            tip_pending = _migrations(ahead_of_tip.steps)
    kind = found.kind.value
    summary = found.summary
    if found.kind is VerdictKind.MULTIPLE_HEADS:
        summary = f"the deployed code has {len(deployed_heads)} migration heads ({', '.join(deployed_heads)})"
    elif found.kind is VerdictKind.UP_TO_DATE and tip_split:
        kind = MULTIPLE_HEADS
        summary = (
            f"database up to date with the deployed code, but the branch tip has {len(tip_heads)} migration heads "
            f"({', '.join(tip_heads)}): merge them before the next release"
        )
    elif found.kind is VerdictKind.AHEAD:
        summary = (
            f"database at {', '.join(current)} is {len(found.steps)} migration(s) ahead of the deployed code "
            f"(head {', '.join(deployed_heads)}): old code runs on a newer schema"
        )
    elif found.kind is VerdictKind.UNKNOWN_REVISION:
        summary = f"database at {', '.join(found.unknown)}, a revision no migration script knows (deployed or on the branch)"
    return DatabaseState(
        reachable=True,
        revisions=current,
        deployed_heads=deployed_heads,
        tip_heads=tip_heads,
        verdict=kind,
        summary=summary,
        pending=_migrations(found.steps) if found.kind in (VerdictKind.PENDING, VerdictKind.NOT_INITIALISED) else (),
        ahead=_migrations(found.steps) if found.kind is VerdictKind.AHEAD else (),
        unknown=found.unknown,
        tip_pending=tip_pending,
    )


def service_problems(services: Sequence[Service], expected: Sequence[str]) -> list[str]:
    """Sentences for services that are missing, stopped or unhealthy."""
    problems = []
    present = {s.service for s in services}
    for name in expected:
        if name not in present:
            problems.append(f"service {name} has no container")
    for s in services:
        if not s.healthy and not s.health_pending:
            state = s.state + (f", {s.health}" if s.health else "")
            problems.append(f"service {s.service} is not healthy ({state})")
    return problems


def code_problems(code: CodeState) -> list[str]:
    if code.deployed is None or code.tip is None:
        return [code.error] if code.error else []
    if code.deployed == code.tip:
        return []
    if code.behind and not code.ahead:
        return [f"the deployed commit {code.deployed[:12]} is {code.behind} commit(s) behind {code.branch}"]
    if code.ahead and not code.behind:
        return [f"the deployed commit {code.deployed[:12]} is {code.ahead} commit(s) ahead of {code.branch}"]
    if code.ahead is not None and code.behind is not None:
        return [f"the deployed commit {code.deployed[:12]} has diverged from {code.branch} ({code.ahead} ahead, {code.behind} behind)"]
    return [f"the deployed commit {code.deployed[:12]} is not the tip of {code.branch} ({code.tip[:12]})"]


def exit_code_for(database: DatabaseState, problems: Sequence[str], interrupted: str | None = None) -> int:
    """An interrupted run first (16), then the schema verdict; any other problem is drift (15)."""
    if interrupted:
        return int(StatusCode.INTERRUPTED)
    code = _VERDICT_CODES.get(database.verdict, StatusCode.DRIFT)
    if code != StatusCode.IN_SYNC:
        return int(code)
    return int(StatusCode.DRIFT) if problems else int(StatusCode.IN_SYNC)


# --------------------------------------------------------------------------- reading a host


def read_containers(host: Host, project: str) -> list[Container]:
    """Every container of the project, the one-off ones (migrations) included."""
    from deployer.server import facts

    return facts.project_containers(host, project)


def _service(c: Container) -> Service:
    return Service(
        service=c.service, container=c.name, state=c.state, health=c.health, image=c.image,
        started_at=c.started_at, restart_count=c.restart_count, healthy=c.is_healthy,
        health_pending=c.state == "running" and c.health == "starting", health_checks=c.health_results,
    )


def read_newest_backup(host: Host, backup_dir: str) -> BackupSummary | None:
    """The newest backup's description (ids sort by time), read alone rather than all of them."""
    import json

    from deployer.server.backups import Backup, description_paths

    for path in reversed(description_paths(host, backup_dir) or []):
        result = host.run(["cat", path], timeout=30)
        try:
            data = json.loads(result.stdout) if result.ok else None
            if not isinstance(data, dict):
                continue
            described = Backup.from_dict(data)
            verdict = described.verification
            return BackupSummary(
                id=str(data["id"]), created_at=str(data.get("created_at", "")), size=int(data.get("size", 0)),
                revision=tuple(data.get("revision") or ()), release=data.get("release"), path=str(data.get("path", "")),
                verification=verdict.state if verdict else None, verification_summary=verdict.summary() if verdict else None,
                copies=tuple(c.where for c in described.copies),
            )
        except (ValueError, TypeError, KeyError):
            continue
    return None


def _host_scripts(host: Host, path: str, sha: str, migrations_dir: str) -> MigrationScripts:
    """Migration scripts of ``sha`` read from the host's checkout (when the local repo lacks it)."""
    from deployer.commands import git as gitops
    from deployer.db.migrations import scripts_from_sources, version_files

    listing = host.run(gitops.list_files(path, sha, migrations_dir), timeout=30).check("list the migrations on the host")
    files = version_files(gitops.parse_file_list(listing.stdout), migrations_dir)
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = pool.map(lambda f: host.run(gitops.show_file(path, sha, f), timeout=30).check(f"read {f}").stdout, files)
        sources = dict(zip(files, texts, strict=False))
    return scripts_from_sources(sources, location=f"{migrations_dir} at {sha[:12]} on {host.name}")


@dataclass(frozen=True)
class _Tip:
    sha: str
    subject: str
    scripts: MigrationScripts


def _load(cfg_or_path: Config | str | Path | None) -> Config:
    from deployer.config import Config, load_config

    if isinstance(cfg_or_path, Config):
        return cfg_or_path
    return load_config(cfg_or_path)


def _import_source() -> None:
    """Import GitPython and the migrations reader (the revision map itself only when a path is asked for)."""
    import git  # noqa: F401

    import deployer.db.migrations  # noqa: F401
    import deployer.source  # noqa: F401


def _import_database() -> None:
    """Import what reading the database adds: psycopg2 (libpq reads the URL: no SQLAlchemy)."""
    import psycopg2  # noqa: F401
    import psycopg2.extensions  # noqa: F401

    import deployer.server.facts  # noqa: F401


def _import_mysql() -> None:
    """Import what reading a MySQL/MariaDB database adds: PyMySQL (only for such a database)."""
    import pymysql  # noqa: F401

    import deployer.db.mysql  # noqa: F401


def _target(cfg: Config, env_name: str, host: Host, entry: HostEntry | None = None) -> Target:
    """A Target without probing compose: status runs no compose command it can avoid."""
    from deployer.server.target import Target, make_compose, runs_some

    env = cfg.environment(env_name)
    if entry is not None:
        env = env.on(entry)
    return Target(config=cfg, env=env, host=host, compose=make_compose(cfg, env, partial=runs_some(entry)), entry=entry)


@dataclass(frozen=True)
class FleetStatus:
    """``deployer status`` of an environment of several hosts: each host's report (the
    database read once, on the primary), and where the hosts disagree."""

    environment: str
    hosts: tuple[Status, ...]  # the primary first
    disagreements: tuple[str, ...]
    exit_code: int
    seconds: float

    @property
    def in_sync(self) -> bool:
        return self.exit_code == StatusCode.IN_SYNC

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "environment": self.environment,
                "hosts": [status.to_dict() for status in self.hosts], "agree": not self.disagreements,
                "disagreements": list(self.disagreements), "exit_code": self.exit_code, "in_sync": self.in_sync,
                "seconds": self.seconds}


def fleet_status(cfg_or_path: Config | str | Path | None, env: str) -> FleetStatus:
    """The status of every host of ``env``, side by side; a host that cannot be reached is
    reported (exit 3) without hiding the others."""
    from deployer.errors import HostError

    started = time.monotonic()
    cfg = _load(cfg_or_path)
    environment = cfg.environment(env)
    primary_entry, *others = environment.hosts
    primary = read_status(cfg, env, entry=primary_entry)[0]
    known = (primary.database.revisions, primary.database.error)
    reports = [primary]
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(others))), thread_name_prefix="status-host") as pool:
        futures = [pool.submit(read_status, cfg, env, entry=entry, known_database=known) for entry in others]
        for entry, future in zip(others, futures, strict=True):
            try:
                reports.append(future.result()[0])
            except HostError as error:
                reports.append(_unreachable(cfg, env, entry, error.message))
    disagreements = fleet_disagreements(reports)
    codes = [r.exit_code for r in reports]
    code = next((c for c in codes if c == StatusCode.UNREACHABLE), None) or max(codes)
    if disagreements and code == StatusCode.IN_SYNC:
        code = StatusCode.DRIFT
    return FleetStatus(env, tuple(reports), tuple(disagreements), int(code), round(time.monotonic() - started, 3))


def _unreachable(cfg: Config, env: str, entry: HostEntry, message: str) -> Status:
    """The report of a host that did not answer."""
    environment = cfg.environment(env)
    return Status(
        environment=env, host=str(entry.spec), path=environment.path, checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=0.0, code=CodeState(branch=environment.branch, deployed=None, deployed_subject=None, tip=None, tip_subject=None,
                                    ahead=None, behind=None, error=message),
        database=assess(None, None, None, error="read on the primary"), services=(), lock=LockState(held=False),
        last_release=None, last_backup=None, problems=(f"host {entry.spec} cannot be reached: {message}",),
        exit_code=int(StatusCode.UNREACHABLE),
    )


def fleet_disagreements(reports: Sequence[Status]) -> list[str]:
    """Where hosts that should run the same release do not: the code they run, their
    checkouts, the last release each journaled (pure)."""
    found = []
    for what, value in (("run", lambda r: (r.running or r.code.deployed or "nothing")[:12]),
                        ("have the checkout at", lambda r: (r.code.deployed or "nothing")[:12]),
                        ("last journaled", lambda r: r.last_release.id if r.last_release else "nothing")):
        groups: dict[str, list[str]] = {}
        for report in reports:
            if report.exit_code == StatusCode.UNREACHABLE and not report.services:
                continue
            groups.setdefault(value(report), []).append(report.host)
        if len(groups) > 1:
            found.append(f"hosts disagree on what they {what}: " + "; ".join(
                f"{', '.join(hosts)}: {key}" for key, hosts in sorted(groups.items(), key=lambda item: -len(item[1]))))
    return found


def _locate_database(target: Target, found: Sequence[Container]) -> Any:
    """Where the database is: deploy.toml's database_url; else what the running containers'
    environment says (the app's own truth, and no `compose config` run on the host);
    else the checkout's compose config."""
    from deployer.commands.compose import ComposeConfig, ServiceConfig
    from deployer.db.url import locate
    from deployer.server import facts
    from deployer.server.backups import location_of

    if target.env.database_url:
        return location_of(target)
    if facts.running(found, target.config.app.web_service) is not None:
        services = {
            c.service: ServiceConfig(name=c.service, image=c.image, environment=c.env)
            for c in found
            if c.state == "running" and not c.oneoff
        }
        with contextlib.suppress(DeployerError):  # the compose config below names the problem
            return locate(target.config.app, target.env, ComposeConfig(services=services))
    if not target.host.run(["test", "-e", target.compose.files[0]], timeout=30).ok:
        return None
    return facts.database_location(target, facts.compose_config(target))


@dataclass(frozen=True)
class Readings:
    """What status read on the way to its report, for the reports built on the same reads
    (``deployer migrations``): the scripts of the running code and of the branch tip, the
    database's revisions, the journal."""

    cfg: Config
    host: Host
    running_scripts: MigrationScripts | None  # of the code that runs (or the checkout's)
    running_commit: str | None
    tip_scripts: MigrationScripts | None
    tip_commit: str | None
    revisions: tuple[str, ...] | None  # None: the database could not be read (``database_error``)
    database_error: str | None
    records: tuple[Record, ...]


def status(cfg_or_path: Config | str | Path | None, env: str, *, host: Host | None = None) -> Status:
    """Read the state of environment ``env`` (see the module docstring). Writes nothing.

    Raises :class:`~deployer.errors.HostError` (exit 3) when the host cannot be reached;
    an unreachable database is a verdict in the report, not an exception.
    """
    return read_status(cfg_or_path, env, host=host, keep=None)[0]


def read_status(
    cfg_or_path: Config | str | Path | None, env: str, *, host: Host | None = None,
    keep: Callable[[Readings], T] | None = None, entry: HostEntry | None = None,
    known_database: tuple[tuple[str, ...] | None, str | None] | None = None,
) -> tuple[Status, T | None]:
    """:func:`status`, and ``keep`` applied to its :class:`Readings` while the host is still
    open (None without ``keep``). ``entry``: one of the environment's several hosts; with
    ``known_database`` (its revisions and error, as the primary read them) the database is not read
    again from that host."""
    started = time.monotonic()
    checked_at = datetime.now(UTC).isoformat(timespec="seconds")
    cfg = _load(cfg_or_path)
    environment = cfg.environment(env)
    if entry is None and environment.many_hosts:
        entry = environment.hosts[0]  # one host's report: the primary's
    if entry is not None:
        environment = environment.on(entry)
    branch = environment.branch or cfg.app.branch
    # Light modules first, in this thread, so no two threads import the same module.
    from deployer.commands import docker as containers_cmds  # noqa: F401
    from deployer.commands import git as gitops
    from deployer.hosts import connect
    from deployer.server import journal, lock, runlog  # noqa: F401
    from deployer.server import target as _  # noqa: F401

    # The slow imports load in ONE thread while this one waits on the SSH handshake: a
    # module imported from two threads at once can be seen partially initialised, so every
    # other thread waits for the stage it needs.
    importer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="status-import")
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="status")
    serial = ThreadPoolExecutor(max_workers=1, thread_name_prefix="status-reads")
    own_host = host is None
    try:
        source_ready = importer.submit(_import_source)
        warm = importer.submit(_import_database)
        repo_future = pool.submit(_after, source_ready, _open_repo_and_tip, cfg, environment.remote, branch)
        if host is None:
            host = connect(environment.host)
        target = _target(cfg, env, host, entry)
        state_dir = target.state_dir

        # Over SSH the small reads go one after the other in one thread: on a warm command
        # shell each takes milliseconds, while a thread each would start a command shell
        # each (an SSH session apiece, ~0.15 s, all at once). Here, processes run side by side.
        reads = pool if host.is_local else serial
        head_f = reads.submit(host.run, gitops.rev_parse_head(environment.path), timeout=30)
        containers_f = pool.submit(read_containers, host, cfg.app.name)
        lock_f = reads.submit(lock.read_lock, host, state_dir)
        journal_f = reads.submit(journal.read, host, state_dir)
        runlog_f = reads.submit(runlog.read, host, state_dir)
        backup_f = reads.submit(read_newest_backup, host, environment.backup_dir)
        proxy_f = pool.submit(_read_proxy, host, cfg) if environment.proxy is not None and not environment.swarm else None
        swarm_f = reads.submit(_read_swarm, host, cfg.app.name, cfg.app.web_service) if environment.swarm else None

        every = containers_f.result()
        if swarm_f is not None:
            # A task's container that stopped is history: Swarm replaced it.
            every = [c for c in every if c.state == "running" or c.oneoff]
        containers = [c for c in every if not c.oneoff]
        db_error: str | None = None
        db_revisions: tuple[str, ...] | None = None
        if known_database is not None:
            db_revisions, db_error = known_database
        else:
            location_f = pool.submit(_after, warm, _locate_database, target, every)
            try:
                location = location_f.result()
            except DeployerError as error:
                location, db_error = None, error.message
            if location is not None:
                if location.engine == "mysql":
                    importer.submit(_import_mysql).result()  # in the one importing thread (see above)
                db_revisions, db_error = _read_db(target, location, every)
            elif db_error is None:
                db_error = "nothing deployed: no compose file to locate the database with"

        head = head_f.result()
        deployed_sha = gitops.parse_sha(head.stdout) if head.ok else None
        repo, tip, tip_error = repo_future.result()
        records = journal_f.result()
        interrupted_run = runlog_f.result()
        if (interrupted_run is not None and interrupted_run.phase != runlog.RECOVERING
                and any(r.id == interrupted_run.id for r in records)):
            # Journaled before it stopped: finished; the next command only removes its step log.
            # (A run whose recovery was incomplete is journaled too, and its step log kept on purpose.)
            interrupted_run = None
        swarm_read = swarm_f.result() if swarm_f is not None else None
        running_sha, running_problem = _running_commit(cfg, containers, records, interrupted_run, deployed_sha,
                                                       web_image=swarm_read[2] if swarm_read is not None else None)
        judged_sha = running_sha or deployed_sha
        deployed_scripts, deployed_subject, ahead, behind = None, None, None, None
        if deployed_sha is not None:
            deployed_scripts, deployed_subject, ahead, behind = _deployed_code(
                repo, host, environment.path, deployed_sha, tip.sha if tip else None, cfg.app.migrations_dir
            )
        if judged_sha is not None and judged_sha != deployed_sha:
            # The schema is judged against the code that runs, not a checkout moved past it.
            deployed_scripts = _deployed_code(repo, host, environment.path, judged_sha, None, cfg.app.migrations_dir)[0]
        code = CodeState(
            branch=branch, deployed=deployed_sha, deployed_subject=deployed_subject,
            tip=tip.sha if tip else None, tip_subject=tip.subject if tip else None,
            ahead=ahead, behind=behind, error=tip_error,
        )
        warm.result()
        database = assess(db_revisions, deployed_scripts, tip.scripts if tip else None, error=db_error)
        services = tuple(sorted((_service(c) for c in containers), key=lambda s: (s.service, s.container)))
        state = lock_f.result()
        last = records[-1] if records else None
        problems = code_problems(code)
        if running_problem:
            problems.append(running_problem)
        swarm_services: tuple[SwarmService, ...] | None = None
        swarm_nodes: tuple[SwarmNodeState, ...] = ()
        if swarm_read is not None:
            swarm_services, swarm_nodes = swarm_read[0], swarm_read[1]
            if deployed_sha is not None:
                problems += swarm_problems(swarm_services, swarm_nodes, [s for s in (cfg.app.db_service, cfg.app.web_service) if s])
        elif deployed_sha is not None:
            expected = [s for s in target.services_here((cfg.app.db_service, cfg.app.web_service)) if s]
            problems += service_problems(services, expected)
        proxied: ProxyState | None = None
        if proxy_f is not None:
            proxied, proxy_problems = proxy_state(proxy_f.result(), containers, cfg.app.web_service)
            if deployed_sha is not None:
                problems += proxy_problems
        leftovers = [c.name for c in every if c.oneoff and "-migrate-" in c.name or c.oneoff and "-downgrade-" in c.name]
        if leftovers:
            problems.append(f"a migration container is left from an interrupted run: {', '.join(leftovers)}")
        interrupted = None
        if interrupted_run is not None and not state.held:
            interrupted = interrupted_run.describe() + f": `deployer recover {env}` converges it"
            problems.append(interrupted)
        if state.stale and state.info is not None:
            problems.append(f"the lock's owner {state.info.holder} is gone"
                            + (f" since {state.gone_since}" if state.gone_since else "")
                            + ": the next command takes it over")
        if last is not None and last.outcome != journal.SUCCEEDED and interrupted_run is None:
            problems.append(f"the last {last.kind} {last.id} {last.outcome}")
        newest = backup_f.result()
        if newest is not None and newest.verification == "failed":
            problems.append(f"the newest backup {newest.id} {newest.verification_summary}: restores refuse it without "
                            f"--force; take a new one: `deployer backups create {env} --verify`")
        info = state.info
        kept = keep(Readings(
            cfg=cfg, host=host, running_scripts=deployed_scripts, running_commit=judged_sha,
            tip_scripts=tip.scripts if tip else None, tip_commit=tip.sha if tip else None,
            revisions=db_revisions, database_error=db_error, records=tuple(records),
        )) if keep is not None else None
        return Status(
            environment=env,
            host=host.name,
            path=environment.path,
            checked_at=checked_at,
            seconds=round(time.monotonic() - started, 3),
            code=code,
            database=database,
            services=services,
            lock=LockState(held=state.held, holder=info.holder if info else None, command=info.command if info else None,
                           acquired_at=info.acquired_at if info else None, stale=state.stale, gone_since=state.gone_since),
            last_release=ReleaseSummary(
                id=last.id, kind=last.kind, outcome=last.outcome, commit=last.commit,
                finished_at=last.finished_at, user=last.user,
            ) if last else None,
            last_backup=newest,
            problems=tuple(problems),
            exit_code=exit_code_for(database, problems, interrupted),
            interrupted=interrupted,
            running=running_sha,
            proxy=proxied,
            swarm=swarm_services,
            nodes=swarm_nodes,
        ), kept
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        serial.shutdown(wait=True, cancel_futures=True)
        importer.shutdown(wait=True)
        if own_host and host is not None:
            host.close()


def _read_proxy(host: Host, cfg: Config) -> Any:
    from deployer.proxy.runtime import read_routes
    from deployer.proxy.site import CONTAINER_PREFIX

    return read_routes(host, CONTAINER_PREFIX + cfg.app.name)


def _read_swarm(host: Host, stack: str, web: str) -> tuple[tuple[SwarmService, ...], tuple[SwarmNodeState, ...], str | None]:
    """The stack's services with their tasks, the swarm's nodes, and the image the web service runs."""
    from deployer.swarm import runtime

    nodes = runtime.nodes(host)
    names = {n.id: n.hostname for n in nodes}
    services = runtime.services(host, stack)
    tasks = runtime.tasks(host, stack)
    shown = []
    for s in services:
        mine = [t for t in tasks if t.service_id == s.id and t.desired == "running"]
        lines = tuple(sorted(f"{names.get(t.node_id, t.node_id[:12] or 'unassigned')}: {t.state}"
                             + (f" ({t.error})" if t.error else "") + ("" if t.image == s.image else " (another image)")
                             for t in mine))
        shown.append(SwarmService(service=s.short, image=s.image, desired=s.replicas,
                                  running=sum(1 for t in mine if t.state == "running" and t.image == s.image),
                                  update=s.update_state, update_message=s.update_message, tasks=lines))
    return (tuple(shown), tuple(SwarmNodeState(n.hostname, n.address, n.state, n.availability, n.role) for n in nodes),
            next((s.image for s in services if s.short == web), None))


def _running_commit(cfg: Config, containers: Sequence[Container], records: Sequence[Record], run: Any,
                    deployed: str | None, *, web_image: str | None = None) -> tuple[str | None, str | None]:
    """The commit the running web container was built from, and a problem when that is not the checkout's.

    The journal records each release's image ids; an interrupted run's step log records what
    it built. The checkout alone proves nothing: a run killed after sync leaves it ahead.
    """
    from deployer.server import journal

    if web_image is None:
        web = next((c for c in containers if c.service == cfg.app.web_service and c.state == "running"), None)
        if web is None:
            return None, None
        web_image = web.image_id
    released = journal.running_image_release(records, web_image)
    sha = released.commit if released else None
    if sha is None and run is not None and web_image in run.built.values():
        sha = run.goal.commit
    if sha is None:
        if any(r.image_ids for r in records):
            return None, (f"the running {cfg.app.web_service} image {web_image[:19]} is from no recorded release: "
                          "compared with the checkout")
        return None, None
    if deployed is not None and sha != deployed:
        return sha, f"the checkout is at {deployed[:12]} but the running code is {sha[:12]} (judged by the running code)"
    return sha, None


def _after(first: Future[None], fn: Callable[..., T], *args: Any) -> T:
    first.result()
    return fn(*args)


def _read_db(target: Target, location: Any, found: Sequence[Container]) -> tuple[tuple[str, ...] | None, str | None]:
    from deployer.server.facts import read_revisions

    try:
        revisions = read_revisions(target, location, found, connect_timeout=5)
    except DeployerError as error:
        return None, error.message
    if revisions is None:
        return None, _not_running(target, location, found)
    return revisions, None


def _not_running(target: Target, location: Any, found: Sequence[Container]) -> str:
    """Why the database did not answer: the state of the container that should run it."""
    from deployer.db.url import parse

    host = parse(location.url).host if location.engine in ("postgresql", "mysql") else None
    services = {c.service for c in found if not c.oneoff}
    service = host if host in services else target.config.app.db_service or target.config.app.web_service
    states = [c.state for c in found if c.service == service and not c.oneoff]
    return f"the {service} container is " + (states[0] if states else "missing") + f" (database from {location.source})"


def _open_repo_and_tip(cfg: Config, remote: str | None, branch: str) -> tuple[Any, _Tip | None, str | None]:
    """The local repository and the branch tip as the remote has it (fetched here)."""
    from deployer import source

    repo = source.open_repo(cfg.root)
    try:
        url = source.remote_url(repo, remote, cfg.root)
        commit = source.resolve(repo, url, branch)
        scripts = source.migration_scripts(repo, commit.sha, cfg.app.migrations_dir)
    except DeployerError as error:
        return repo, None, f"cannot read the tip of {branch}: {error.message}"
    return repo, _Tip(commit.sha, commit.subject, scripts), None


def _deployed_code(
    repo: Any, host: Host, path: str, sha: str, tip: str | None, migrations_dir: str
) -> tuple[MigrationScripts | None, str | None, int | None, int | None]:
    """The deployed commit's scripts and subject, and how far it is from the tip."""
    import git

    from deployer import source

    try:
        commit = repo.commit(sha)
        subject: str | None = commit.summary
        scripts = source.migration_scripts(repo, sha, migrations_dir)
    except (ValueError, git.BadName, git.GitCommandError):
        # Not in the local repository (never fetched, or gone from the remote): the
        # host's checkout has it.
        subject = None
        scripts = _host_scripts(host, path, sha, migrations_dir)
        return scripts, subject, None, None
    ahead = behind = None
    if tip is not None:
        try:
            counts = repo.git.rev_list("--left-right", "--count", f"{sha}...{tip}").split()
            ahead, behind = int(counts[0]), int(counts[1])
        except (git.GitCommandError, ValueError, IndexError):
            pass
    return scripts, subject, ahead, behind


# --------------------------------------------------------------------------- history


def history(cfg_or_path: Config | str | Path | None, env: str, *, limit: int | None = None, host: Host | None = None) -> History:
    """The environment's releases and rollbacks, newest first (at most ``limit``)."""
    from deployer.server import journal

    cfg = _load(cfg_or_path)
    environment = cfg.environment(env)
    own_host = host is None
    if host is None:
        from deployer.hosts import connect

        host = connect(environment.host)
    try:
        records = journal.read(host, environment.state_dir)
    finally:
        if own_host:
            host.close()
    newest = list(reversed(records))
    if limit is not None:
        newest = newest[: max(0, limit)]
    entries = tuple(newest)
    return History(environment=env, host=host.name, total=len(records), entries=entries)


@dataclass(frozen=True)
class FleetHistory:
    """The journals of an environment's several hosts (each host keeps its own, under the
    release ids they share), and where their newest records differ."""

    environment: str
    hosts: tuple[History, ...]  # the primary first
    disagreements: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "environment": self.environment, "hosts": [h.to_dict() for h in self.hosts],
                "agree": not self.disagreements, "disagreements": list(self.disagreements)}


def fleet_history(cfg_or_path: Config | str | Path | None, env: str, *, limit: int | None = None) -> FleetHistory:
    """:func:`history` of every host of ``env``, read side by side."""
    from deployer.hosts import connect

    cfg = _load(cfg_or_path)
    entries = cfg.environment(env).hosts

    def one(entry: HostEntry) -> History:
        return history(cfg, env, limit=limit, host=connect(entry.spec))

    with ThreadPoolExecutor(max_workers=min(8, len(entries)), thread_name_prefix="history-host") as pool:
        histories = tuple(pool.map(one, entries))
    newest: dict[str, list[str]] = {}
    for h in histories:
        top = h.entries[0] if h.entries else None
        newest.setdefault(f"{top.id} ({top.outcome})" if top else "nothing", []).append(h.host)
    found = () if len(newest) < 2 else ("hosts disagree on their newest record: " + "; ".join(
        f"{', '.join(hosts)}: {key}" for key, hosts in sorted(newest.items(), key=lambda item: -len(item[1]))),)
    return FleetHistory(env, histories, found)


# --------------------------------------------------------------------------- text


def _age(iso: str | None, now: datetime) -> str:
    from deployer.server.lock import format_age

    if not iso or iso.startswith("0001-"):
        return "?"
    try:
        stamp = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        # docker prints nanoseconds, which fromisoformat (3.11) does not take
        try:
            head, _, _ = iso.partition(".")
            stamp = datetime.fromisoformat(head + "+00:00")
        except ValueError:
            return "?"
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return format_age(max(0.0, (now - stamp).total_seconds()))


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "none"


def verdict_text(d: DatabaseState) -> str:
    """The verdict line: the verdict first, said once ("up to date at 56b6…", not "up to date:
    up to date at 56b6…")."""
    if d.verdict == PENDING and d.revisions is not None:
        return f"{len(d.pending)} pending: {', '.join(d.revisions) or 'no revision'} -> {', '.join(d.deployed_heads)}"
    if d.verdict.lower() in d.summary.lower():
        return d.summary
    return f"{d.verdict}: {d.summary}"


def verdict_tone(verdict: str) -> str:
    """How a verdict reads at a glance (a terminal colours it): ``good`` (in sync), ``warn``
    (a release or a first deploy fixes it) or ``bad`` (look before releasing)."""
    if verdict == UP_TO_DATE:
        return "good"
    if verdict in (PENDING, NOT_INITIALISED, NOT_DEPLOYED):
        return "warn"
    return "bad"


def render_status(s: Status, now: datetime | None = None) -> str:
    """The text report (pure)."""
    now = now or datetime.now(UTC)
    lines = [f"{s.environment} on {s.host}:{s.path}  (checked in {s.seconds:.2f}s)"]
    c = s.code
    if c.deployed is None:
        code = "nothing deployed"
    else:
        code = f"{_short(c.deployed)}" + (f" {c.deployed_subject!r}" if c.deployed_subject else "")
    if c.tip is None:
        tip = c.error or "tip unknown"
    elif c.deployed == c.tip:
        tip = f"= tip of {c.branch}"
    elif c.ahead is not None and c.behind is not None:
        tip = f"{c.behind} behind, {c.ahead} ahead of {c.branch} ({_short(c.tip)} {c.tip_subject!r})"
    else:
        tip = f"not the tip of {c.branch} ({_short(c.tip)})"
    lines.append(f"  code       {code}  {tip}")
    d = s.database
    revs = "unreadable" if d.revisions is None else (", ".join(d.revisions) or "no revision")
    lines.append(f"  database   {revs}  (deployed head {', '.join(d.deployed_heads) or 'none'}; "
                 f"tip head {', '.join(d.tip_heads) or 'none'})")
    lines.append(f"  verdict    {verdict_text(d)}")
    for m in d.pending:
        lines.append(f"               to run  {m.revision}  {m.message}")
    for m in d.ahead:
        lines.append(f"               beyond  {m.revision}  {m.message}")
    if d.tip_pending and d.verdict == UP_TO_DATE:
        lines.append(f"  next       releasing {c.branch} runs {len(d.tip_pending)} migration(s): "
                     + ", ".join(f"{m.revision} {m.message!r}" for m in d.tip_pending))
    if s.services:
        lines.append("  services")
        for sv in s.services:
            pending = " (first check due)" if not sv.health_checks else " (starting)"
            state = sv.state + (pending if sv.health_pending else f" ({sv.health})" if sv.health else "")
            since = f"since {_age(sv.started_at, now)}" if sv.state == "running" else ""
            mark = "ok" if sv.healthy else ".." if sv.health_pending else "!!"
            lines.append(f"    {mark} {sv.service:<12} {state:<20} {since:<14} {sv.image}")
    else:
        lines.append("  services   no containers")
    if s.swarm is not None:
        lines.append("  swarm      " + ", ".join(f"{n.name} {n.state}{'' if n.availability == 'active' else ' ' + n.availability}"
                                                  f"{' (manager)' if n.role == 'manager' else ''}" for n in s.nodes))
        for sw in s.swarm:
            wanted = "global" if sw.desired is None else str(sw.desired)
            mark = "ok" if (sw.desired is None or sw.running >= sw.desired) and not sw.update.startswith(("rollback", "paused")) else "!!"
            update = f", update {sw.update.replace('_', ' ')}" if sw.update else ""
            lines.append(f"    {mark} {sw.service:<16} {sw.running}/{wanted} running{update}  {sw.image[:19]}")
            for task in sw.tasks:
                lines.append(f"         {task}")
    if s.proxy is not None:
        p = s.proxy
        where = f"routes to {', '.join(p.routes_to)}" if p.routes_to else "routes to nothing"
        lines.append(f"  proxy      {p.container} {p.state}" + (f", {where}" if p.state == "running" and not p.error else "")
                     + (f" (runtime API: {p.error})" if p.error else ""))
    if s.lock.held:
        lines.append(f"  lock       held by {s.lock.holder} for '{s.lock.command}' since {s.lock.acquired_at} "
                     f"({_age(s.lock.acquired_at, now)} ago)")
    elif s.lock.stale:
        lines.append(f"  lock       free (left by {s.lock.holder}, gone" + (f" since {s.lock.gone_since})" if s.lock.gone_since else ")"))
    else:
        lines.append("  lock       free")
    if s.running and s.running != c.deployed:
        lines.append(f"  running    {_short(s.running)} (the running web container's code)")
    r = s.last_release
    lines.append(
        f"  release    {r.id} {r.kind} {r.outcome} {_age(r.finished_at, now)} ago by {r.user}" if r else "  release    none recorded"
    )
    b = s.last_backup
    lines.append(
        f"  backup     {b.id} ({b.size} bytes, revision {', '.join(b.revision) or 'none'}) {_age(b.created_at, now)} ago"
        if b else "  backup     none"
    )
    if b:
        lines.append(f"             {b.verification_summary or 'never restore-verified'}; "
                     + (f"copies: {', '.join(b.copies)}" if b.copies else "no copy elsewhere"))
    if s.problems:
        for problem in s.problems:
            lines.append(f"  problem    {problem}")
    lines.append(f"=> {'in sync' if s.in_sync else 'NOT in sync'} (exit {s.exit_code})")
    return "\n".join(lines)


def render_history(h: History) -> str:
    """The journal as a table, newest first (pure)."""
    if not h.entries:
        return f"{h.environment} on {h.host}: no release recorded"
    lines = [f"{h.environment} on {h.host}: {len(h.entries)} of {h.total} record(s), newest first"]
    for e in h.entries:
        before = ", ".join(e.revision_before) or "-"
        after = ", ".join(e.revision_after) or "-"
        lines.append(
            f"  {e.id:<24} {e.kind:<8} {e.outcome:<15} {_short(e.commit):<12} {before} -> {after}  "
            f"{e.seconds:.1f}s  {e.user}  {e.finished_at}"
        )
        if e.served:
            from deployer.proxy.probe import describe_served

            lines.append(f"      {describe_served(e.served)}")
        if e.error:
            lines.append(f"      error: {e.error.splitlines()[0][:200]}")
    return "\n".join(lines)



def render_fleet(fleet: FleetStatus, now: datetime | None = None) -> str:
    """The text report of several hosts: each host's, then where they disagree (pure)."""
    count = len(fleet.hosts)
    lines = [f"{fleet.environment}: {count} hosts (primary {fleet.hosts[0].host}; checked in {fleet.seconds:.2f}s)", ""]
    for report in fleet.hosts:
        lines += [render_status(report, now), ""]
    if fleet.disagreements:
        lines += [f"  ! {line}" for line in fleet.disagreements]
    else:
        lines.append(f"  the {count} hosts agree: same code, same checkout, same last release")
    return "\n".join(lines)


def render_fleet_history(fleet: FleetHistory) -> str:
    """Each host's history, then where their newest records differ (pure)."""
    lines: list[str] = []
    for h in fleet.hosts:
        lines += [render_history(h), ""]
    lines += [f"  ! {line}" for line in fleet.disagreements] or [f"  the {len(fleet.hosts)} hosts agree on their newest record"]
    return "\n".join(lines)
