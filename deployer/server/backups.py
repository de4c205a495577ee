"""Database backups on the target host: create, verify, list, restore, prune.

PostgreSQL: ``pg_dump -Fc`` runs inside the db container and its output is streamed by the
host's shell straight into a file on the host: no copy of the dump is held in memory, here
or there. MySQL/MariaDB: ``mysqldump --single-transaction`` (``mariadb-dump``), gzipped, the
same way. SQLite (``database_url = "sqlite:///..."``): Python's online backup API copies the
database file inside a one-off container of the web service, and the copy is streamed out
the same way.

A dump is written under a temporary name (``.partial``) and checksummed in the same
command (the dump's exit status, its write's included, checked), its table of contents read back,
and only then renamed to ``ID.dump``; the JSON description ``ID.json`` is written last
(atomically). Whether it restores is proven by restoring it into a scratch database
(:mod:`deployer.server.verification`); the result is kept in the description. ``list_backups`` only knows dumps that have a description, so a
dump that dies midway, a full disk or a lost connection leaves nothing that looks like a
backup, and :func:`prune` clears such leftovers under the deploy lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from deployer.actions import Arg, Command, Read, Value, Write, drive
from deployer.config import BackupCopy
from deployer.db.url import DatabaseLocation, parse
from deployer.db.writes import SQLITE_COUNTS
from deployer.errors import CommandError, DeployerError, RefusedError
from deployer.hosts.base import Host
from deployer.server.target import Target

DUMP_SUFFIX = ".dump"
META_SUFFIX = ".json"
PARTIAL_SUFFIX = ".partial"

POSTGRESQL = "postgresql"
SQLITE = "sqlite"
MYSQL = "mysql"
SERVER = "server"  # where a backup is: the server's backup_dir (else a backup_copy place)

# Why a backup was taken.
PRE_RELEASE = "pre-release"
MANUAL = "manual"
PRE_RESTORE = "pre-restore"

DUMP_TIMEOUT = 6 * 3600.0

# Run inside the db container, whose environment names the database (official postgres image).
# A lock wait timeout: a backup must fail, not hang, behind a transaction holding a table lock.
# PGUSER/PGDATABASE come from the app's database URL when deployer knows it; $2, when given,
# is the snapshot a transaction of deployer's exported (the rows it counted are the dump's).
# Compression level 1: measured against the default (6) on the benchmark's table, it dumps
# in about half the time for a dump about 5 % larger (docs/benchmarks.md, §5).
COMPRESSION = 1
PG_DUMP = (
    f'exec pg_dump --format=custom --compress={COMPRESSION} --lock-wait-timeout="$1" ${{2:+--snapshot="$2"}} '
    '--username="${PGUSER:-${POSTGRES_USER:-postgres}}" "${PGDATABASE:-${POSTGRES_DB:-${POSTGRES_USER:-postgres}}}"'
)
# Reads the archive's header and table of contents (at the front: it stops there).
PG_LIST = "exec pg_restore --list"
# Reads every data block too.
PG_READ_ALL = "exec pg_restore --file=/dev/null"
# The plain SQL goes to a temporary file first: if pg_restore cannot read the dump to its
# end, psql never starts, and a half-read dump is never committed.
PG_RESTORE = (
    "set -e; sql=$(mktemp); trap 'rm -f \"$sql\"' EXIT; pg_restore --no-owner --file=\"$sql\"; "
    "{ echo 'DROP SCHEMA public CASCADE; CREATE SCHEMA public;'; cat \"$sql\"; } | "
    'psql --quiet --no-psqlrc --set=ON_ERROR_STOP=1 --single-transaction '
    '--username="${PGUSER:-${POSTGRES_USER:-postgres}}" --dbname="${PGDATABASE:-${POSTGRES_DB:-${POSTGRES_USER:-postgres}}}" >/dev/null'
)

# MySQL/MariaDB, run with sh in the db container (the official mariadb and mysql images; the
# tools are mariadb-dump/mariadb, else mysqldump/mysql). The password arrives on the first
# line of stdin (never in an argument, nor in the plan); the tools connect over TCP to the
# server in the same container, as the app's user: $1 port, $2 user, $3 database.
_MYSQL_TOOLS = """\
IFS= read -r MYSQL_PWD || true
export MYSQL_PWD
port=$1 user=$2 database=$3
shift 3
dump=$(command -v mariadb-dump || command -v mysqldump) || { echo "the db image has neither mariadb-dump nor mysqldump" >&2; exit 127; }
client=$(command -v mariadb || command -v mysql) || { echo "the db image has neither mariadb nor mysql" >&2; exit 127; }
command -v gzip >/dev/null || { echo "the db image has no gzip" >&2; exit 127; }
"""
# The dump, gzipped (level 1: the fastest; docs/backups.md). The fourth argument: the connection
# holding the app's writes back (deployer.db.mysql.Snapshot), ended (KILL) as soon as
# mysqldump's --verbose says its consistent snapshot exists (the line after "Starting
# transaction"), or when it ends. Exit: mysqldump's status, else gzip's.
MYSQL_DUMP = _MYSQL_TOOLS + r"""hold=$1
state=$(mktemp -d) || exit 1
trap 'rm -rf "$state"' EXIT
release() {
    [ -n "$hold" ] && "$client" --no-defaults --protocol=tcp --host=127.0.0.1 --port="$port" --user="$user" \
        -e "KILL $hold" >/dev/null 2>&1
    hold=
}
{
    {
        "$dump" --no-defaults --protocol=tcp --host=127.0.0.1 --port="$port" --user="$user" \
            --single-transaction --quick --hex-blob --no-tablespaces --default-character-set=utf8mb4 \
            --verbose "$database"
        echo $? >"$state/dump"
    } 2>&1 >&3 3>&- | {
        started=
        while IFS= read -r line; do
            case $line in
                "-- Starting transaction"*) started=1 ;;
                "-- "*) [ -n "$started" ] && release ;;
                *) printf '%s\n' "$line" >&2 ;;
            esac
        done
        release
    }
} 3>&1 | { gzip -1; echo $? >"$state/gzip"; }
code=$(cat "$state/dump" 2>/dev/null || echo 1)
[ "$code" = 0 ] || exit "$code"
exit "$(cat "$state/gzip" 2>/dev/null || echo 1)"
"""
# Reads a dump's first lines (stdin): the header mysqldump (mariadb-dump) writes. What a fresh
# dump is checked with, as PostgreSQL's is by its table of contents: its exit status (gzip's
# too) and checksum say it was written whole; the restore verification proves it restores.
MYSQL_HEAD = r"""command -v gzip >/dev/null || { echo "the db image has no gzip" >&2; exit 127; }
head=$(gzip -dc 2>/dev/null | head -n 5)
case $head in
    *"-- MariaDB dump"*|*"-- MySQL dump"*) echo "its header read back" ;;
    *) echo "it does not start like a mysqldump dump" >&2; exit 1 ;;
