"""Restore verification: a backup counts as proven once it was restored into a scratch
database and what came back equals what was recorded when it was dumped.

The contract, the same for every engine:

1. The file is the one described: its size and sha256 are the recorded ones.
2. A scratch database is made that cannot reach the live one: a throwaway container of the
   same image the environment runs (so the same server version), with no network, no volume
   of the compose project, and limits on CPU (one core, a quarter of the default weight),
   memory and processes. It is labelled with the run, so the lease holder removes it when
   deployer vanishes (:mod:`deployer.server.lock`), and with the environment's state
   directory, so the next verification sweeps up anything left. It is skipped (inconclusive,
   never failed) when restoring would leave less than :data:`RESERVE` free on the disk of
   Docker's data root, which usually is the live database's disk too.
3. The dump is restored into it from the file on the host.
4. The scratch reports what it holds: the alembic revision(s) and the exact row count of
   every table. :func:`compare` (pure) holds them against the dump-time record — the
   revision, the table list and the per-table counts the backup's baseline took in the very
   snapshot the dump was made in (:mod:`deployer.db.writes`).
5. The scratch is removed on every path (Ctrl-C included).

An engine plugs in with a :class:`ScratchRestore`: how to read the dump-time record from the
baseline, and the actions that start its scratch, restore into it and read it back. The
checks around it (file, free space, sweep, removal, comparison, verdict) are shared.

The verdict (:class:`~deployer.server.backups.Verification`) is ``verified``; ``failed``
when the file changed, the dump does not restore, or what came back differs (such a backup
is refused by a restore without ``--force``); or ``inconclusive`` when the scratch could not
be made (not the dump's fault: the reason says why).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from deployer.actions import Action, Arg, Command, Read, Value, Write
from deployer.db.writes import TABLES_SQL
from deployer.errors import DeployerError
from deployer.server.backups import (
    FAILED,
    INCONCLUSIVE,
    MYSQL,
    MYSQL_RESTORE,
    POSTGRESQL,
    SQLITE,
    VERIFIED,
    Backup,
    Verification,
    after_input,
    from_file,
)
from deployer.server.target import Target

# What the scratch may use: one core and a quarter of the default CPU weight (the live
# database wins when both want the CPU), bounded memory and processes.
CPUS = "1"
CPU_SHARES = "256"
MEMORY = "1g"
PIDS = "256"
# Free space that must remain on the disk of Docker's data root after the restore.
RESERVE = 1 << 30
SCRATCH_LABEL = "deployer.scratch"  # its value: the environment's state_dir
READY_SECONDS = 180
RESTORE_TIMEOUT = 6 * 3600.0

Steps = Generator[Action, Any, Any]


class NotRestorable(DeployerError):
    """The dump did not restore into the scratch database: the backup is at fault."""


class ScratchUnavailable(DeployerError):
    """The scratch database could not be made or read: the verification is inconclusive."""


@dataclass(frozen=True)
class Restored:
    """What a scratch restore holds."""

    revision: tuple[str, ...]
    tables: dict[str, int]


@dataclass(frozen=True)
class Recorded:
    """What the dump held when it was made; ``tables`` None: no counts were recorded."""

    revision: tuple[str, ...]
    tables: dict[str, int] | None


@dataclass(frozen=True)
class Scratch:
    """The throwaway container one verification uses."""

    name: str
    image: Arg  # a run-time value in a plan
    labels: Mapping[str, str]

    def limits(self) -> list[str]:
        argv = ["--name", self.name, "--network", "none", "--cpus", CPUS, "--cpu-shares", CPU_SHARES,
                "--memory", MEMORY, "--pids-limit", PIDS]
        for key, value in sorted(self.labels.items()):
            argv += ["--label", f"{key}={value}"]
        return argv

    def describe(self) -> str:
        return (f"restored into a throwaway container of {self.image} (no network, no volume of the app; "
                f"{CPUS} CPU, {MEMORY} memory)")


class ScratchRestore(Protocol):
    """One engine's part of the contract (see the module docstring)."""

    engine: str

    def recorded(self, backup: Backup) -> Recorded:
        """The dump-time record: the revision and rows per table, named as :meth:`restore` names them."""
        ...

    def image(self, target: Target) -> str:
        """The image the scratch runs: the one the environment's database runs on."""
        ...

    def restore(self, target: Target, backup: Backup, scratch: Scratch) -> Steps:
        """The actions that start the scratch, restore the dump into it and read it back;
        return :class:`Restored`. Raise :class:`NotRestorable` when the dump is at fault,
        :class:`ScratchUnavailable` when the scratch is."""
        ...


