"""Database backups on the target host: create, verify, list, restore, prune.

PostgreSQL: ``pg_dump -Fc`` runs inside the db container and its output is streamed by the
host's shell straight into a file on the host: no copy of the dump is held in memory, here
or there. SQLite (``database_url = "sqlite:///..."``): Python's online backup API copies the
database file inside a one-off container of the web service, and the copy is streamed out
the same way.

A dump is written under a temporary name (``.partial``), read back in full and
checksummed, and only then renamed to ``ID.dump``; the JSON description ``ID.json`` is
written last (atomically). ``list_backups`` only knows dumps that have a description, so a
dump that dies midway, a full disk or a lost connection leaves nothing that looks like a
backup, and :func:`prune` clears such leftovers under the deploy lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deployer.errors import CommandError, DeployerError, RefusedError
from deployer.server.target import Target, shell

DUMP_SUFFIX = ".dump"
META_SUFFIX = ".json"
PARTIAL_SUFFIX = ".partial"

POSTGRESQL = "postgresql"
SQLITE = "sqlite"

# Why a backup was taken.
PRE_RELEASE = "pre-release"
MANUAL = "manual"
PRE_RESTORE = "pre-restore"

DUMP_TIMEOUT = 6 * 3600.0

# Run inside the db container, whose environment names the database (official postgres image).
# A lock wait timeout: a backup must fail, not hang, behind a transaction holding a table lock.
PG_DUMP = (
    'exec pg_dump --format=custom --lock-wait-timeout="$1" '
    '--username="${POSTGRES_USER:-postgres}" "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}"'
)
PG_LIST = "exec pg_restore --list"
# Reads every data block (pg_restore --list only reads the table of contents at the front).
PG_READ_ALL = "exec pg_restore --file=/dev/null"
# The plain SQL goes to a temporary file first: if pg_restore cannot read the dump to its
# end, psql never starts, and a half-read dump is never committed.
PG_RESTORE = (
    "set -e; sql=$(mktemp); trap 'rm -f \"$sql\"' EXIT; pg_restore --no-owner --file=\"$sql\"; "
    "{ echo 'DROP SCHEMA public CASCADE; CREATE SCHEMA public;'; cat \"$sql\"; } | "
    'psql --quiet --no-psqlrc --set=ON_ERROR_STOP=1 --single-transaction '
    '--username="${POSTGRES_USER:-postgres}" --dbname="${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" >/dev/null'
)

# SQLite, run with python3 in a one-off web container; argv[1] is the database file.
SQLITE_DUMP = """\
import os, shutil, sqlite3, sys, tempfile
source = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
fd, copy = tempfile.mkstemp(suffix=".sqlite")
os.close(fd)
try:
    target = sqlite3.connect(copy)
    source.backup(target)  # online: consistent even while the app writes
    target.close()
    with open(copy, "rb") as handle:
        shutil.copyfileobj(handle, sys.stdout.buffer, 1 << 20)
finally:
    os.unlink(copy)
"""
SQLITE_CHECK = """\
import os, shutil, sqlite3, sys, tempfile
fd, copy = tempfile.mkstemp(suffix=".sqlite")
with os.fdopen(fd, "wb") as handle:
    shutil.copyfileobj(sys.stdin.buffer, handle, 1 << 20)
try:
    db = sqlite3.connect("file:" + copy + "?mode=ro", uri=True)
    verdict = [row[0] for row in db.execute("PRAGMA integrity_check")]
    if verdict != ["ok"]:
        sys.exit("integrity_check: " + "; ".join(verdict)[:300])
    tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    print(tables)
    if len(sys.argv) > 1 and sys.argv[1] == "restore":
        live = sqlite3.connect(sys.argv[2])
        db.backup(live)  # replaces the live database's pages in one step, under its lock
        live.close()
except sqlite3.DatabaseError as error:
    sys.exit(str(error))
finally:
    os.unlink(copy)
"""
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


class BackupError(DeployerError):
    """A backup could not be made, verified or restored."""


@dataclass(frozen=True)
class Backup:
    """One verified dump on the host, described by the JSON file beside it.

    ``release`` is the release the backup was taken for (pre-release backups) or the one
    running when it was taken (manual and pre-restore backups).
    """

    id: str
    environment: str
    release: str | None
    revision: tuple[str, ...]
    size: int
    sha256: str
    created_at: str
    path: str
    engine: str = POSTGRESQL
    reason: str = PRE_RELEASE

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def meta_path(self) -> str:
        return meta_path_for(self.path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Backup:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["revision"] = tuple(values.get("revision") or ())
        return cls(**values)


def meta_path_for(dump_path: str) -> str:
    base = dump_path[: -len(DUMP_SUFFIX)] if dump_path.endswith(DUMP_SUFFIX) else dump_path
    return base + META_SUFFIX


def new_id(now: datetime | None = None) -> str:
    """A sortable id: the creation time in UTC to the microsecond."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%S%fZ")


