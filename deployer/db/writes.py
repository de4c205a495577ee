"""Writes made since a backup: what restoring it would throw away.

Automatic recovery must never restore a dump over rows users were told were saved. So a
backup records a **baseline** of what it contains, and before any restore deployer counts
what changed since:

* PostgreSQL: the dump is taken in a snapshot exported by a transaction deployer holds
  open (``pg_dump --snapshot``), in which it also counts every table's rows. Later, a row
  whose creating transaction (``xmin``) the snapshot could not see was written after the
  dump; rows of the dump that are gone were deleted (or replaced by an update). The
  migration's own transaction (``xmin`` of ``alembic_version``) is not counted.
  Conservative: a data migration that rewrote rows counts as changes.
* SQLite: the dump's own copy is counted (rows and largest rowid per table, and the schema
  version); a later difference is a change. An update in place that keeps both is not
  visible to this check: SQLite keeps no record of it.
* MySQL/MariaDB: every table's rows and a checksum per column, counted in the dump's
  snapshot, are compared with the table now (:mod:`deployer.db.mysql`).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deployer.errors import DeployerError

_WRAP = 1 << 32
_HALF = 1 << 31

TABLES_SQL = """
SELECT quote_ident(schemaname) || '.' || quote_ident(tablename)
FROM pg_tables
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND tablename <> 'alembic_version'
ORDER BY 1
"""


@dataclass(frozen=True)
class Changes:
    """Rows changed since a backup, per table (inserted or updated, and gone)."""

    written: Mapping[str, int] = field(default_factory=dict)  # new row versions by the app
    gone: Mapping[str, int] = field(default_factory=dict)  # rows of the dump no longer there
    exact: bool = True  # False: the counts are lower bounds (SQLite, MySQL: rows, not row versions)
    unknown: tuple[str, ...] = ()  # tables that cannot be compared: each counts as changed

    @property
    def total(self) -> int:
        return sum(self.written.values()) + sum(self.gone.values()) + len(self.unknown)

    def describe(self) -> str:
        parts = []
        least = "" if self.exact else "at least "
        for table in sorted(set(self.written) | set(self.gone)):
            written, gone = self.written.get(table, 0), self.gone.get(table, 0)
            bits = [f"{least}{written} written" if written else "", f"{gone} gone" if gone else ""]
            parts.append(f"{table}: " + ", ".join(b for b in bits if b))
        parts += [f"{table}: cannot be compared (its primary key changed)" for table in self.unknown]
        return "; ".join(parts) or "none"


def parse_snapshot(text: str) -> tuple[int, int, tuple[int, ...]]:
    """``xmin:xmax:xip,...`` (pg_current_snapshot) -> the three parts."""
    xmin, xmax, xip = text.strip().split(":")
    return int(xmin), int(xmax), tuple(int(x) for x in xip.split(",") if x)


def invisible(xid: int, snapshot: str) -> bool:
    """Whether a 32-bit row ``xmin`` was not visible to ``snapshot``: committed after it (pure).

    Works modulo 2**32 around the snapshot, as PostgreSQL itself compares transaction ids.
    """
    xmin, xmax, xip = parse_snapshot(snapshot)
    low = xmin % _WRAP
    distance = (xid - low) % _WRAP
    width = (xmax - xmin) % _WRAP
    if distance >= _HALF:
        return False  # older than the snapshot's horizon: committed before it
    if distance >= width:
        return True
    return xid in {x % _WRAP for x in xip}


def _after_sql(snapshot: str) -> tuple[str, dict[str, Any]]:
    """A SQL predicate on ``xmin`` equal to :func:`invisible` for this snapshot."""
    xmin, xmax, xip = parse_snapshot(snapshot)
    params = {"low": xmin % _WRAP, "width": (xmax - xmin) % _WRAP, "xip": [x % _WRAP for x in xip] or [-1]}
    distance = f"((xmin::text::bigint - :low + {_WRAP}) % {_WRAP})"
    return f"({distance} < {_HALF} AND ({distance} >= :width OR xmin::text::bigint = ANY(:xip)))", params


class Snapshot:
    """A repeatable-read transaction whose snapshot ``pg_dump --snapshot`` dumps in, and the
    count of every table in that same snapshot: what the dump holds.

    Opening it exports the snapshot at once; :meth:`count` then counts in a thread of its own
    while the dump runs (one connection, used by that thread only until :meth:`baseline`
    joins it), so counting adds nothing to the dump's time. The transaction stays open until
    :meth:`close`. Through psycopg2 alone when libpq reads the URL (SQLAlchemy's import costs
    more than a small dump), else through SQLAlchemy's connection.
    """

    def __init__(self, url: str, *, lock_wait: float = 60.0) -> None:
        from deployer.db.url import pg_params

        self._engine: Any = None
        self._thread: threading.Thread | None = None
        self._counted: dict[str, Any] | None = None
        self._failure: BaseException | None = None
        params = pg_params(url)
        try:
            if params is not None:
                import psycopg2

                self._connection = psycopg2.connect(**{**params, "connect_timeout": "10"})
            else:
                from sqlalchemy import create_engine
                from sqlalchemy.pool import NullPool

                from deployer.db.url import driver_url

                self._engine = create_engine(driver_url(url), poolclass=NullPool, connect_args={"connect_timeout": 10})
                self._connection = self._engine.raw_connection()
            # The driver would open a transaction of its own (read committed) before ours.
            getattr(self._connection, "driver_connection", self._connection).autocommit = True
            with self._connection.cursor() as cursor:
                cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                # Counting waits for a table lock no longer than the dump does, then fails.
                cursor.execute(f"SET LOCAL lock_timeout = '{int(lock_wait * 1000)}ms'")
                cursor.execute("SELECT pg_export_snapshot(), pg_current_snapshot()::text")
                self.snapshot_id, self.snapshot = (str(value) for value in cursor.fetchone())
        except DeployerError:
            raise
        except Exception as error:  # noqa: BLE001 - a database error becomes one message
            self.close()
            raise DeployerError(f"cannot record what the backup holds: {type(error).__name__}: {error}") from None

    def count(self) -> None:
        """Count every table, the alembic revision and the database's size, in a thread."""
        self._thread = threading.Thread(target=self._count, name="backup-baseline", daemon=True)
        self._thread.start()

    def _count(self) -> None:
        try:
            with self._connection.cursor() as cursor:
                cursor.execute(TABLES_SQL)
                tables = {}
                for (name,) in cursor.fetchall():
                    cursor.execute(f"SELECT count(*) FROM {name}")
                    tables[name] = int(cursor.fetchone()[0])
                cursor.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
                revision = []
                if cursor.fetchone()[0]:
                    cursor.execute("SELECT version_num FROM alembic_version")
                    revision = sorted(str(row[0]) for row in cursor.fetchall())
                cursor.execute("SELECT pg_database_size(current_database())")
                size = int(cursor.fetchone()[0])
            self._counted = {"snapshot": self.snapshot, "tables": tables, "revision": revision, "bytes": size}
        except BaseException as error:  # noqa: BLE001 - raised again by baseline(), in the caller's thread
            self._failure = error

    def baseline(self) -> dict[str, Any]:
        """``{"snapshot": "xmin:xmax:xip", "tables": {table: rows}, "revision": [...], "bytes": N}``,
        once counted (the revision and counts are what a restore must give back,
        :mod:`deployer.server.verification`)."""
        if self._thread is None:
            self.count()
        assert self._thread is not None
        self._thread.join()
        if self._failure is not None or self._counted is None:
            error = self._failure
            raise DeployerError(f"cannot record what the backup holds: {type(error).__name__}: {error}") from None
        return self._counted

    def close(self) -> None:
        """End the transaction (a count still running is cancelled first)."""
        connection = getattr(self, "_connection", None)
        with contextlib.suppress(Exception):
            if self._thread is not None and self._thread.is_alive() and connection is not None:
                getattr(connection, "driver_connection", connection).cancel()
                self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            if connection is not None:
                connection.close()  # the read-only transaction ends with it: nothing to keep
        if self._engine is not None:
            self._engine.dispose()