# --------------------------------------------------------------------------- comparing


def compare(recorded: Recorded, restored: Restored) -> tuple[str, ...]:
    """Where the restored copy differs from the dump-time record (pure); () when it does not."""
    problems = []
    if set(restored.revision) != set(recorded.revision):
        problems.append(f"revision {', '.join(restored.revision) or 'none'} restored, "
                        f"{', '.join(recorded.revision) or 'none'} recorded")
    if recorded.tables is None:
        return tuple(problems)
    missing = sorted(set(recorded.tables) - set(restored.tables))
    extra = sorted(set(restored.tables) - set(recorded.tables))
    if missing:
        problems.append(f"table(s) missing from the restored copy: {', '.join(missing)}")
    if extra:
        problems.append(f"table(s) restored that were not recorded: {', '.join(extra)}")
    for table in sorted(set(recorded.tables) & set(restored.tables)):
        if restored.tables[table] != recorded.tables[table]:
            problems.append(f"{table}: {restored.tables[table]} rows restored, {recorded.tables[table]} recorded")
    return tuple(problems)


def verdict(recorded: Recorded, restored: Restored, *, checked_at: str, seconds: float, method: str) -> Verification:
    """The verification of a restore that ran (pure)."""
    problems = compare(recorded, restored)
    if problems:
        state = FAILED
    elif recorded.tables is None:
        state, problems = INCONCLUSIVE, ("no row counts were recorded when it was dumped: it restores, at the "
                                         "recorded revision, but its rows cannot be compared",)
    else:
        state = VERIFIED
    return Verification(state=state, checked_at=checked_at, seconds=round(seconds, 3), method=method,
                        revision=tuple(sorted(restored.revision)), tables=dict(sorted(restored.tables.items())),
                        problems=problems)


def room(available: int | None, needed: int | None) -> str | None:
    """Why the scratch restore must not run on this disk (pure), or None."""
    if available is None or needed is None:
        return None
    if available - needed < RESERVE:
        return (f"restoring needs about {needed / 1e6:.0f} MB and would leave {max(available - needed, 0) / 1e6:.0f} MB "
                f"free on the disk of Docker's data root (at least {RESERVE / 1e6:.0f} MB must stay free; the live "
                "database is usually on that disk)")
    return None


# --------------------------------------------------------------------------- PostgreSQL

# Run with psql in the scratch: the revision and every table's exact row count, as one JSON
# line. The table list is the one the dump-time baseline counted (deployer.db.writes).
PG_READ = """\
CREATE FUNCTION pg_temp.restored() RETURNS json LANGUAGE plpgsql AS $body$
DECLARE t record; counts jsonb := '{}'; n bigint; rev json := '[]';
BEGIN
  FOR t IN SELECT name FROM (""" + " ".join(TABLES_SQL.split()) + """) AS listed (name) LOOP
    EXECUTE 'SELECT count(*) FROM ' || t.name INTO n;
    counts := counts || jsonb_build_object(t.name, n);
  END LOOP;
  IF to_regclass('alembic_version') IS NOT NULL THEN
    SELECT coalesce(json_agg(version_num ORDER BY version_num), '[]') INTO rev FROM alembic_version;
  END IF;
  RETURN json_build_object('revision', rev, 'tables', counts);
END
$body$;
SELECT pg_temp.restored();
"""
# A throwaway copy needs no durability: no fsync, minimal WAL (a restore in one transaction
# then writes its tables without WAL), no autovacuum.
PG_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "wal_level=minimal", "max_wal_senders=0",
               "autovacuum=off", "max_wal_size=4GB")
