"""MySQL and MariaDB as deployer reads them: through PyMySQL (pure Python, imported only for
a MySQL URL), over the same SSH forwarding to the db container as PostgreSQL.

Where they differ from PostgreSQL, and what deployer does about it:

* **DDL is not transactional.** MySQL commits each ``CREATE``, ``ALTER``, ``DROP``,
  ``RENAME`` or ``TRUNCATE`` on its own, and the transaction before it. A migration that
  fails halfway leaves the statements before the failure applied, and alembic's revision
  where the last migration that *finished* left it: the revision does not describe the
  schema. :mod:`deployer.db.ddl` names the DDL a release is about to run; a failed
  migration is recovered by restoring the pre-upgrade backup (:mod:`deployer.steps.migrate`).
* **No exported snapshot.** ``mysqldump --single-transaction`` takes its own consistent
  snapshot, which no other session can join. So the rows the dump holds are counted in a
  snapshot of deployer's started while the app's writes are held back for a moment
  (:class:`Snapshot`): no write can commit between the two snapshots, so both see the same
  rows.
* **No row versions.** PostgreSQL tells a row written after the dump by its ``xmin``; here
  each table's row count and a checksum per column (over the primary key and the value),
  taken in the dump's snapshot, are compared with the table now (:func:`changes`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from deployer.db.url import mysql_params, redact_url
from deployer.db.writes import Changes
from deployer.errors import ConfigError, DeployerError, HostError

# Server errors that mean the URL or the credentials cannot work: waiting will not help.
ACCESS_DENIED = (1044, 1045, 1698)  # ER_DBACCESS_DENIED_ERROR, ER_ACCESS_DENIED_ERROR, ER_ACCESS_DENIED_NO_PASSWORD
UNKNOWN_DATABASE = 1049
LOCK_WAIT_TIMEOUT = 1205
NO_PRIVILEGE = (1044, 1142, 1227)  # no LOCK TABLES (database / table / global privilege)
VERSION_TABLE = "alembic_version"

# How long the app's writes may be held back while the dump's snapshot starts, at most:
# past it deployer lets them through itself, and the baseline is not counted as the dump's.
HOLD_LIMIT = 30.0


def name(identifier: str) -> str:
    """A MySQL identifier between backquotes."""
    return "`" + identifier.replace("`", "``") + "`"


def reason(error: BaseException) -> str:
    """The server's (or PyMySQL's) own words for ``error``, with MySQL's error number."""
    args: tuple[Any, ...] = tuple(getattr(error, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        return f"{args[1]} (error {args[0]})"
    return " ".join(str(error).split()) or type(error).__name__


def _code(error: BaseException) -> int | None:
    args = getattr(error, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def connect(url: str, *, connect_timeout: float = 10, read_timeout: float | None = None) -> Any:
    """A PyMySQL connection (autocommit) to the database at ``url``.

    Raises :class:`~deployer.errors.ConfigError` for a URL that names no database and
    :class:`~deployer.errors.HostError` when the server cannot be reached or refuses the
    credentials (its words say which: "Access denied", "Unknown database"); the password
    never appears in a message.
    """
    params = mysql_params(url)
    if params is None:
        raise ConfigError(f"the database URL {redact_url(url)} is not a MySQL/MariaDB URL deployer can read")
    if not params.get("database"):
        raise ConfigError(f"the database URL {redact_url(url)} names no database",
                          hint="add it after the host: mysql://user:password@db:3306/NAME")
    import pymysql

    timeout = max(1, int(connect_timeout))
    try:
        return pymysql.connect(
            host=params.get("host") or "127.0.0.1", port=int(params.get("port") or 3306), user=params.get("user") or "",
            password=params.get("password", ""), database=params["database"], charset=params.get("charset") or "utf8mb4",
            connect_timeout=timeout, read_timeout=read_timeout, write_timeout=read_timeout, autocommit=True,
        )
    except pymysql.MySQLError as error:
        said = reason(error)
        hint = ("check the user and password of the database URL" if _code(error) in ACCESS_DENIED
                else "check the database name of the database URL" if _code(error) == UNKNOWN_DATABASE
                else "is the database running, and is its port reachable where deployer connects?")
        raise HostError(f"cannot connect to the database {redact_url(url)}: {said}", hint=hint) from None


def revisions(url: str, *, connect_timeout: int = 10, version_table: str = VERSION_TABLE,
              version_table_schema: str | None = None) -> tuple[str, ...]:
    """The alembic revision(s) recorded in the database at ``url``, sorted; ``()`` when no
    migration was applied. Every statement is bounded by ``connect_timeout`` too: a server
    that accepts the connection and hangs (behind a lock) must not hang the caller."""
    import pymysql

    connection = connect(url, connect_timeout=connect_timeout, read_timeout=max(1, connect_timeout))
    shown = redact_url(url)
    try:
        with connection.cursor() as cursor:
            schema = "%s" if version_table_schema else "DATABASE()"
            arguments = (version_table_schema, version_table) if version_table_schema else (version_table,)
            cursor.execute("SELECT COUNT(*) FROM information_schema.TABLES "
                           f"WHERE TABLE_SCHEMA = {schema} AND TABLE_NAME = %s", arguments)
            if not cursor.fetchone()[0]:
                return ()
            table = (name(version_table_schema) + "." if version_table_schema else "") + name(version_table)
            cursor.execute(f"SELECT version_num FROM {table}")
            return tuple(sorted(str(row[0]) for row in cursor.fetchall() if row[0]))
    except (pymysql.OperationalError, pymysql.InterfaceError) as error:
        raise HostError(f"cannot read the migration state of the database {shown}: {reason(error)}") from None
    except pymysql.MySQLError as error:
        raise DeployerError(f"reading {version_table} from the database {shown} failed: {reason(error)}",
                            hint="check that the database user may read the alembic version table") from None
    finally:
        with contextlib.suppress(Exception):
            connection.close()


# --------------------------------------------------------------------------- what the dump holds


def tables_and_columns(cursor: Any) -> dict[str, tuple[list[str], list[str]]]:
    """Every base table of the connection's database but alembic's: (its columns in order,
    its primary key's columns in order)."""
    cursor.execute("SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                   "AND TABLE_NAME IN (SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                   "AND TABLE_TYPE = 'BASE TABLE') ORDER BY TABLE_NAME, ORDINAL_POSITION")
    found: dict[str, tuple[list[str], list[str]]] = {}
    for table, column in cursor.fetchall():
        if table != VERSION_TABLE:
            found.setdefault(str(table), ([], []))[0].append(str(column))
    cursor.execute("SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
                   "AND INDEX_NAME = 'PRIMARY' ORDER BY TABLE_NAME, SEQ_IN_INDEX")
    for table, column in cursor.fetchall():
        if str(table) in found:
            found[str(table)][1].append(str(column))
    return found


_SCHEMA_QUERIES = (
    "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() ORDER BY 1",
    "SELECT TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA "
    "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() ORDER BY 1, 3",
    "SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE "
    "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() ORDER BY 1, 2, 3",
    "SELECT TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME "
    "FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = DATABASE() ORDER BY 1, 2, 3",
)


def schema_fingerprint(cursor: Any) -> str:
    """A digest of the database's schema — its tables and views, columns (type, nullability,
    default), indexes and keys — alembic's own table left out: equal digests, the same schema."""
    import hashlib

    digest = hashlib.sha256()
    for query in _SCHEMA_QUERIES:
        cursor.execute(query)
        for row in cursor.fetchall():
            if row[0] != VERSION_TABLE:
                digest.update(repr(tuple(str(v) if v is not None else None for v in row)).encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def read_schema(url: str) -> str:
    """:func:`schema_fingerprint` of the database at ``url`` now."""
    connection = connect(url)
    try:
        with connection.cursor() as cursor:
            return schema_fingerprint(cursor)
    except Exception as error:  # noqa: BLE001
        raise DeployerError(f"cannot read the database's schema: {reason(error)}") from None
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def _encoded(column: str) -> str:
    # '=' + the value, or '-' for NULL: NULL and '' differ.
    return f"COALESCE(CONCAT('=', {name(column)}), '-')"


def checksum_sql(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """One pass over ``table``: its row count, then per column the XOR of a CRC32 of each
    row's key and value (pure). A row inserted, deleted or changed in that column changes
    it (but for a CRC collision); the columns a migration adds are simply not in it."""
    parts = ["COUNT(*)"]
    for column in columns:
        row = ", ".join([*(_encoded(k) for k in key if k != column), _encoded(column)])
        parts.append(f"BIT_XOR(CRC32(CONCAT_WS(0x1F, {row})))")
    return f"SELECT {', '.join(parts)} FROM {name(table)}"


def measure(cursor: Any, table: str, columns: Sequence[str], key: Sequence[str]) -> tuple[int, dict[str, int]]:
    """(rows, checksum per column) of one table, in the cursor's transaction."""
    cursor.execute(checksum_sql(table, columns, key))
    row = cursor.fetchone()
    return int(row[0]), {column: int(value or 0) for column, value in zip(columns, row[1:], strict=True)}


class Snapshot:
    """What a ``mysqldump --single-transaction`` holds, counted in the same state of the
    database, and the backup's write-loss baseline.

    1. A first connection (the *hold*) takes ``LOCK TABLES ... READ`` on every base table:
       the app's writes wait (reads go on); it waits at most ``lock_wait`` seconds for a
       transaction that is writing, else the backup fails (it must not queue the app behind
       a long transaction).
    2. A second connection starts a consistent snapshot (``REPEATABLE READ``, read only) and
       counts every table in it, in a thread of its own (:meth:`count`), beside the dump.
    3. The dump starts; as soon as mysqldump's own snapshot exists (its ``--verbose`` says
       so), the dump's command ends the hold from inside the db container (``KILL`` of
       :attr:`hold_id`, the same user's connection), and the writes go on. The two
       snapshots were taken with every write held: they see the same rows.

    Without the ``LOCK TABLES`` privilege, or when the hold was not ended by the dump (it is
    ended after :data:`HOLD_LIMIT` seconds at the latest), the counts are kept for the
    write-loss check only (counted before the dump's snapshot: a write in between counts as
    one made after it, never the reverse) and the restore verification has no counts to
    compare (``"held"`` says why).
    """

    def __init__(self, url: str, *, lock_wait: float = 10.0) -> None:
        import pymysql

        self._hold: Any = None
        self._reader: Any = None
        self._thread: threading.Thread | None = None
        self._counted: dict[str, Any] | None = None
        self._failure: BaseException | None = None
        self._released = threading.Event()
        self._valve: threading.Thread | None = None
        self.hold_id: int | None = None
        self.held: str = "no tables to hold"
        self._released_by_us = False
        try:
            self._hold = connect(url)
            with self._hold.cursor() as cursor:
                cursor.execute(f"SET SESSION lock_wait_timeout = {max(1, int(lock_wait))}")
                tables = sorted(tables_and_columns(cursor))
                cursor.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                               "AND TABLE_TYPE = 'BASE TABLE' AND TABLE_NAME = %s", (VERSION_TABLE,))
                tables += [str(row[0]) for row in cursor.fetchall()]
                if tables:
                    try:
                        cursor.execute("LOCK TABLES " + ", ".join(f"{name(t)} READ" for t in tables))
                        self.hold_id = int(self._hold.thread_id())
                        self.held = "held"
                    except pymysql.MySQLError as error:
                        if _code(error) == LOCK_WAIT_TIMEOUT:
                            raise DeployerError(
                                f"cannot hold the app's writes for the backup's snapshot: a transaction kept writing "
                                f"for more than {lock_wait:g}s ({reason(error)})",
                                hint="try again once the long transaction is done") from None
                        if _code(error) not in NO_PRIVILEGE:
                            raise
                        self.held = f"not held: the database user may not LOCK TABLES ({reason(error)})"
            self._reader = connect(url)
            with self._reader.cursor() as cursor:
                cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            if self.hold_id is not None:
                self._valve = threading.Thread(target=self._limit, name="backup-hold-limit", daemon=True)
                self._valve.start()
            else:
                self._close_hold()
        except DeployerError:
            self.close()
            raise
        except Exception as error:  # noqa: BLE001 - a database error becomes one message
            self.close()
            raise DeployerError(f"cannot record what the backup holds: {reason(error)}") from None

    def _limit(self) -> None:
        """End the hold after :data:`HOLD_LIMIT` seconds if the dump did not."""
        if self._released.wait(HOLD_LIMIT):
            return
        self._released_by_us = True
        self._close_hold()

    def _close_hold(self) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            with contextlib.suppress(Exception):
                hold.close()

    def count(self) -> None:
        """Count every table, the alembic revision and the database's size, in a thread."""
        self._thread = threading.Thread(target=self._count, name="backup-baseline", daemon=True)
        self._thread.start()

    def _count(self) -> None:
        try:
            with self._reader.cursor() as cursor:
                found = tables_and_columns(cursor)
                counts: dict[str, int] = {}
                sums: dict[str, dict[str, Any]] = {}
                for table, (columns, key) in sorted(found.items()):
                    counts[table], by_column = measure(cursor, table, columns, key)
                    sums[table] = {"rows": counts[table], "key": key, "columns": by_column}
                cursor.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                               "AND TABLE_NAME = %s", (VERSION_TABLE,))
                revision: list[str] = []
                if cursor.fetchone()[0]:
                    cursor.execute(f"SELECT version_num FROM {name(VERSION_TABLE)}")
                    revision = sorted(str(row[0]) for row in cursor.fetchall())
                cursor.execute("SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
                               "WHERE TABLE_SCHEMA = DATABASE()")
                size = int(cursor.fetchone()[0])
                schema = schema_fingerprint(cursor)
            self._counted = {"tables": counts, "checksums": sums, "revision": revision, "bytes": size, "schema": schema}
        except BaseException as error:  # noqa: BLE001 - raised again by baseline(), in the caller's thread
            self._failure = error

    def ended_by_dump(self) -> bool:
        """Whether the hold was ended from inside the db container once the dump's snapshot
        existed (its connection is gone, and deployer did not end it)."""
        if self.hold_id is None or self._released_by_us:
            return False
        hold = self._hold
        if hold is None:
            return False
        try:
            hold.ping(reconnect=False)
        except Exception:  # noqa: BLE001 - a killed connection is the answer we want
            return True
        return False

    def baseline(self) -> dict[str, Any]:
        """Once counted (call after the dump): ``{"tables": {table: rows}, "checksums": {table:
        {"rows": N, "key": [...], "columns": {column: crc}}}, "revision": [...], "bytes": N, "schema": digest,
        "held": ...}``;
        without ``tables`` when they are not the dump's own (see the class docstring)."""
        if self._thread is None:
            self.count()
        assert self._thread is not None
        self._thread.join()
        if self._failure is not None or self._counted is None:
            raise DeployerError(f"cannot record what the backup holds: {reason(self._failure or Exception())}") from None
        counted = dict(self._counted)
        if self.held == "held" and not self.ended_by_dump():
            self.held = ("not held until the dump's snapshot: deployer ended the hold after "
                         f"{HOLD_LIMIT:g}s" if self._released_by_us else
                         "not held until the dump's snapshot: the dump did not end the hold")
        counted["held"] = self.held
        if self.held not in ("held", "no tables to hold"):
            counted.pop("tables")
        return counted

    def close(self) -> None:
        """Let the writes go (if the dump did not) and end the snapshot (a count still running
        loses its connection: the server ends its query)."""
        self._released.set()
        self._close_hold()
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=30)


# --------------------------------------------------------------------------- writes since a backup


def compare(recorded: Mapping[str, Any], now: Mapping[str, tuple[int, dict[str, int]] | None],
            keys_now: Mapping[str, Sequence[str]]) -> Changes:
    """What changed since the baseline's checksums (pure): ``now`` holds each recorded table
    measured over the recorded columns it still has (None: the table is gone), ``keys_now``
    its primary key now. A table gone, or a column gone, is the migration's doing (no write
    of the app's drops them) and is not compared; a table whose primary key changed cannot
    be compared and counts as changed."""
    written: dict[str, int] = {}
    gone: dict[str, int] = {}
    unknown: list[str] = []
    for table in sorted(recorded):
        before = recorded[table]
        measured = now.get(table)
        if measured is None:
            continue
        key = list(before.get("key") or ())
        if list(keys_now.get(table, ())) != key:
            unknown.append(table)
            continue
        rows_then = int(before.get("rows", 0))
        rows_now, sums = measured
        if rows_now > rows_then:
            written[table] = rows_now - rows_then
        elif rows_now < rows_then:
            gone[table] = rows_then - rows_now
        elif any(int(before["columns"][c]) != value for c, value in sums.items() if c in before.get("columns", {})):
            written[table] = 1  # at least one row changed in place
    return Changes(written, gone, exact=False, unknown=tuple(unknown))


def changes(url: str, baseline: Mapping[str, Any]) -> Changes:
    """What changed in the database at ``url`` since the backup whose baseline this is."""
    recorded: Mapping[str, Any] | None = baseline.get("checksums")
    if not isinstance(recorded, Mapping):
        raise DeployerError("the backup recorded no checksums to compare with")
    connection = connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            found = tables_and_columns(cursor)
            now: dict[str, tuple[int, dict[str, int]] | None] = {}
            keys_now: dict[str, list[str]] = {}
            for table, entry in recorded.items():
                if table not in found:
                    now[table] = None
                    continue
                columns_now, key_now = found[table]
                keys_now[table] = key_now
                if key_now != list(entry.get("key") or ()):
                    now[table] = (0, {})
                    continue
                kept = [c for c in entry.get("columns", {}) if c in columns_now]
                now[table] = measure(cursor, table, kept, key_now)
            cursor.execute("ROLLBACK")
    except DeployerError:
        raise
    except Exception as error:  # noqa: BLE001
        raise DeployerError(f"cannot count the writes since the backup: {reason(error)}") from None
    finally:
        with contextlib.suppress(Exception):
            connection.close()
    return compare(recorded, now, keys_now)