esac
"""
# Reads a dump (stdin) to its end: gzip's checksum, and mysqldump's last line.
MYSQL_READ = r"""command -v gzip >/dev/null || { echo "the db image has no gzip" >&2; exit 127; }
tail=$( { gzip -dc; printf '\ngzip-exit:%s\n' "$?"; } | tail -n 3)
case $tail in
    *gzip-exit:0) ;;
    *) echo "it does not decompress to its end (gzip failed)" >&2; exit 1 ;;
esac
case $tail in
    *"-- Dump completed"*) echo "read to its end: gzip's checksum, and mysqldump's last line" ;;
    *) echo "it ends before mysqldump's last line (-- Dump completed): the dump is incomplete" >&2; exit 1 ;;
esac
"""
# Replaces the database's tables with the dump's (stdin, after the password line). The dump
# is decompressed to a file first and must end with mysqldump's last line: a dump that does
# not read to its end drops nothing (exit 3). Then every table, view and sequence of the
# database is dropped (the fourth argument: the query naming them), and the dump loaded. Not one transaction:
# MySQL commits each DDL statement.
MYSQL_RESTORE = _MYSQL_TOOLS + r"""drops=$1
sql=$(mktemp) || exit 1
trap 'rm -f "$sql"' EXIT
gzip -dc >"$sql" || { echo "the dump does not decompress to its end" >&2; exit 3; }
tail -n 1 "$sql" | grep -q '^-- Dump completed' \
    || { echo "the dump is incomplete: it lacks mysqldump's last line (-- Dump completed)" >&2; exit 3; }
set -- --no-defaults --protocol=tcp --host=127.0.0.1 --port="$port" --user="$user" --default-character-set=utf8mb4
listed=$("$client" "$@" --batch --skip-column-names --raw "$database" -e "$drops") || exit 1
{ echo 'SET FOREIGN_KEY_CHECKS = 0;'; printf '%s\n' "$listed"; cat "$sql"; } | "$client" "$@" "$database"
"""
MYSQL_DROPS = (
    "SELECT CONCAT('DROP ', CASE TABLE_TYPE WHEN 'VIEW' THEN 'VIEW' WHEN 'SEQUENCE' THEN 'SEQUENCE' ELSE 'TABLE' END, "
    "' IF EXISTS `', REPLACE(TABLE_NAME, '`', '``'), '`;') FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
)

# SQLite, run with python3 in a one-off web container; argv[1] is the database file.
SQLITE_DUMP = "COUNTS = " + repr(SQLITE_COUNTS) + """
import os, shutil, sqlite3, sys, tempfile
source = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
fd, copy = tempfile.mkstemp(suffix=".sqlite")
os.close(fd)
try:
    target = sqlite3.connect(copy)
    source.backup(target)  # online: consistent even while the app writes
    target.close()
    sys.argv[1] = copy
    import io, contextlib
    counted = io.StringIO()
    with contextlib.redirect_stdout(counted):
        exec(COUNTS)
    sys.stderr.write("deployer-baseline: " + counted.getvalue().strip() + "\\n")
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


class BackupError(DeployerError):
    """A backup could not be made, verified or restored."""


# The restore verification's verdicts (deployer.server.verification).
VERIFIED = "verified"  # restored into a scratch database: revision, tables and row counts as recorded
FAILED = "failed"  # it did not restore, or what came back differs: never restored without --force
INCONCLUSIVE = "inconclusive"  # the scratch restore could not run (not the dump's fault): say why