# Ready once it answers over TCP: during first-start initialisation the official image's
# server listens on no TCP port, so this does not see that temporary server.
PG_WAIT = ('i=0; until pg_isready -q -h 127.0.0.1 -p 5432; do i=$((i+1)); '
           f'[ "$i" -gt {READY_SECONDS * 4} ] && exit 1; sleep 0.25; done')


class _ServerScratch:
    """What the database-server engines share: the record their baseline keeps, a scratch of
    the database service's own image, and starting it until it answers."""

    wait_script = ""

    def recorded(self, backup: Backup) -> Recorded:
        baseline = backup.baseline or {}
        revision = tuple(baseline["revision"]) if "revision" in baseline else tuple(backup.revision)
        tables = baseline.get("tables")
        return Recorded(revision, {str(k): int(v) for k, v in tables.items()} if isinstance(tables, dict) else None)

    def image(self, target: Target) -> str:
        return _service_image(target, target.config.app.db_service)

    def start(self, scratch: Scratch, run: Sequence[Arg]) -> Steps:
        """``docker run --detach`` of the scratch (``run``: its environment, image and
        arguments), then wait until it answers over TCP."""
        started = yield Command(("docker", "run", "--detach", *scratch.limits(), *run), what="start the scratch database",
                                check=False, timeout=300)
        if not started.ok:
            raise ScratchUnavailable(f"the scratch container did not start: {_tail(started)}")
        ready = yield Command(("docker", "exec", scratch.name, "sh", "-c", self.wait_script),
                              what="wait for the scratch database", check=False, timeout=READY_SECONDS + 60)
        if not ready.ok:
            logs = yield Command(("docker", "logs", "--tail", "15", scratch.name), check=False, timeout=60)
            raise ScratchUnavailable(f"the scratch database did not get ready: {_tail(logs) or _tail(ready)}")


class PostgresScratch(_ServerScratch):
    engine = POSTGRESQL
    wait_script = PG_WAIT

    def names(self, target: Target) -> tuple[str, str]:
        """The user and database the scratch is made with: the live database's names."""
        from deployer.db.url import parse
        from deployer.server import facts

        user = database = ""
        url = target.env.database_url
        if url and url.startswith("postgres"):
            parsed = parse(url)
            user, database = parsed.username or "", parsed.database or ""
        db = facts.running_db(target)
        env = db.env if db is not None else {}
        user = user or env.get("POSTGRES_USER", "") or "postgres"
        return user, database or env.get("POSTGRES_DB", "") or user

    def restore(self, target: Target, backup: Backup, scratch: Scratch) -> Steps:
        user, database = self.names(target)
        settings = [word for setting in PG_SETTINGS for word in ("-c", setting)]
        yield from self.start(scratch, ("-e", "POSTGRES_HOST_AUTH_METHOD=trust", "-e", f"POSTGRES_USER={user}",
                                        "-e", f"POSTGRES_DB={database}", scratch.image, "postgres", *settings))
        connect = ["-h", "127.0.0.1", "-U", user, "-d", database]
        loaded = yield Command(from_file(("docker", "exec", "-i", scratch.name, "pg_restore", "--no-owner", "--no-privileges",
                                          "--exit-on-error", "--single-transaction", *connect), backup.path),
                               what=f"restore backup {backup.id} into the scratch database", check=False,
                               timeout=RESTORE_TIMEOUT)
        if not loaded.ok:
            raise NotRestorable(f"pg_restore failed (exit {loaded.exit_code}): {_tail(loaded)}")
        read = yield Command(("docker", "exec", scratch.name, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                              *connect, "-c", PG_READ), what="count the rows of every restored table", check=False,
                             timeout=RESTORE_TIMEOUT)
        if not read.ok:
            raise ScratchUnavailable(f"cannot read the restored copy: {_tail(read)}")
        return _restored(read.stdout)


# --------------------------------------------------------------------------- MySQL / MariaDB

# A scratch server of the database's own image (the official mariadb and mysql images' contract:
# root without a password, one database), started for speed over durability.
MYSQL_DATABASE = "deployer_scratch"
MYSQL_ENV = ("MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=1", "MYSQL_ALLOW_EMPTY_PASSWORD=1",
             f"MARIADB_DATABASE={MYSQL_DATABASE}", f"MYSQL_DATABASE={MYSQL_DATABASE}")