# --------------------------------------------------------------------------- engines


def engine_of(target: Target) -> str:
    """``sqlite`` when the environment's database_url is a SQLite one, else ``postgresql``."""
    url = target.env.database_url or ""
    return SQLITE if url.startswith("sqlite") else POSTGRESQL


def sqlite_path(database_url: str) -> str:
    """The database file a ``sqlite:///...`` URL names, as the web container sees it."""
    from sqlalchemy.engine import make_url

    database = make_url(database_url).database
    if not database or database == ":memory:":
        raise BackupError(f"the SQLite URL {database_url!r} names no database file")
    return database


def _pg_exec(target: Target, script: str, *args: str) -> list[str]:
    return target.compose.exec(target.config.app.db_service, ["sh", "-c", script, "sh", *args])


def _sqlite_run(target: Target, script: str, *args: str) -> list[str]:
    return target.compose.run(target.config.app.web_service, ["python3", "-c", script, *args])


def dump_argv(target: Target, *, lock_wait_timeout: float = 60.0) -> list[str]:
    """The command that writes the database's dump to stdout, run on the host."""
    if engine_of(target) == SQLITE:
        return _sqlite_run(target, SQLITE_DUMP, sqlite_path(target.env.database_url or ""))
    return _pg_exec(target, PG_DUMP, f"{int(lock_wait_timeout * 1000)}ms")


# --------------------------------------------------------------------------- file facts


def _sha256(target: Target, path: str) -> str:
    result = target.host.run(["sha256sum", path], timeout=3600).check(f"checksum {path}")
    match = re.match(r"([0-9a-f]{64})\b", result.stdout)
    if not match:
        raise BackupError(f"unexpected sha256sum output for {path}: {result.stdout.strip()!r}")
    return match.group(1)


def _size(target: Target, path: str) -> int:
    return int(target.host.run(["stat", "-c", "%s", path]).check(f"stat {path}").stdout.strip())