def pg_changes(url: str, baseline: Mapping[str, Any]) -> Changes:
    """What changed in the database at ``url`` since ``baseline`` (see the module docstring)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from deployer.db.url import driver_url

    condition, params = _after_sql(str(baseline["snapshot"]))
    engine = create_engine(driver_url(url), poolclass=NullPool, connect_args={"connect_timeout": 10})
    written: dict[str, int] = {}
    gone: dict[str, int] = {}
    try:
        with engine.connect() as connection:
            migration_xids = [int(x) for (x,) in connection.execute(text(
                "SELECT xmin::text::bigint FROM alembic_version")).fetchall()] if _has_version_table(connection) else []
            params = {**params, "mine": migration_xids or [-1]}
            dumped: Mapping[str, int] = baseline.get("tables") or {}
            names = [n for (n,) in connection.execute(text(TABLES_SQL))]
            for name in names:
                row = connection.execute(text(
                    f"SELECT count(*), count(*) FILTER (WHERE {condition} AND NOT xmin::text::bigint = ANY(:mine)), "
                    f"count(*) FILTER (WHERE NOT {condition}) FROM {name}"), params).one()
                live, new, old = int(row[0]), int(row[1]), int(row[2])
                if new:
                    written[name] = new
                if name in dumped:
                    missing = int(dumped[name]) - old
                    if missing > 0:
                        gone[name] = missing
                del live
    except Exception as error:  # noqa: BLE001
        raise DeployerError(f"cannot count the writes since the backup: {type(error).__name__}: {error}") from None
    finally:
        engine.dispose()
    return Changes(written, gone)


def _has_version_table(connection: Any) -> bool:
    from sqlalchemy import text

    return bool(connection.execute(text("SELECT to_regclass('alembic_version') IS NOT NULL")).scalar_one())


# The SQLite baseline: run with python3 against a database file (argv[1]); prints JSON.
SQLITE_COUNTS = """\
import json, os, sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
tables = {}
for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> 'alembic_version'"):
    quoted = '"' + name.replace('"', '""') + '"'
    count = db.execute("SELECT count(*) FROM " + quoted).fetchone()[0]
    try:
        top = db.execute("SELECT max(rowid) FROM " + quoted).fetchone()[0]
    except sqlite3.OperationalError:
        top = None
    tables[name] = [count, top]