MYSQL_SETTINGS = ("--skip-log-bin", "--loose-innodb-flush-log-at-trx-commit=0", "--loose-innodb-doublewrite=OFF",
                  "--loose-sync-binlog=0")
# Ready once it answers over TCP: during first-start initialisation the official images'
# temporary server listens on its socket only.
MYSQL_WAIT = ('client=$(command -v mariadb || command -v mysql); i=0; '
              'until "$client" --no-defaults --protocol=tcp --host=127.0.0.1 --port=3306 --user=root -e "SELECT 1" '
              f'>/dev/null 2>&1; do i=$((i+1)); [ "$i" -gt {READY_SECONDS * 4} ] && exit 1; sleep 0.25; done')
# Every table's exact row count and the alembic revision, as tab-separated lines
# ("table NAME ROWS", "revision REV 0"), from one statement prepared from the table list.
MYSQL_COUNTS = """\
SET SESSION group_concat_max_len = 1073741824;
SELECT GROUP_CONCAT(CONCAT('SELECT ''table'', ', QUOTE(TABLE_NAME), ', COUNT(*) FROM `',
  REPLACE(TABLE_NAME, '`', '``'), '`') SEPARATOR ' UNION ALL ') INTO @counts FROM information_schema.TABLES
  WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE' AND TABLE_NAME <> 'alembic_version';
SELECT IF(COUNT(*) > 0, 'SELECT ''revision'', version_num, 0 FROM alembic_version', NULL) INTO @revision
  FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'alembic_version';
SET @query = IF(@counts IS NULL AND @revision IS NULL, 'SELECT ''none'', '''', 0',
  CONCAT_WS(' UNION ALL ', @counts, @revision));
PREPARE counting FROM @query;
EXECUTE counting;
"""
MYSQL_READ_BACK = ('client=$(command -v mariadb || command -v mysql); exec "$client" --no-defaults --protocol=tcp '
                   '--host=127.0.0.1 --port=3306 --user=root --batch --skip-column-names --raw "$1" -e "$2"')


def parse_counts(stdout: str) -> Restored:
    """:data:`MYSQL_COUNTS`' lines as a :class:`Restored` (pure)."""
    revision: list[str] = []
    tables: dict[str, int] = {}
    for line in stdout.splitlines():
        kind, _, rest = line.partition("\t")
        value, _, rows = rest.rpartition("\t")
        if kind == "table" and rows.strip().isdigit():
            tables[value] = int(rows)
        elif kind == "revision" and value:
            revision.append(value)
        elif kind not in ("none", ""):
            raise ScratchUnavailable(f"the scratch printed an unreadable line: {line[:200]!r}")
    return Restored(tuple(sorted(revision)), tables)


class MysqlScratch(_ServerScratch):
    engine = MYSQL
    wait_script = MYSQL_WAIT

    def restore(self, target: Target, backup: Backup, scratch: Scratch) -> Steps:
        from deployer.server.backups import MYSQL_DROPS

        env = [word for setting in MYSQL_ENV for word in ("-e", setting)]
        yield from self.start(scratch, (*env, scratch.image, *MYSQL_SETTINGS))
        # root has no password in the scratch: an empty password line.
        loaded = yield Command(after_input(("docker", "exec", "-i", scratch.name, "sh", "-c", MYSQL_RESTORE, "sh", "3306",
                                            "root", MYSQL_DATABASE, MYSQL_DROPS), backup.path),
                               what=f"restore backup {backup.id} into the scratch database", check=False,
                               timeout=RESTORE_TIMEOUT, stdin=b"\n")
        if loaded.exit_code == 127:
            raise ScratchUnavailable(f"the scratch cannot restore: {_tail(loaded)}")
        if not loaded.ok:
            raise NotRestorable(f"the dump did not load (exit {loaded.exit_code}): {_tail(loaded)}")
        read = yield Command(("docker", "exec", scratch.name, "sh", "-c", MYSQL_READ_BACK, "sh", MYSQL_DATABASE,
                              MYSQL_COUNTS), what="count the rows of every restored table", check=False,
                             timeout=RESTORE_TIMEOUT)
        if not read.ok:
            raise ScratchUnavailable(f"cannot read the restored copy: {_tail(read)}")
        return parse_counts(read.stdout)