@dataclass(frozen=True)
class Verification:
    """The outcome of restoring a backup into a scratch database, kept in its description."""

    state: str  # verified | failed | inconclusive
    checked_at: str
    seconds: float
    method: str  # how it was restored (which image, which limits)
    revision: tuple[str, ...] = ()  # what the restored copy holds
    tables: dict[str, int] = field(default_factory=dict)  # rows per table in the restored copy
    problems: tuple[str, ...] = ()  # what differs from the dump-time record, or why it could not run

    @property
    def ok(self) -> bool:
        return self.state == VERIFIED

    def summary(self) -> str:
        """One line: the verdict and its evidence (or its first problems)."""
        if self.state == VERIFIED:
            rows = sum(self.tables.values())
            return (f"restore-verified {self.checked_at}: revision {', '.join(self.revision) or 'none'}, "
                    f"{len(self.tables)} tables, {rows} rows as recorded")
        what = "FAILED its restore verification" if self.state == FAILED else "restore verification inconclusive"
        return f"{what} {self.checked_at}: " + "; ".join(self.problems[:3])

    @classmethod
    def from_dict(cls, data: Any) -> Verification | None:
        if not isinstance(data, dict) or not data.get("state"):
            return None
        return cls(state=str(data["state"]), checked_at=str(data.get("checked_at", "")),
                   seconds=float(data.get("seconds") or 0.0), method=str(data.get("method", "")),
                   revision=tuple(data.get("revision") or ()),
                   tables={str(k): int(v) for k, v in (data.get("tables") or {}).items()},
                   problems=tuple(str(p) for p in data.get("problems") or ()))


@dataclass(frozen=True)
class Copy:
    """A copy of a backup kept somewhere else (``backup_copy``): where, the dump's path there, when."""

    where: str  # as configured: "local:DIR" or "host:HOST:DIR"
    path: str
    copied_at: str

    @classmethod
    def from_dict(cls, data: Any) -> Copy | None:
        if not isinstance(data, dict) or not data.get("where"):
            return None
        return cls(str(data["where"]), str(data.get("path", "")), str(data.get("copied_at", "")))


@dataclass(frozen=True)
class Backup:
    """One dump on the host, described by the JSON file beside it.

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
    # What the dump holds (rows per table, the snapshot it was taken in): what restoring it
    # would throw away is measured against this (deployer.db.writes).
    baseline: dict[str, Any] | None = None
    # Its restore verification (None: not restore-verified yet) and where copies of it were made.
    verification: Verification | None = None
    copies: tuple[Copy, ...] = ()

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
        values["verification"] = Verification.from_dict(values.get("verification"))
        values["copies"] = tuple(c for c in (Copy.from_dict(item) for item in values.get("copies") or ()) if c)
        return cls(**values)

    def refusal(self) -> str | None:
        """Why a restore must not use this backup without ``--force`` (its restore verification
        failed), or None."""
        v = self.verification
        if v is not None and v.state == FAILED:
            return f"backup {self.id} failed its restore verification ({v.checked_at}): " + "; ".join(v.problems[:3])
        return None


def meta_path_for(dump_path: str) -> str:
    base = dump_path[: -len(DUMP_SUFFIX)] if dump_path.endswith(DUMP_SUFFIX) else dump_path
    return base + META_SUFFIX


def new_id(now: datetime | None = None) -> str:
    """A sortable id: the creation time in UTC to the microsecond."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")


# --------------------------------------------------------------------------- engines


def location_of(target: Target, location: DatabaseLocation | None = None) -> DatabaseLocation:
    """Where the database is: as located by the caller, else from deploy.toml's database_url,
    else the db service's own variables (the official postgres image's contract; a MySQL
    database is always located by the caller: its tools need the app's user and password)."""
    from deployer.db.url import FROM_CONFIG
    from deployer.db.url import engine_of as url_engine

    if location is not None:
        return location
    if target.env.database_url:
        return DatabaseLocation(target.env.database_url, url_engine(target.env.database_url), FROM_CONFIG)
    return DatabaseLocation("postgresql://", POSTGRESQL, "the db service's variables")


def engine_of(target: Target, location: DatabaseLocation | None = None) -> str:
    """``sqlite``, ``mysql`` or ``postgresql``: how this environment's database is dumped."""
    return location_of(target, location).engine


def sqlite_path(database_url: str) -> str:
    """The database file a ``sqlite:///...`` URL names, as the web container sees it."""
    database = parse(database_url).database
    if not database or database == ":memory:":
        raise BackupError(f"the SQLite URL {database_url!r} names no database file")
    return database


def _pg_env(location: DatabaseLocation) -> dict[str, str]:
    """PGUSER/PGDATABASE for the tools in the db container, from the app's URL."""
    if location.url == "postgresql://":
        return {}
    url = parse(location.url)
    variables = {}
    if url.username:
        variables["PGUSER"] = url.username
    if url.database:
        variables["PGDATABASE"] = url.database
    if url.port:
        variables["PGPORT"] = str(url.port)  # the server in the container listens there too
    return variables


def _pg_exec(target: Target, script: str, *args: Arg, location: DatabaseLocation | None = None) -> list[Arg]:
    where = location_of(target, location)
    return [*target.compose.exec(target.config.app.db_service, ["sh", "-c", script, "sh"], env=_pg_env(where)), *args]


def _mysql_exec(target: Target, script: str, location: DatabaseLocation, *args: Arg) -> list[Arg]:
    """``script`` with sh in the db container, given the port, user and database of the app's
    URL (the server in the container listens on that port), then ``args``."""
    from deployer.db.url import mysql_params

    params = mysql_params(location.url) or {}
    if not params.get("database"):
        raise BackupError(f"the database URL {location.shown} names no database")
    port = params.get("port") or "3306"
    argv = target.compose.exec(target.config.app.db_service, ["sh", "-c", script, "sh", port, params.get("user") or "root",
                                                                params["database"]])
    return [*argv, *args]