def _last_line(text: str, default: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else default


def _readable(target: Target, path: str, engine: str) -> tuple[bool, str]:
    """Can the dump be read to its end? ``(ok, what was found or why not)``."""
    host = target.host
    if engine == SQLITE:
        result = host.run(shell(_sqlite_run(target, SQLITE_CHECK), stdin_path=path), timeout=DUMP_TIMEOUT)
        if not result.ok:
            return False, _last_line(result.stderr, "the SQLite integrity check failed")
        return True, f"integrity_check ok, {result.stdout.strip().splitlines()[-1]} tables"
    listed = host.run(shell(_pg_exec(target, PG_LIST), stdin_path=path), timeout=DUMP_TIMEOUT)
    if not listed.ok:
        return False, _last_line(listed.stderr, "pg_restore --list failed")
    entries = sum(1 for line in listed.stdout.splitlines() if line and not line.startswith(";"))
    full = host.run(shell(_pg_exec(target, PG_READ_ALL), stdin_path=path), timeout=DUMP_TIMEOUT)
    if not full.ok:
        return False, _last_line(full.stderr, "pg_restore could not read the dump to its end")
    return True, f"{entries} archive entries, read to the end"


# --------------------------------------------------------------------------- create / verify / list


def create(
    target: Target,
    *,
    release: str | None,
    revision: tuple[str, ...],
    reason: str = PRE_RELEASE,
    lock_wait_timeout: float = 60.0,
) -> Backup:
    """Dump the environment's database into ``backup_dir``; it counts only once read back.

    Call under the deploy lock. On any failure (the dump exits non-zero, the connection is
    lost, the file cannot be read back) the temporary file is removed and
    :class:`BackupError` says why; nothing named ``*.dump`` or ``*.json`` is left.
    """
    host = target.host
    engine = engine_of(target)
    backup_dir = target.env.backup_dir
    host.run(["mkdir", "-p", backup_dir], check=True)
    host.run(["chmod", "700", backup_dir], check=True)
    backup_id = new_id()
    final = posixpath.join(backup_dir, backup_id + DUMP_SUFFIX)
    partial = final + PARTIAL_SUFFIX
    script = shell(dump_argv(target, lock_wait_timeout=lock_wait_timeout), stdout_path=partial)
    script[2] = "umask 077; " + script[2]
    try:
        result = host.run(script, timeout=DUMP_TIMEOUT)
        if not result.ok:
            raise BackupError(
                f"the {engine} dump failed on {host.name} (exit {result.exit_code}): {result.stderr.strip()[-500:]}",
                hint=f"nothing was changed; check the database service's logs and the free space in {backup_dir}",
            )
        ok, why = _readable(target, partial, engine)
        if not ok:
            raise BackupError(f"the fresh dump does not read back: {why}", hint=f"nothing was changed; check the free space in {backup_dir}")
        backup = Backup(
            id=backup_id,
            environment=target.name,
            release=release,
            revision=tuple(revision),
            size=_size(target, partial),
            sha256=_sha256(target, partial),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            path=final,
            engine=engine,
            reason=reason,
        )
        host.run(["mv", "-f", partial, final], check=True)
    except BaseException:
        # Ctrl-C and a lost connection included; if the host is gone, prune clears it later.
        try:
            host.run(["rm", "-f", partial], timeout=60)
        except Exception:  # noqa: BLE001 - the original failure is the one to report
            pass
        raise
    try:
        # Written last: a dump without its description is not listed, never restored.
        host.write_text(backup.meta_path, backup.to_json(), mode=0o600)
    except BaseException:
        host.run(["rm", "-f", final], timeout=60)
        raise
    return backup


def check(target: Target, backup: Backup) -> str | None:
    """Why the backup is not usable (checksum, readability), or ``None`` when it is."""
    host = target.host
    if not host.run(["test", "-f", backup.path]).ok:
        return f"{backup.path} is missing on {host.name}"
    size = _size(target, backup.path)
    if size != backup.size:
        return f"its size is {size} bytes, not the recorded {backup.size} (truncated or overwritten)"
    digest = _sha256(target, backup.path)
    if digest != backup.sha256:
        return f"its sha256 {digest[:12]}… differs from the recorded {backup.sha256[:12]}… (corrupted)"
    ok, why = _readable(target, backup.path, backup.engine)
    if not ok:
        return f"it is not a readable dump: {why}"
    return None


def verify(target: Target, backup: Backup) -> None:
    """Checksum matches AND the dump reads back to its end, or :class:`BackupError`."""
    problem = check(target, backup)
    if problem is not None:
        raise BackupError(
            f"backup {backup.id} is invalid: {problem}",
            hint="do not rely on it; take a new one with `deployer backups create`",
        )


def list_backups(target: Target, *, all_environments: bool = False) -> list[Backup]:
    """The backups under ``backup_dir`` (this environment's unless ``all_environments``), oldest first."""
    host = target.host
    listing = host.run(["find", target.env.backup_dir, "-maxdepth", "1", "-name", "*" + META_SUFFIX, "-type", "f"])
    if not listing.ok:
        return []
    backups = []
    for path in sorted(filter(None, listing.stdout.splitlines())):
        try:
            backup = Backup.from_dict(json.loads(host.read_text(path)))
        except (ValueError, TypeError, CommandError, OSError):
            continue
        if all_environments or backup.environment == target.name:
            backups.append(backup)
    return sorted(backups, key=lambda b: b.id)


def find(target: Target, backup_id: str) -> Backup:
    """The backup with this id (``latest``, or a unique prefix of an id), or :class:`BackupError`."""
    backups = list_backups(target)
    if backup_id == "latest":
        if not backups:
            raise BackupError(f"{target.name} has no backups in {target.env.backup_dir}")
        return backups[-1]
    matches = [b for b in backups if b.id == backup_id] or [b for b in backups if b.id.startswith(backup_id)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(b.id for b in backups[-5:]) or "none"
    if not matches:
        raise BackupError(
            f"no backup {backup_id!r} for {target.name} in {target.env.backup_dir} (newest: {known})",
            hint=f"`deployer backups list {target.name}` lists them",
        )
    raise BackupError(f"{backup_id!r} matches {len(matches)} backups: " + ", ".join(b.id for b in matches))


def download(target: Target, backup: Backup, directory: Path) -> Path:
    """Copy the dump and its description into a local directory (mode 0600), checksum checked."""
    directory.mkdir(parents=True, exist_ok=True)
    local = directory / (backup.id + DUMP_SUFFIX)
    partial = local.with_name(local.name + PARTIAL_SUFFIX)
    try:
        partial.touch(mode=0o600)
        os.chmod(partial, 0o600)
        target.host.get(backup.path, partial)
        digest = hashlib.sha256()
        with open(partial, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != backup.sha256:
            raise BackupError(f"the downloaded copy of {backup.id} does not match its sha256; it was removed")
        os.replace(partial, local)
    finally:
        partial.unlink(missing_ok=True)
    meta = directory / (backup.id + META_SUFFIX)
    meta.write_text(backup.to_json())
    os.chmod(meta, 0o600)
    return local


# --------------------------------------------------------------------------- restore


def restore(target: Target, backup: Backup) -> None:
    """Replace the database's contents with the backup's (verified first), in one transaction."""
    verify(target, backup)
    if backup.engine != engine_of(target):
        raise BackupError(f"backup {backup.id} is a {backup.engine} dump; {target.name} uses {engine_of(target)}")
    if backup.engine == SQLITE:
        argv = _sqlite_run(target, SQLITE_CHECK, "restore", sqlite_path(target.env.database_url or ""))
    else:
        argv = _pg_exec(target, PG_RESTORE)
    result = target.host.run(shell(argv, stdin_path=backup.path), timeout=DUMP_TIMEOUT)
    if not result.ok:
        raise BackupError(
            f"restoring backup {backup.id} failed (exit {result.exit_code}): {result.stderr.strip()[-500:]}",
            hint="the restore runs in one transaction, so the database was left as it was",
        )


def current_revision(target: Target) -> tuple[str, ...]:
    """The database's alembic revision(s) now; () for an empty database."""
    if engine_of(target) == SQLITE:
        path = sqlite_path(target.env.database_url or "")
        result = target.host.run(_sqlite_run(target, SQLITE_REVISION, path), timeout=300)
        result.check("read the SQLite database's revision")
        return tuple(result.stdout.split())
    from deployer.server import facts as project

    revisions = project.read_revisions(target)
    if revisions is None:
        db = target.config.app.db_service
        raise BackupError(
            f"the {db} service of {target.name} is not running",
            hint=f"start it first: docker compose up -d {db} (in {target.env.path})",
        )
    return revisions


@dataclass(frozen=True)
class RestoreOutcome:
    """What ``deployer backups restore`` did."""

    backup: Backup
    safety_backup: Backup | None
    revision_before: tuple[str, ...]
    revision_after: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def restore_environment(
    target: Target,
    backup_id: str,
    *,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    safety_backup: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> RestoreOutcome:
    """Verify, confirm, lock, take a safety backup of the current state, restore, read back.

    ``confirm`` asks the user a yes/no question; ``None`` means there is no terminal, and
    then only ``yes`` lets the restore go on (never a hang waiting for input).
    """
    from deployer.server import journal
    from deployer.server import lock

    backup = find(target, backup_id)
    log(f"verifying backup {backup.id} ...")
    verify(target, backup)
    question = (
        f"Replace ALL data of {target.name} on {target.host.name} with backup {backup.id} "
        f"(taken {backup.created_at}, revision {', '.join(backup.revision) or 'none'})?"
    )
    if not yes:
        refusal = f"restoring {backup.id} replaces all data of {target.name}"
        if confirm is None:
            raise RefusedError(refusal + "; there is no terminal to confirm on", hint="rerun with --yes to confirm")
        if not confirm(question):
            raise RefusedError(refusal + ": not confirmed")
    with lock.held(target.host, target.state_dir, f"backups restore {target.name} {backup.id}", env_name=target.name):
        before = current_revision(target)
        safety = None
        if safety_backup:
            current = journal.last_succeeded(journal.read(target.host, target.state_dir))
            log("taking a safety backup of the current state ...")
            safety = create(target, release=current.id if current else None, revision=before, reason=PRE_RESTORE)
            log(f"safety backup {safety.id} ({safety.size} bytes)")
        log(f"restoring {backup.id} ...")
        restore(target, backup)
        after = current_revision(target)
    if set(after) != set(backup.revision):
        raise BackupError(
            f"after restoring {backup.id} the database is at {', '.join(after) or 'no revision'}, "
            f"not at the recorded {', '.join(backup.revision) or 'no revision'}",
            hint=f"the state before the restore is in the safety backup {safety.id if safety else '(none taken)'}",
        )
    return RestoreOutcome(backup=backup, safety_backup=safety, revision_before=before, revision_after=after)


def create_environment(
    target: Target,
    *,
    download_to: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[Backup, Path | None]:
    """A manual backup under the deploy lock, verified; optionally copied to this machine."""
    from deployer.server import journal
    from deployer.server import lock

    with lock.held(target.host, target.state_dir, f"backups create {target.name}", env_name=target.name):
        revision = current_revision(target)
        current = journal.last_succeeded(journal.read(target.host, target.state_dir))
        # create() read the dump back to its end and checksummed it before it counted
        backup = create(target, release=current.id if current else None, revision=revision, reason=MANUAL)
    local = download(target, backup, download_to) if download_to is not None else None
    if local is not None:
        log(f"downloaded to {local}")
    return backup, local


# --------------------------------------------------------------------------- retention


@dataclass(frozen=True)
class Retention:
    """Which backups a prune keeps (with the reason) and which it removes."""

    kept: tuple[tuple[Backup, str], ...]
    removed: tuple[Backup, ...]
    leftovers: tuple[str, ...] = field(default=())  # partial files and dumps without a description

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": [{"id": b.id, "why": why} for b, why in self.kept],
            "removed": [b.id for b in self.removed],
            "leftovers": list(self.leftovers),
        }


def _when(stamp: str) -> datetime:
    moment = datetime.fromisoformat(stamp)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def select_retention(backups: Sequence[Backup], records: Sequence[Any], keep: int) -> Retention:
    """Decide what a prune keeps: pure, given the backups and the journal's records.

    Kept: the ``keep`` newest; the pre-upgrade backup of the current release (the last
    successful one) and of the newest successful release that took one; and every backup
    referenced by a successful release finished after the oldest of the ``keep`` newest
    was taken (a rollback to it may need that backup).
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    newest_first = sorted(backups, key=lambda b: b.id, reverse=True)
    reasons: dict[str, str] = {}
    for backup in newest_first[:keep]:
        reasons[backup.id] = f"one of the {keep} newest"
    succeeded = [r for r in records if r.outcome == "succeeded"]
    if succeeded and succeeded[-1].backup:
        reasons.setdefault(succeeded[-1].backup, f"pre-upgrade backup of the current release {succeeded[-1].id}")
    with_backup = [r for r in succeeded if r.backup]
    if with_backup:
        last = with_backup[-1]
        reasons.setdefault(last.backup, f"backup of {last.id}, the last release that migrated")
    if newest_first:
        cutoff = _when(newest_first[: keep][-1].created_at)
        for record in with_backup:
            if record.finished_at and _when(record.finished_at) >= cutoff:
                reasons.setdefault(record.backup, f"backup of release {record.id}, a rollback target")
    kept = tuple((b, reasons[b.id]) for b in newest_first if b.id in reasons)
    removed = tuple(b for b in newest_first if b.id not in reasons)
    return Retention(kept=kept, removed=removed)


def _leftovers(target: Target) -> list[str]:
    """Partial files, and dumps without a description, in ``backup_dir``."""
    listing = target.host.run(["find", target.env.backup_dir, "-maxdepth", "1", "-type", "f"])
    if not listing.ok:
        return []
    present = set(filter(None, listing.stdout.splitlines()))
    return sorted(
        path for path in present
        if path.endswith(PARTIAL_SUFFIX) or (path.endswith(DUMP_SUFFIX) and meta_path_for(path) not in present)
    )


def prune(target: Target, *, keep: int | None = None, dry_run: bool = False) -> Retention:
    """Remove the backups retention does not keep (and leftovers of failed dumps).

    With ``dry_run`` nothing is removed and no lock is taken. Otherwise runs under the
    deploy lock, so a dump being written by a release is never mistaken for a leftover.
    """
    from deployer.server import journal
    from deployer.server import lock

    keep = keep or target.env.keep_backups

    def decide() -> Retention:
        records = journal.read(target.host, target.state_dir)
        backups = list_backups(target)
        decision = select_retention(backups, records, keep)
        return Retention(decision.kept, decision.removed, tuple(_leftovers(target)))

    if dry_run:
        return decide()
    with lock.held(target.host, target.state_dir, f"backups prune {target.name}", env_name=target.name):
        decision = decide()
        for backup in decision.removed:
            # The description first: a dump without one is never listed nor restored.
            target.host.run(["rm", "-f", backup.meta_path], check=True)
            target.host.run(["rm", "-f", backup.path], check=True)
        if decision.leftovers:
            target.host.run(["rm", "-f", *decision.leftovers], check=True)
    return decision