# --------------------------------------------------------------------------- SQLite

# Run with python3 in a scratch container of the web image; the dump (a SQLite database
# file) arrives on stdin. Exit 3: the dump is not a sound database.
SQLITE_READ = """\
import json, os, shutil, sqlite3, sys, tempfile
fd, copy = tempfile.mkstemp(suffix=".sqlite")
with os.fdopen(fd, "wb") as handle:
    shutil.copyfileobj(sys.stdin.buffer, handle, 1 << 20)
try:
    db = sqlite3.connect("file:" + copy + "?mode=ro", uri=True)
    verdict = [row[0] for row in db.execute("PRAGMA integrity_check")]
    if verdict != ["ok"]:
        sys.stderr.write("integrity_check: " + "; ".join(verdict)[:300] + "\\n")
        sys.exit(3)
    tables = {}
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                              "AND name <> 'alembic_version'"):
        tables[name] = db.execute('SELECT count(*) FROM "' + name.replace('"', '""') + '"').fetchone()[0]
    try:
        revision = sorted(row[0] for row in db.execute("SELECT version_num FROM alembic_version"))
    except sqlite3.OperationalError:
        revision = []
    print(json.dumps({"revision": revision, "tables": tables}))
except sqlite3.DatabaseError as error:
    sys.stderr.write(str(error) + "\\n")
    sys.exit(3)
finally:
    os.unlink(copy)
"""


class SqliteScratch:
    engine = SQLITE

    def recorded(self, backup: Backup) -> Recorded:
        baseline = backup.baseline or {}
        revision = tuple(baseline["revision"]) if "revision" in baseline else tuple(backup.revision)
        tables = baseline.get("tables")
        if not isinstance(tables, dict):
            return Recorded(revision, None)
        return Recorded(revision, {str(k): int(v[0] if isinstance(v, list) else v) for k, v in tables.items()})

    def image(self, target: Target) -> str:
        return _service_image(target, target.config.app.web_service)

    def restore(self, target: Target, backup: Backup, scratch: Scratch) -> Steps:
        read = yield Command(from_file(("docker", "run", "--rm", "-i", *scratch.limits(), "--entrypoint", "python3",
                                        scratch.image, "-c", SQLITE_READ), backup.path),
                             what=f"restore backup {backup.id} into a scratch copy and read it", check=False,
                             timeout=RESTORE_TIMEOUT)
        if read.exit_code == 3:
            raise NotRestorable(f"the copy is not a sound SQLite database: {_tail(read)}")
        if not read.ok:
            raise ScratchUnavailable(f"the scratch container did not run: {_tail(read)}")
        return _restored(read.stdout)


ENGINES: dict[str, ScratchRestore] = {POSTGRESQL: PostgresScratch(), SQLITE: SqliteScratch(), MYSQL: MysqlScratch()}


# --------------------------------------------------------------------------- shared


def _tail(result: Any) -> str:
    text = (result.stderr or result.stdout or "").strip()
    return " ".join(text.splitlines()[-3:])[-400:]


def _restored(stdout: str) -> Restored:
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    try:
        data = json.loads(lines[-1])
        return Restored(tuple(sorted(str(r) for r in data.get("revision") or ())),
                        {str(k): int(v) for k, v in (data.get("tables") or {}).items()})
    except (ValueError, IndexError, AttributeError, TypeError):
        raise ScratchUnavailable(f"the scratch printed no readable answer: {stdout.strip()[-200:]!r}") from None


def _service_image(target: Target, service: str) -> str:
    """The image a service runs on: its running container's (exact), else the compose file's."""
    from deployer.server import facts

    if service:
        running = facts.running(facts.service_containers(target, service), service)
        if running is not None:
            return running.image_id
        config = facts.compose_config(target)
        if service in config.services and config.services[service].image:
            return config.services[service].image
    raise ScratchUnavailable(f"no image for the {service or '(none)'} service of {target.name}: neither a running "
                             "container nor an image in the compose file")