try:
    revision = sorted(row[0] for row in db.execute("SELECT version_num FROM alembic_version"))
except sqlite3.OperationalError:
    revision = []
print(json.dumps({"tables": tables, "schema_version": db.execute("PRAGMA schema_version").fetchone()[0],
                  "revision": revision, "bytes": os.path.getsize(sys.argv[1])}))
"""


def sqlite_changes(baseline: Mapping[str, Any], now: Mapping[str, Any]) -> Changes:
    """Compare two SQLite baselines (pure)."""
    before: Mapping[str, Any] = baseline.get("tables") or {}
    after: Mapping[str, Any] = now.get("tables") or {}
    written: dict[str, int] = {}
    gone: dict[str, int] = {}
    for name in sorted(set(before) | set(after)):
        count0, top0 = before.get(name, [0, None])
        count1, top1 = after.get(name, [0, None])
        if (top1 or 0) > (top0 or 0):
            written[name] = max(1, count1 - count0) if count1 >= count0 else (top1 or 0) - (top0 or 0)
        if count1 < count0:
            gone[name] = count0 - count1
    return Changes(written, gone, exact=False)


def schema_changed(baseline: Mapping[str, Any] | None, now: Mapping[str, Any]) -> bool:
    """SQLite: whether the schema changed since the baseline (a half-applied migration)."""
    return baseline is not None and bool(baseline) and baseline.get("schema_version") != now.get("schema_version")


def to_json(baseline: Mapping[str, Any]) -> str:
    return json.dumps(baseline, sort_keys=True)