def password_line(target: Target, location: DatabaseLocation) -> bytes:
    """The first line of the MySQL tools' stdin: the app's password (from its URL, or read from
    its file in the db container), never an argument."""
    from deployer.server import facts

    return (facts.database_password(target, location) or "").encode() + b"\n"


def _sqlite_run(target: Target, script: str, *args: str) -> list[str]:
    return target.compose.run(target.config.app.web_service, ["python3", "-c", script, *args])


def dump_argv(target: Target, *, lock_wait_timeout: float = 60.0, location: DatabaseLocation | None = None,
              snapshot: Arg | None = None) -> list[Arg]:
    """The command that writes the database's dump to stdout, run on the host.

    ``snapshot``: PostgreSQL's exported snapshot to dump in; MySQL's connection holding the
    app's writes (the dump ends it once its own snapshot exists).
    """
    where = location_of(target, location)
    if where.engine == SQLITE:
        return list(_sqlite_run(target, SQLITE_DUMP, sqlite_path(where.url)))
    if where.engine == MYSQL:
        return _mysql_exec(target, MYSQL_DUMP, where, snapshot if snapshot is not None else "")
    args: list[Arg] = [f"{int(lock_wait_timeout * 1000)}ms"]
    if snapshot is not None:
        args.append(snapshot)
    return _pg_exec(target, PG_DUMP, *args, location=where)


# Constant wrappers: a file path is an argument, never part of the script.
# The dump goes straight into the file (the docker client exits non-zero when it cannot
# write it: a full disk fails the dump), then, in the same command, sha256sum reads it back
# from the page cache. Measured on a loaded two-core host, that is faster than checksumming
# while it streams (`| tee FILE | sha256sum`): every pipe between the docker client and the
# file costs a context switch per 64 KiB (docs/benchmarks.md, §5).
_TO_FILE = 'umask 077; out=$1; shift; "$@" > "$out"; status=$?; echo "dump-exit $status"; [ "$status" -ne 0 ] || sha256sum "$out"'
_FROM_FILE = 'in=$1; shift; exec "$@" < "$in"'


def to_file(argv: Sequence[Arg], path: Arg) -> tuple[Arg, ...]:
    """``argv`` with its stdout written to ``path`` on the host (created 0600), then
    checksummed: the command prints ``dump-exit N`` and, after a dump that succeeded, the
    sha256 line (:func:`parse_written`)."""
    return ("sh", "-c", _TO_FILE, "sh", path, *argv)


@dataclass(frozen=True)
class Written:
    """What :func:`to_file` reports: the dump's exit status (its write's included) and the
    sha256 of the file it wrote."""

    dump_exit: int | None
    sha256: str | None

    @property
    def ok(self) -> bool:
        return self.dump_exit == 0 and self.sha256 is not None


def parse_written(stdout: str) -> Written:
    """Read :func:`to_file`'s report (pure); a missing part is None."""
    status = None
    digest = None
    for line in stdout.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "dump-exit" and rest.strip().isdigit():
            status = int(rest)
        elif re.fullmatch(r"[0-9a-f]{64}", word):
            digest = word
    return Written(status, digest)


def from_file(argv: Sequence[Arg], path: Arg) -> tuple[Arg, ...]:
    """``argv`` reading its stdin from ``path`` on the host."""
    return ("sh", "-c", _FROM_FILE, "sh", path, *argv)


_AFTER_INPUT = 'in=$1; shift; { cat; cat "$in"; } | "$@"'


def after_input(argv: Sequence[Arg], path: Arg) -> tuple[Arg, ...]:
    """``argv`` reading the command's own stdin (a password line) and then ``path`` on the host."""
    return ("sh", "-c", _AFTER_INPUT, "sh", path, *argv)


# --------------------------------------------------------------------------- file facts


def _parse_sha256(stdout: str, path: str) -> str:
    match = re.match(r"([0-9a-f]{64})\b", stdout)
    if not match:
        raise BackupError(f"unexpected sha256sum output for {path}: {stdout.strip()!r}")
    return match.group(1)


def _sha256(target: Target, path: str) -> str:
    result = target.host.run(["sha256sum", path], timeout=3600).check(f"checksum {path}")
    return _parse_sha256(result.stdout, path)


def _size(target: Target, path: str) -> int:
    return int(target.host.run(["stat", "-c", "%s", path]).check(f"stat {path}").stdout.strip())


def _last_line(text: str, default: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and not line.startswith("deployer-baseline:")]
    return lines[-1] if lines else default