# Removes containers an earlier verification of this environment left (a host restart
# while one ran): under the deploy lock, none of them can be in use. $1: the label.
_SWEEP = 'docker ps -aq --filter "label=$1" | xargs -r docker rm -f -v >/dev/null'
_FREE = 'df -Pk "$(docker info --format "{{.DockerRootDir}}")" | awk \'NR == 2 { print $4 * 1024 }\''


SCRATCH_IMAGE = "scratch_image"  # the run-time value a plan shows for the scratch's image


def _remember(ctx: Any, name: str, value: str) -> str:
    """``value``, also named in the run's values (when there is a run) so that a plan and the
    run's trace show it as ``{name}``."""
    values = getattr(ctx, "values", None)
    if isinstance(values, dict):
        values[name] = value
    return value


def early_image(ctx: Any, target: Target, backup: Backup) -> str:
    """The scratch's image, read now (on the thread that runs the steps) for a verification
    that runs beside them: its actions then read nothing but the host."""
    engine = ENGINES.get(backup.engine)
    if engine is None:
        raise ScratchUnavailable(f"deployer cannot restore-verify a {backup.engine} dump yet")
    return _remember(ctx, SCRATCH_IMAGE, engine.image(target))


def remove_argv(target: Target, backup: Backup) -> tuple[str, ...]:
    """The command that removes a verification's scratch container (cuts its restore short)."""
    return ("docker", "rm", "--force", "--volumes", scratch_for(target, backup, "", "").name)


def scratch_for(target: Target, backup: Backup, run_label: str, image: Arg) -> Scratch:
    """The scratch container of one verification: named after the environment and the backup."""
    name = f"deployer-restore-check-{target.compose.project}-{backup.id}"
    key, _, value = run_label.partition("=")
    labels = {SCRATCH_LABEL: target.state_dir, **({key: value} if key else {})}
    return Scratch(name=name, image=image, labels=labels)


def verify_steps(target: Target, backup: Backup, *, run_label: str = "", planning: bool = False,
                 image: str | None = None) -> Steps:
    """The actions of one restore verification (see the module docstring); returns its
    :class:`~deployer.server.backups.Verification`. Never raises for the backup's or the
    scratch's faults (the verdict says them); a signal or a lost connection goes on up,
    after the scratch is removed. ``image``: the scratch's image, already read (see
    :func:`early_image`)."""
    started = time.monotonic()
    checked_at = datetime.now(UTC).isoformat(timespec="seconds")

    def done(state: str, problems: Sequence[str], method: str = "") -> Verification:
        return Verification(state=state, checked_at=checked_at, seconds=round(time.monotonic() - started, 3),
                            method=method, problems=tuple(problems))

    engine = ENGINES.get(backup.engine)
    if engine is None:
        return done(INCONCLUSIVE, [f"deployer cannot restore-verify a {backup.engine} dump yet"])
    present = yield Command(("stat", "-c", "%s", backup.path), what="size the dump", check=False, timeout=60)
    if not planning:
        if not present.ok:
            return done(FAILED, [f"{backup.path} is missing on {target.host.name}"])
        if int(present.stdout.strip() or -1) != backup.size:
            return done(FAILED, [f"its size is {present.stdout.strip()} bytes, not the recorded {backup.size} "
                                 "(truncated or overwritten)"])
    digest = yield Command(("sha256sum", backup.path), what="checksum the dump", check=False, timeout=3600)
    if not planning and digest.stdout[:64] != backup.sha256:
        return done(FAILED, [f"{SHA_PROBLEM} {digest.stdout[:12]}… differs from the recorded {backup.sha256[:12]}… (corrupted)"])
    try:
        found = yield Read("the image the database runs on",
                           lambda ctx: _remember(ctx, SCRATCH_IMAGE, image or engine.image(target)))
    except DeployerError as error:
        return done(INCONCLUSIVE, [error.message])
    scratch = scratch_for(target, backup, run_label, found if found is not None else Value(SCRATCH_IMAGE))
    free = yield Command(("sh", "-c", _FREE), what="free space where Docker keeps containers", check=False, timeout=60)
    needed = (backup.baseline or {}).get("bytes")
    available = int(free.stdout.strip()) if free.ok and free.stdout.strip().isdigit() else None
    short = room(available, int(needed) if isinstance(needed, int) else None)
    if short and not planning:
        return done(INCONCLUSIVE, [short], scratch.describe())
    yield Command(("sh", "-c", _SWEEP, "sh", f"{SCRATCH_LABEL}={target.state_dir}"),
                  what="remove scratch containers an earlier verification left", check=False, timeout=120)
    remove = Command(remove_argv(target, backup), what="remove the scratch container", check=False, timeout=120)
    failure: Verification | None = None
    try:
        restored = yield from engine.restore(target, backup, scratch)
    except GeneratorExit:
        raise
    except NotRestorable as error:
        failure = done(FAILED, [error.message], scratch.describe())
    except (ScratchUnavailable, DeployerError) as error:  # DeployerError: a command that failed on its own (a timeout)
        failure = done(INCONCLUSIVE, [error.message], scratch.describe())
    except BaseException:
        # Ctrl-C and a lost connection included (the lease holder removes it if the host is gone).
        with contextlib.suppress(Exception):  # the original failure is the one to report
            yield remove
        raise
    yield remove
    if planning:
        return done(INCONCLUSIVE, ["not run: a dry run"], scratch.describe())
    if failure is not None:
        return failure
    return verdict(engine.recorded(backup), restored, checked_at=checked_at, seconds=time.monotonic() - started,
                   method=scratch.describe())


