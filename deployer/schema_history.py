"""``deployer migrations ENV``: the seed's ``flask db history`` and ``flask db current
--verbose``, for a server, with the releases that ran each migration.

Every revision of the running code (and of the branch tip when it differs), newest first,
marked:

- ``current``: the database is at it;
- ``applied``: an ancestor of a current revision (it ran);
- ``pending``: the code has it, the database has not run it yet;
- ``unknown``: the database is at a revision neither the running code nor the tip knows;
- ``undetermined``: the database could not be read, or is at an unknown revision, so
  whether this one ran cannot be told.

For applied ones: the release that applied it (walking the journal: a release or rollback
that succeeded applied what its ``revision_after`` has and its ``revision_before`` had not,
and took away the reverse), when, and that release's pre-upgrade backup, which brings the
data back to before it, with whether the host still keeps it. For every revision: whether
its downgrade exists and what its upgrade and its downgrade would drop (the analysis
release and rollback use).

The reads are :func:`deployer.status.read_status`'s plus one ``find`` listing the backups:
nothing is written on the host. The assembly (:func:`rows`) is pure.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deployer.config import Config
    from deployer.db.migrations import MigrationScripts, RevisionInfo
    from deployer.hosts import Host
    from deployer.server.journal import Record
    from deployer.status import Readings

SCHEMA_VERSION = 1

CURRENT = "current"
APPLIED = "applied"
PENDING = "pending"
UNKNOWN = "unknown"
UNDETERMINED = "undetermined"


@dataclass(frozen=True)
class Migration:
    """One revision, as ``deployer migrations`` shows it."""

    revision: str
    message: str
    state: str  # current | applied | pending | unknown | undetermined
    known_to: tuple[str, ...]  # "running" (the code that runs), "tip" (the branch tip); () for unknown
    marks: tuple[str, ...]  # head, base, branchpoint, mergepoint (as alembic's history names them), or
    # "head of the running code" for its head when the tip has revisions after it
    down_revision: tuple[str, ...]
    create_date: str = ""
    path: str = ""
    has_downgrade: bool | None = None
    upgrade_drops: tuple[str, ...] = ()  # what running its upgrade destroys
    downgrade_drops: tuple[str, ...] = ()  # what rolling back past it destroys
    applied_by: str | None = None  # the release (or rollback) that applied it
    applied_at: str | None = None
    backup: str | None = None  # that run's pre-upgrade backup: the data from before it
    backup_kept: bool | None = None  # the host still has it (None: no backup)


@dataclass(frozen=True)
class MigrationsReport:
    environment: str
    host: str
    running_commit: str | None
    tip_commit: str | None
    revisions: tuple[str, ...] | None  # the database's; None: not read (``database_error``)
    database_error: str | None
    migrations: tuple[Migration, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **asdict(self)}


# --------------------------------------------------------------------------- pure assembly


def _parents(info: RevisionInfo) -> tuple[str, ...]:
    down = info.down_revision
    return () if down is None else (down,) if isinstance(down, str) else tuple(down)


def _ancestry(graph: Mapping[str, RevisionInfo], revisions: Iterable[str]) -> set[str]:
    """The revisions and every revision they descend from (down revisions and depends_on)."""
    seen: set[str] = set()
    stack = list(revisions)
    while stack:
        revision = stack.pop()
        if revision in seen:
            continue
        seen.add(revision)
        info = graph.get(revision)
        if info is not None:
            stack.extend(_parents(info))
            stack.extend(d for d in info.depends_on if d in graph)
    return seen


def _newest_first(graph: Mapping[str, RevisionInfo]) -> list[str]:
    """Heads first, each revision after every revision that revises it (alembic's history
    order); ties by create date, newest first, then id."""
    children: dict[str, set[str]] = {r: set() for r in graph}
    for revision, info in graph.items():
        for parent in _parents(info):
            if parent in children:
                children[parent].add(revision)
    waiting = {r: len(c) for r, c in children.items()}

    def newest(revision: str) -> tuple[str, str]:
        return graph[revision].create_date, revision

    ready = sorted((r for r, n in waiting.items() if n == 0), key=newest, reverse=True)
    order: list[str] = []
    while ready:
        revision = ready.pop(0)
        order.append(revision)
        for parent in _parents(graph[revision]):
            if parent in waiting:
                waiting[parent] -= 1
                if waiting[parent] == 0:
                    ready.append(parent)
                    ready.sort(key=newest, reverse=True)
    return order


def _marks(graph: Mapping[str, RevisionInfo], revision: str, children: Mapping[str, int]) -> tuple[str, ...]:
    info = graph[revision]
    marks = []
    if children.get(revision, 0) == 0:
        marks.append("head")
    if children.get(revision, 0) > 1:
        marks.append("branchpoint")
    if len(_parents(info)) > 1:
        marks.append("mergepoint")
    if not _parents(info):
        marks.append("base")
    return tuple(marks)


def appliers(records: Sequence[Record], graph: Mapping[str, RevisionInfo]) -> dict[str, Record]:
    """revision -> the journal record whose run applied it (the last one, if it ran twice)."""
    from deployer.server.journal import SUCCEEDED

    applied: dict[str, Record] = {}
    for record in records:  # oldest first, as the journal keeps them
        if record.outcome != SUCCEEDED:
            continue  # a failed run was put back: it applied nothing that stayed
        before = _ancestry(graph, record.revision_before)
        after = _ancestry(graph, record.revision_after)
        for revision in before - after:
            applied.pop(revision, None)
        for revision in after - before:
            applied[revision] = record
    return applied


def rows(
    running: MigrationScripts | None,
    tip: MigrationScripts | None,
    revisions: Sequence[str] | None,
    records: Sequence[Record],
    backups: frozenset[str] | None = None,
    *,
    everything: bool = False,
) -> tuple[Migration, ...]:
    """The report's rows, newest first (pure). ``backups``: the backup ids the host keeps
    (None: not listed). ``everything``: also the revisions only the journal names."""
    graph: dict[str, RevisionInfo] = {}
    known_to: dict[str, list[str]] = {}
    for name, scripts in (("running", running), ("tip", tip)):
        for revision, info in (scripts.revisions.items() if scripts is not None else ()):
            graph.setdefault(revision, info)
            known_to.setdefault(revision, []).append(name)
    children: dict[str, int] = {}
    for info in graph.values():
        for parent in _parents(info):
            children[parent] = children.get(parent, 0) + 1
    current = tuple(revisions or ())
    unknown = [r for r in current if r not in graph]
    determined = revisions is not None and not unknown
    applied = _ancestry(graph, current) if determined else set()
    by = appliers(records, graph)

    def state(revision: str) -> str:
        if revision in current:
            return CURRENT
        if not determined:
            return UNDETERMINED
        return APPLIED if revision in applied else PENDING

    running_heads = set(running.heads) if running is not None and running.revisions else set()

    def marks(revision: str) -> tuple[str, ...]:
        found = _marks(graph, revision, children)
        if "head" not in found and revision in running_heads:
            return ("head of the running code", *found)  # the tip has revisions after it
        return found

    def made(revision: str, info: RevisionInfo | None, state_: str, where: tuple[str, ...]) -> Migration:
        record = by.get(revision) if state_ in (CURRENT, APPLIED, UNKNOWN) else None
        backup = record.backup if record is not None else None
        return Migration(
            revision=revision,
            message=info.message if info else "",
            state=state_,
            known_to=where,
            marks=marks(revision) if info else (),
            down_revision=_parents(info) if info else (),
            create_date=info.create_date if info else "",
            path=info.path if info else "",
            has_downgrade=info.has_downgrade if info else None,
            upgrade_drops=info.upgrade_destructive_ops if info else (),
            downgrade_drops=info.downgrade_destructive_ops if info else (),
            applied_by=record.id if record else None,
            applied_at=record.finished_at if record else None,
            backup=backup,
            backup_kept=(backup in backups) if backup is not None and backups is not None else None,
        )

    out = [made(r, None, UNKNOWN, ()) for r in unknown]
    out += [made(r, graph[r], state(r), tuple(known_to[r])) for r in _newest_first(graph)]
    if everything:
        named = {r for record in records for r in (*record.revision_before, *record.revision_after)}
        out += [made(r, None, UNKNOWN, ()) for r in sorted(named - set(graph) - set(unknown))]
    return tuple(out)


# --------------------------------------------------------------------------- reading


def migrations(
    cfg_or_path: Config | str | Path | None, env: str, *, host: Host | None = None, everything: bool = False
) -> MigrationsReport:
    """Read ``env`` the way ``status`` does, and list its migrations (see the module docstring)."""
    from deployer.status import read_status

    started = time.monotonic()

    def assemble(read: Readings) -> MigrationsReport:
        kept = _backup_ids(read.host, read.cfg.environment(env).backup_dir)
        return MigrationsReport(
            environment=env,
            host=read.host.name,
            running_commit=read.running_commit,
            tip_commit=read.tip_commit,
            revisions=read.revisions,
            database_error=read.database_error,
            migrations=rows(read.running_scripts, read.tip_scripts, read.revisions, read.records, kept,
                            everything=everything),
            seconds=0.0,
        )

    _, report = read_status(cfg_or_path, env, host=host, keep=assemble)
    assert report is not None
    return replace(report, seconds=round(time.monotonic() - started, 3))


def _backup_ids(host: Host, backup_dir: str) -> frozenset[str] | None:
    """The ids of the backups the host keeps (their descriptions' names); None when unreadable."""
    from deployer.server.backups import META_SUFFIX, description_paths

    paths = description_paths(host, backup_dir)
    return None if paths is None else frozenset(Path(p).name[: -len(META_SUFFIX)] for p in paths)


# --------------------------------------------------------------------------- text


def render(report: MigrationsReport, *, verbose: bool = False) -> str:
    """The text form: one line per revision, newest first; ``verbose`` adds path, parent
    and create date (what ``flask db current --verbose`` shows)."""
    if report.revisions is None:
        where = f"database not read: {report.database_error}"
    else:
        where = "database at " + (", ".join(report.revisions) or "no revision")
    code = f"running code {report.running_commit[:12]}" if report.running_commit else "nothing deployed"
    tip = ""
    if report.tip_commit and report.tip_commit != report.running_commit:
        tip = f", branch tip {report.tip_commit[:12]}"
    lines = [f"{report.environment} on {report.host}: {where}; {code}{tip}  (read in {report.seconds:.2f}s)"]
    if not report.migrations:
        lines.append("  no migrations")
    width = max((len(m.revision) for m in report.migrations), default=12)
    for m in report.migrations:
        marks = f" ({', '.join(m.marks)})" if m.marks else ""
        where_ = "" if m.known_to != ("tip",) else "  [branch tip only]"
        message = m.message or ("not in the running code or the branch tip" if m.state == UNKNOWN else "")
        lines.append(f"  {m.state:<12} {m.revision:<{width}}{marks}  {message}{where_}")
        details = []
        if m.applied_by:
            kept = "" if m.backup_kept is not False else " (no longer on the host)"
            before = f"; data from before it: backup {m.backup}{kept}" if m.backup else ""
            details.append(f"applied by {m.applied_by} at {m.applied_at}{before}")
        if m.state in (PENDING, UNDETERMINED) and m.upgrade_drops:
            details.append(f"its upgrade drops: {'; '.join(m.upgrade_drops)}")
        if m.state in (CURRENT, APPLIED) and m.downgrade_drops:
            details.append(f"rolling back past it drops: {'; '.join(m.downgrade_drops)}")
        if m.has_downgrade is False:
            details.append("no working downgrade" + (
                ": a rollback past it needs --restore-backup" if m.state in (CURRENT, APPLIED) else ""))
        if verbose and m.path:
            details.append(f"path {m.path}; parent {', '.join(m.down_revision) or '<base>'}"
                           + (f"; created {m.create_date}" if m.create_date else ""))
        lines += [f"  {'':<12} {'':<{width}}  {d}" for d in details]
    return "\n".join(lines)