def readable_steps(target: Target, path: Arg, engine: str, location: DatabaseLocation | None = None, *,
                   to_the_end: bool = True):  # noqa: ANN201
    """Probes that read a dump; returns ``(ok, what was found or why not)``.

    ``to_the_end``: PostgreSQL's data blocks are read too, not only the table of contents;
    MySQL's gzipped SQL is decompressed to its end (gzip's checksum, mysqldump's last line),
    not only its header (a fresh dump is checked by its exit status and its checksum; the
    proof that it restores is the restore verification, :mod:`deployer.server.verification`).
    """
    if engine == SQLITE:
        result = yield Command(from_file(_sqlite_run(target, SQLITE_CHECK), path), check=False, timeout=DUMP_TIMEOUT)
        if not result.ok:
            return False, _last_line(result.stderr, "the SQLite integrity check failed")
        found = result.stdout.strip().splitlines()
        return True, f"integrity_check ok, {found[-1] if found else '?'} tables"
    if engine == MYSQL:
        # Read through the db container's gzip (no credentials: nothing connects).
        argv = target.compose.exec(target.config.app.db_service, ["sh", "-c", MYSQL_READ if to_the_end else MYSQL_HEAD])
        read = yield Command(from_file(argv, path), check=False, timeout=DUMP_TIMEOUT)
        if not read.ok:
            return False, _last_line(read.stderr, "the dump could not be read to its end")
        return True, _last_line(read.stdout, "read to its end")
    listed = yield Command(from_file(_pg_exec(target, PG_LIST, location=location), path), check=False, timeout=DUMP_TIMEOUT)
    if not listed.ok:
        return False, _last_line(listed.stderr, "pg_restore --list failed")
    entries = sum(1 for line in listed.stdout.splitlines() if line and not line.startswith(";"))
    if not to_the_end:
        return True, f"{entries} archive entries listed"
    full = yield Command(from_file(_pg_exec(target, PG_READ_ALL, location=location), path), check=False, timeout=DUMP_TIMEOUT)
    if not full.ok:
        return False, _last_line(full.stderr, "pg_restore could not read the dump to its end")
    return True, f"{entries} archive entries, read to the end"


def _readable(target: Target, path: str, engine: str, location: DatabaseLocation | None = None) -> tuple[bool, str]:
    return drive(target.host, readable_steps(target, path, engine, location), {})


# --------------------------------------------------------------------------- create / verify / list

BACKUP_ID = "backup_id"


def create_steps(
    target: Target,
    *,
    backup_id: str,
    release: str | None,
    revision: tuple[str, ...],
    reason: str = PRE_RELEASE,
    lock_wait_timeout: float = 60.0,
    location: DatabaseLocation | None = None,
    planning: bool = False,
):  # noqa: ANN201 - a generator of actions returning the Backup
    """The actions that dump the database into ``backup_dir``, checksummed as it is written.

    It counts once the dump (its write included) exited 0 and its table of contents reads
    back; whether it restores is the restore verification's to say (after the switch).

    ``backup_id`` is shown in a plan as the run-time value ``{backup_id}``. On any failure the temporary file is
    removed and :class:`BackupError` says why; nothing named ``*.dump`` or ``*.json`` is left.
    """
    where = location_of(target, location)
    engine = where.engine
    backup_dir = target.env.backup_dir
    final = Value(BACKUP_ID, posixpath.join(backup_dir, "{}" + DUMP_SUFFIX))
    partial = Value(BACKUP_ID, posixpath.join(backup_dir, "{}" + DUMP_SUFFIX + PARTIAL_SUFFIX))
    yield Command(("mkdir", "-p", backup_dir))
    yield Command(("chmod", "700", backup_dir))
    baseline: dict[str, Any] | None = None
    try:
        if engine == MYSQL:
            holder = yield Read("hold the app's writes, open a snapshot and count every table in it (beside the dump, "
                                "which lets the writes go once its own snapshot exists)",
                                lambda ctx: _remember_hold(ctx, _open_mysql_baseline(target, where)))
            try:
                result = yield Command(to_file(dump_argv(target, location=where, snapshot=Value("dump_hold")
                                                         if planning or holder else None), partial),
                                       what="dump the database", check=False, timeout=DUMP_TIMEOUT,
                                       stdin=holder.password_line if holder else None)
                baseline = holder.baseline if holder else None
            finally:
                if holder is not None:
                    holder.close()
        elif engine == POSTGRESQL:
            holder = yield Read("open a snapshot for the dump and count every table in it (beside the dump)",
                                lambda ctx: _remember(ctx, _open_baseline(target, where, lock_wait_timeout)))
            try:
                result = yield Command(to_file(dump_argv(target, lock_wait_timeout=lock_wait_timeout, location=where,
                                                         snapshot=Value("dump_snapshot") if planning or holder else None),
                                               partial),
                                       what="dump the database", check=False, timeout=DUMP_TIMEOUT)
                baseline = holder.baseline if holder else None
            finally:
                if holder is not None:
                    holder.close()
        else:
            result = yield Command(to_file(dump_argv(target, location=where), partial), what="dump the database",
                                   check=False, timeout=DUMP_TIMEOUT)
            baseline = _sqlite_baseline(result.stderr)
        written = parse_written(result.stdout)
        if not planning and not written.ok:
            raise BackupError(_dump_failure(engine, target.host.name, result, written),
                              hint=f"nothing was changed; check the database service's logs and the free space in {backup_dir}")
        ok, why = yield from readable_steps(target, partial, engine, where, to_the_end=False)
        if not ok:
            raise BackupError(f"the fresh dump does not read back: {why}", hint=f"nothing was changed; check the free space in {backup_dir}")
        size = yield Command(("stat", "-c", "%s", partial), what="size the dump", check=not planning)
        backup = Backup(
            id=backup_id, environment=target.name, release=release, revision=tuple(revision),
            size=0 if planning else int(size.stdout.strip()),
            sha256=written.sha256 or "",
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            path=final.fill({BACKUP_ID: backup_id}), engine=engine, reason=reason, baseline=baseline,
        )
        yield Command(("mv", "-f", partial, final), what="keep the checked dump")
    except GeneratorExit:
        raise
    except BaseException:
        # Ctrl-C and a lost connection included; if the host is gone, prune clears it later.
        with contextlib.suppress(Exception):  # the original failure is the one to report
            yield Command(("rm", "-f", partial), check=False, timeout=60)
        raise
    # Written last: a dump without its description is not listed, never restored.
    yield Write(Value(BACKUP_ID, posixpath.join(backup_dir, "{}" + META_SUFFIX)), backup.to_json(), mode=0o600,
                what="the backup's description")
    return backup