SHA_PROBLEM = "its sha256"  # how the problems of a dump whose checksum changed begin


def recheck_steps(backup: Backup, verification: Verification, *, planning: bool = False) -> Steps:
    """The dump checksummed once more where the verdict is kept (a verification that ran
    beside the release started minutes before): the file kept is the file verified, and one
    damaged since fails. Returns the verdict, so amended."""
    digest = yield Command(("sha256sum", backup.path), what="checksum the dump again: the file kept is the one verified",
                           check=False, timeout=3600)
    if planning or (digest.ok and digest.stdout[:64] == backup.sha256):
        return verification
    if any(problem.startswith(SHA_PROBLEM) for problem in verification.problems):
        return verification
    if not digest.ok:
        problem = f"{backup.path} cannot be read any more: {_tail(digest)}"
    else:
        problem = (f"{SHA_PROBLEM} {digest.stdout[:12]}… differs from the recorded {backup.sha256[:12]}… "
                   "(corrupted after it was restored)")
    return replace(verification, state=FAILED, problems=(problem, *verification.problems))


def record_steps(target: Target, backup: Backup, verification: Verification) -> Steps:
    """Keep the verdict in the backup's description (rewritten atomically); returns the
    backup as now described."""
    updated = replace(backup, verification=verification)
    yield Write(backup.meta_path, updated.to_json(), mode=0o600, what="the backup's description, with the verdict")
    return updated


def _read_now(action: Any) -> Any:
    """Outside a run, a :class:`~deployer.actions.Read` is made at once."""
    return action.read(None)


def verify_environment(target: Target, backup_ids: Sequence[str] = (), *,
                       log: Any = lambda _: None) -> list[Backup]:
    """``deployer backups verify ENV [ID ...] --restore``: restore-verify each backup (all of the
    environment's by default) under the deploy lock, keeping each verdict in its description;
    returns the backups as now described."""
    from deployer.actions import drive
    from deployer.server import backups, lock

    run = f"verify-{backups.new_id()}"
    label = f"{lock.RUN_LABEL}={run}"
    with lock.held(target.host, target.state_dir, f"backups verify {target.name} --restore", env_name=target.name,
                   label=label):
        chosen = [backups.find(target, backup_id) for backup_id in backup_ids] if backup_ids else backups.list_backups(target)
        checked = []
        for backup in chosen:
            log(f"restoring {backup.id} into a scratch database ...")
            verification = drive(target.host, verify_steps(target, backup, run_label=label), {}, answer=_read_now)
            checked.append(drive(target.host, record_steps(target, backup, verification), {}))
            log(f"{backup.id}: {verification.summary()}")
    return checked