def _dump_failure(engine: str, host: str, result: Any, written: Written) -> str:
    """Why a dump written by :func:`to_file` failed: the dump (or its write), or the checksum."""
    reason = _last_line(result.stderr, "")[-500:]
    if written.dump_exit not in (0, None):
        return f"the {engine} dump failed on {host} (exit {written.dump_exit}): {reason}"
    return f"the {engine} dump on {host} did not finish (exit {result.exit_code}): {reason or 'no checksum was reported'}"


def _open_baseline(target: Target, location: DatabaseLocation, lock_wait_timeout: float = 60.0) -> _Held | None:
    """Export the dump's snapshot (through the SSH connection) and start counting in it;
    None when deployer has no URL to connect with."""
    from deployer.db.writes import Snapshot
    from deployer.server.facts import connectable_url

    if location.url == "postgresql://":
        return None  # nothing to connect with: the dump goes on, without a baseline
    urls = connectable_url(target, location)
    url = urls.__enter__()
    try:
        snapshot = Snapshot(url, lock_wait=lock_wait_timeout)
    except BaseException:
        urls.__exit__(None, None, None)
        raise
    snapshot.count()  # beside the dump, in the same snapshot
    return _Held(snapshot, urls)


class _Held:
    """The snapshot the dump is taken in, and the tunnel it is reached through."""

    def __init__(self, snapshot: Any, urls: Any, *, password_line: bytes | None = None) -> None:
        self._snapshot = snapshot
        self._urls = urls
        # PostgreSQL: the exported snapshot's id; MySQL: the connection holding the writes ("" none).
        self.snapshot_id = str(getattr(snapshot, "snapshot_id", None) or getattr(snapshot, "hold_id", None) or "")
        self.password_line = password_line

    @property
    def baseline(self) -> dict[str, Any]:
        return self._snapshot.baseline()

    def close(self) -> None:
        try:
            self._snapshot.close()
        finally:
            with contextlib.suppress(Exception):
                self._urls.__exit__(None, None, None)


def _remember(ctx, holder: _Held | None) -> _Held | None:  # noqa: ANN001 - a Context, or None outside a run
    """Name the exported snapshot in the run's values, so the plan and the trace show it as {dump_snapshot}."""
    if ctx is not None and holder is not None:
        ctx.values["dump_snapshot"] = holder.snapshot_id
    return holder


def _open_mysql_baseline(target: Target, location: DatabaseLocation) -> _Held:
    """Hold the app's writes, start the snapshot the rows are counted in and count them
    (:class:`deployer.db.mysql.Snapshot`), through the SSH connection."""
    from deployer.db.mysql import Snapshot
    from deployer.server.facts import connectable_url

    urls = connectable_url(target, location)
    url = urls.__enter__()
    try:
        snapshot = Snapshot(url)
        line = password_line(target, location)
    except BaseException:
        urls.__exit__(None, None, None)
        raise
    snapshot.count()
    return _Held(snapshot, urls, password_line=line)


def _remember_hold(ctx, holder: _Held | None) -> _Held | None:  # noqa: ANN001 - a Context, or None outside a run
    """Name the connection holding the writes in the run's values ({dump_hold} in the plan)."""
    if ctx is not None and holder is not None:
        ctx.values["dump_hold"] = holder.snapshot_id
    return holder


def _sqlite_baseline(stderr: str) -> dict[str, Any] | None:
    for line in stderr.splitlines():
        if line.startswith("deployer-baseline: "):
            try:
                return json.loads(line[len("deployer-baseline: "):])
            except ValueError:
                return None
    return None


def create(
    target: Target,
    *,
    release: str | None,
    revision: tuple[str, ...],
    reason: str = PRE_RELEASE,
    lock_wait_timeout: float = 60.0,
    location: DatabaseLocation | None = None,
) -> Backup:
    """Dump the environment's database into ``backup_dir``; it counts only once read back.

    Call under the deploy lock. See :func:`create_steps`.
    """
    values = {BACKUP_ID: new_id()}
    body = create_steps(target, backup_id=values[BACKUP_ID], release=release, revision=revision, reason=reason,
                        lock_wait_timeout=lock_wait_timeout, location=location)
    return _drive_with_reads(target, body, values)


def _drive_with_reads(target: Target, body, values: dict[str, str]):  # noqa: ANN001, ANN202
    """:func:`deployer.actions.drive`, also answering Read actions (outside a release)."""
    from types import SimpleNamespace

    run = SimpleNamespace(values=values, planning=False, target=target)
    return drive(target.host, body, values, answer=lambda action: action.read(cast(Any, run)))


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


def description_paths(host: Host, backup_dir: str) -> list[str] | None:
    """The backups' descriptions under ``backup_dir``, oldest first (ids sort by time);
    None when the directory cannot be listed (``[]`` when it is not there)."""
    listing = host.run(["find", backup_dir, "-maxdepth", "1", "-name", "*" + META_SUFFIX, "-type", "f"], timeout=30)
    if not listing.ok:
        return [] if "No such file" in listing.stderr else None
    return sorted(filter(None, listing.stdout.splitlines()))


def list_backups(target: Target, *, all_environments: bool = False) -> list[Backup]:
    """The backups under ``backup_dir`` (this environment's unless ``all_environments``), oldest first."""
    host = target.host
    backups = []
    for path in description_paths(host, target.env.backup_dir) or []:
        try:
            backup = Backup.from_dict(json.loads(host.read_text(path)))
        except (ValueError, TypeError, CommandError, OSError):
            continue
        # Beside its description, wherever it was made (backups move with the state dir).
        backup = replace(backup, path=posixpath.join(posixpath.dirname(path), backup.id + DUMP_SUFFIX))
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


def restore_steps(target: Target, backup: Backup, location: DatabaseLocation | None = None):  # noqa: ANN201
    """The command that replaces the database's contents with the backup's, in one transaction.

    Verify the backup first (:func:`verify`); recovery checks it when it plans the restore.
    """
    where = location_of(target, location)
    if backup.engine == MYSQL and where.engine != MYSQL:
        where = locate(target)  # the MySQL tools need the app's user: from the compose configuration
    if backup.engine != where.engine:
        raise BackupError(f"backup {backup.id} is a {backup.engine} dump; {target.name} uses {where.engine}")
    stdin: bytes | None = None
    if backup.engine == SQLITE:
        argv: list[Arg] = list(_sqlite_run(target, SQLITE_CHECK, "restore", sqlite_path(where.url)))
    elif backup.engine == MYSQL:
        secret = yield Read("the database user's password (for the tools in the db container)",
                            lambda ctx: password_line(target, where))
        argv, stdin = _mysql_exec(target, MYSQL_RESTORE, where, MYSQL_DROPS), secret
    else:
        argv = _pg_exec(target, PG_RESTORE, location=where)
    source = after_input(argv, backup.path) if backup.engine == MYSQL else from_file(argv, backup.path)
    result = yield Command(source, what=f"restore backup {backup.id}", check=False, timeout=DUMP_TIMEOUT, stdin=stdin)
    if not result.ok:
        raise BackupError(
            f"restoring backup {backup.id} failed (exit {result.exit_code}): {result.stderr.strip()[-500:]}",
            hint=("MySQL commits each statement: if it failed while loading, the database is partly restored; restore "
                  "it again once the cause is fixed" if backup.engine == MYSQL and result.exit_code != 3 else
                  "the restore runs in one transaction, so the database was left as it was"),
        )


def restore(target: Target, backup: Backup, location: DatabaseLocation | None = None) -> None:
    """Replace the database's contents with the backup's (verified first), in one transaction
    (MySQL: statement by statement)."""
    verify(target, backup)
    drive(target.host, restore_steps(target, backup, location), {}, answer=lambda action: action.read(None))


def locate(target: Target) -> DatabaseLocation:
    """The database of the deployed checkout, as its compose configuration states it."""
    from deployer.server import facts

    if target.env.database_url:
        return location_of(target)
    return facts.database_location(target, facts.compose_config(target))


def current_revision(target: Target, location: DatabaseLocation | None = None) -> tuple[str, ...]:
    """The database's alembic revision(s) now; () for an empty database."""
    from deployer.server import facts

    where = location or locate(target)
    revisions = facts.read_revisions(target, where)
    if revisions is None:
        db = target.config.app.db_service or target.config.app.web_service
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
    force: bool = False,
    source: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> RestoreOutcome:
    """Verify, confirm, lock, take a safety backup of the current state, restore, read back.

    ``confirm`` asks the user a yes/no question; ``None`` means there is no terminal, and
    then only ``yes`` lets the restore go on (never a hang waiting for input). A backup that
    failed its restore verification is refused unless ``force``.
    """
    from deployer.server import copies, journal, lock

    backup, origin = choose(target, backup_id, source, log=log)
    if origin is None:
        log(f"verifying backup {backup.id} ...")
        verify(target, backup)
    refuse_unproven(backup, force=force, log=log)
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
        refuse_interrupted_run(target)
        if origin is not None:
            backup = replace(copies.bring_back(target, backup, origin, log=log), verification=backup.verification)
            verify(target, backup)
        where = locate(target)
        before = current_revision(target, where)
        safety = None
        if safety_backup:
            current = journal.last_succeeded(journal.read(target.host, target.state_dir))
            log("taking a safety backup of the current state ...")
            safety = create(target, release=current.id if current else None, revision=before, reason=PRE_RESTORE, location=where)
            log(f"safety backup {safety.id} ({safety.size} bytes)")
        log(f"restoring {backup.id} ...")
        restore(target, backup, where)
        after = current_revision(target, where)
    if set(after) != set(backup.revision):
        raise BackupError(
            f"after restoring {backup.id} the database is at {', '.join(after) or 'no revision'}, "
            f"not at the recorded {', '.join(backup.revision) or 'no revision'}",
            hint=f"the state before the restore is in the safety backup {safety.id if safety else '(none taken)'}",
        )
    return RestoreOutcome(backup=backup, safety_backup=safety, revision_before=before, revision_after=after)


def choose(target: Target, backup_id: str, source: str | None = None, *,
           log: Callable[[str], None] = lambda _: None) -> tuple[Backup, BackupCopy | None]:
    """The backup a restore uses, and the copy place it comes from (None: the server's dump).

    ``source``: ``server``, ``local``, a host, or a place as configured. Without one, the
    server's dump when it is there and intact, else a copy (the local one first): a copy has
    the recorded sha256, so it holds the same bytes.
    """
    from deployer.server import copies

    if source in (None, SERVER):
        try:
            backup = find(target, backup_id)
        except BackupError:
            if source == SERVER or not target.env.backup_copies:
                raise
            return copies.find_copy(target, backup_id)
        problem = check(target, backup) if source is None and target.env.backup_copies else None
        if problem is None:
            return backup, None
        log(f"the server's dump of {backup.id} is unusable ({problem}): looking for a copy")
        try:
            return copies.find_copy(target, backup.id)
        except BackupError as error:
            raise BackupError(f"backup {backup.id} is invalid: {problem}; and {error.message}",
                              hint="do not rely on it; take a new one with `deployer backups create`") from None
    return copies.find_copy(target, backup_id, source)


def refuse_unproven(backup: Backup, *, force: bool, log: Callable[[str], None] = lambda _: None) -> None:
    """A backup that failed its restore verification is refused without ``force``; one that
    was never restore-verified (or inconclusively) is used with a word of warning."""
    refusal = backup.refusal()
    if refusal is not None:
        if not force:
            raise RefusedError(refusal, hint="restore it anyway with --force (its size and sha256 are still the "
                                             "recorded ones), or choose another backup")
        log(f"warning: {refusal}; restoring it anyway (--force)")
    elif backup.verification is None:
        log(f"note: backup {backup.id} was never restore-verified (`deployer backups verify ENV {backup.id} --restore`)")
    elif not backup.verification.ok:
        log(f"note: backup {backup.id}: {backup.verification.summary()}")


def refuse_interrupted_run(target: Target) -> None:
    """A restore over an interrupted release would mix two half-states: converge first."""
    from deployer.server import runlog

    record = runlog.read(target.host, target.state_dir)
    if record is not None:
        raise RefusedError(
            f"{record.kind} {record.id} of {target.name} was interrupted at step {record.current_step}",
            hint=f"converge it first: `deployer recover {target.name}` (add --dry-run to see what it does)",
        )


@dataclass(frozen=True)
class Created:
    """What ``deployer backups create`` made: the backup (as described on the server), its
    download, and the backup_copy places it could not be copied to."""

    backup: Backup
    local: Path | None = None
    not_copied: tuple[str, ...] = ()


def create_environment(
    target: Target,
    *,
    download_to: Path | None = None,
    restore_verify: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> Created:
    """A manual backup under the deploy lock; restore-verified when asked; copied to every
    backup_copy place, and optionally downloaded to a directory here."""
    from deployer.server import copies, journal, lock, verification

    label = f"{lock.RUN_LABEL}=backup-{new_id()}"
    with lock.held(target.host, target.state_dir, f"backups create {target.name}", env_name=target.name, label=label):
        where = locate(target)
        revision = current_revision(target, where)
        current = journal.last_succeeded(journal.read(target.host, target.state_dir))
        backup = create(target, release=current.id if current else None, revision=revision, reason=MANUAL, location=where)
        log(f"backup {backup.id}: {backup.size} bytes, sha256 {backup.sha256[:12]}…")
        if restore_verify:
            log(f"restoring {backup.id} into a scratch database ...")
            checked = drive(target.host, verification.verify_steps(target, backup, run_label=label), {},
                            answer=lambda action: action.read(None))
            backup = drive(target.host, verification.record_steps(target, backup, checked), {})
            log(f"{backup.id}: {checked.summary()}")
        failed: list[str] = []
        if target.env.backup_copies:
            backup, failed = drive(target.host, copies.copy_steps(target, backup, log=log), {})
    local = download(target, backup, download_to) if download_to is not None else None
    if local is not None:
        log(f"downloaded to {local}")
    return Created(backup, local, tuple(failed))


# --------------------------------------------------------------------------- retention


@dataclass(frozen=True)
class Retention:
    """Which backups a prune keeps (with the reason) and which it removes."""

    kept: tuple[tuple[Backup, str], ...]
    removed: tuple[Backup, ...]
    leftovers: tuple[str, ...] = field(default=())  # partial files and dumps without a description
    copies: tuple[Any, ...] = ()  # each backup_copy place's own (deployer.server.copies.Pruned)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": [{"id": b.id, "why": why} for b, why in self.kept],
            "removed": [b.id for b in self.removed],
            "leftovers": list(self.leftovers),
            "copies": [c.to_dict() for c in self.copies],
        }


def _when(stamp: str) -> datetime:
    moment = datetime.fromisoformat(stamp)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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
    from deployer.server import copies, journal, lock

    keep = keep or target.env.keep_backups

    def decide() -> tuple[Retention, list[Any]]:
        records = journal.read(target.host, target.state_dir)
        backups = list_backups(target)
        decision = select_retention(backups, records, keep)
        return Retention(decision.kept, decision.removed, tuple(_leftovers(target))), records

    if dry_run:
        decision, records = decide()
        return replace(decision, copies=tuple(copies.prune_copies(target, records, keep, dry_run=True)))
    with lock.held(target.host, target.state_dir, f"backups prune {target.name}", env_name=target.name):
        decision, records = decide()
        for backup in decision.removed:
            # The description first: a dump without one is never listed nor restored.
            target.host.run(["rm", "-f", backup.meta_path], check=True)
            target.host.run(["rm", "-f", backup.path], check=True)
        if decision.leftovers:
            target.host.run(["rm", "-f", *decision.leftovers], check=True)
        # Every copy place on its own: the same rule over the backups it holds.
        return replace(decision, copies=tuple(copies.prune_copies(target, records, keep, dry_run=False)))
