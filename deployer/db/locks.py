"""Bounded lock waits for migrations on PostgreSQL, and the sessions that block them.

A migration that waits for a lock queues every later query on that table behind it: one
``idle in transaction`` session can take a site down through a correct migration. So the
migration runs with a ``lock_timeout`` (libpq's ``PGOPTIONS`` in its one-off container,
:func:`pgoptions`), gives up quickly, and is tried again after a pause; meanwhile
:class:`LockWatch` reads ``pg_stat_activity`` and ``pg_blocking_pids()`` for the
migration's own sessions (their ``application_name``) and keeps who blocked them, so the
failure names the session to end: pid, state, user, client, transaction age, query.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass
from typing import Any

# PostgreSQL's message (SQLSTATE 55P03, lock_not_available) when lock_timeout strikes.
LOCK_TIMEOUT_MESSAGE = "canceling statement due to lock timeout"

_BLOCKERS_SQL = """
SELECT b.pid, coalesce(b.state, ''), coalesce(b.usename, ''), coalesce(b.application_name, ''),
       coalesce(host(b.client_addr), 'local'), extract(epoch FROM now() - b.xact_start),
       left(regexp_replace(coalesce(b.query, ''), '\\s+', ' ', 'g'), 200),
       coalesce((SELECT string_agg(DISTINCT c.relname, ', ') FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                 WHERE l.pid = w.pid AND NOT l.granted), '')
FROM pg_stat_activity w
CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocking(pid)
JOIN pg_stat_activity b ON b.pid = blocking.pid
WHERE w.application_name = %s AND w.pid <> pg_backend_pid()
"""

# After the fact (the waiting session is gone): sessions in a transaction at least as old as
# the lock timeout that hold locks on tables.
_SUSPECTS_SQL = """
SELECT a.pid, coalesce(a.state, ''), coalesce(a.usename, ''), coalesce(a.application_name, ''),
       coalesce(host(a.client_addr), 'local'), extract(epoch FROM now() - a.xact_start),
       left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 200),
       coalesce((SELECT string_agg(DISTINCT c.relname, ', ') FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                 WHERE l.pid = a.pid AND l.granted AND c.relkind IN ('r', 'p', 'i')
                   AND c.relnamespace <> 'pg_catalog'::regnamespace), '')
FROM pg_stat_activity a
WHERE a.pid <> pg_backend_pid() AND a.application_name <> %s AND a.xact_start IS NOT NULL
  AND now() - a.xact_start >= %s * interval '1 second'
  AND EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
              WHERE l.pid = a.pid AND l.granted AND c.relnamespace <> 'pg_catalog'::regnamespace)
ORDER BY a.xact_start
LIMIT 5
"""


@dataclass(frozen=True)
class Blocker:
    """A session that held a lock a migration waited for."""

    pid: int
    state: str  # "idle in transaction", "active", ...
    user: str
    application: str
    client: str
    transaction_seconds: float | None
    query: str  # its current (or, idle, its last) statement
    tables: str = ""  # the tables concerned (what the migration waited for, or what it holds)

    def describe(self) -> str:
        age = f" for {_duration(self.transaction_seconds)}" if self.transaction_seconds is not None else ""
        who = ", ".join(p for p in (f"user {self.user}" if self.user else "",
                                    f"application {self.application!r}" if self.application else "",
                                    f"from {self.client}") if p)
        on = f" on {self.tables}" if self.tables else ""
        last = "last query" if self.state.startswith("idle") else "query"
        return f"pid {self.pid} ({self.state or 'unknown state'}{age}; {who}){on}, {last}: {self.query or '(none)'}"


def pgoptions(existing: str | None, lock_timeout: float) -> str | None:
    """The ``PGOPTIONS`` a migration's container gets: the app's own, plus the lock timeout
    (None when there is no timeout to set)."""
    if lock_timeout <= 0:
        return None
    ours = f"-c lock_timeout={max(1, round(lock_timeout * 1000))}"
    return f"{existing.strip()} {ours}" if existing and existing.strip() else ours


def timed_out(output: str) -> bool:
    """The migration's output says it gave up waiting for a lock."""
    return LOCK_TIMEOUT_MESSAGE in output


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _rows_to_blockers(rows: list[tuple]) -> list[Blocker]:
    return [Blocker(int(r[0]), r[1], r[2], r[3], r[4], float(r[5]) if r[5] is not None else None, r[6], r[7]) for r in rows]


class LockWatch:
    """Watches, in a thread, what blocks the sessions named ``application_name``.

    ``open_url`` opens a URL this process can connect to (a tunnel over SSH) and keeps it
    open while the watch runs. Best effort: a watch that cannot connect sees nothing, and
    the migration goes on regardless.
    """

    def __init__(self, open_url: Callable[[], AbstractContextManager[str]], application_name: str,
                 *, interval: float = 0.25) -> None:
        self._open_url = open_url
        self._name = application_name
        self._interval = interval
        self._stop = threading.Event()
        self._seen: dict[int, Blocker] = {}
        self._thread = threading.Thread(target=self._run, name="lock-watch", daemon=True)
        self._ready = threading.Event()

    def start(self) -> LockWatch:
        self._thread.start()
        self._ready.wait(timeout=15)  # connected (or given up): the migration may start
        return self

    def stop(self) -> list[Blocker]:
        self._stop.set()
        self._thread.join(timeout=15)
        return list(self._seen.values())

    def _run(self) -> None:
        try:
            with self._open_url() as url, connect(url) as connection:
                self._ready.set()
                with connection.cursor() as cursor:
                    while not self._stop.is_set():
                        cursor.execute(_BLOCKERS_SQL, (self._name,))
                        for blocker in _rows_to_blockers(cursor.fetchall()):
                            self._seen[blocker.pid] = blocker
                        self._stop.wait(self._interval)
        except Exception:  # noqa: BLE001 - best effort: the migration's own outcome decides
            pass
        finally:
            self._ready.set()


def suspects(url: str, application_name: str, older_than: float) -> list[Blocker]:
    """Sessions that hold table locks in a transaction older than ``older_than`` seconds:
    who blocked a migration whose waiting session is gone (best effort; [] on any error)."""
    try:
        with connect(url) as connection, connection.cursor() as cursor:
            cursor.execute(_SUSPECTS_SQL, (application_name, older_than))
            return _rows_to_blockers(cursor.fetchall())
    except Exception:  # noqa: BLE001
        return []


def connect(url: str) -> closing[Any]:
    """An autocommit psycopg2 connection to ``url`` (libpq's reading, else SQLAlchemy's)."""
    import psycopg2

    from deployer.db.url import pg_params

    params = pg_params(url)
    if params is None:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        query = {key: value if isinstance(value, str) else value[-1] for key, value in parsed.query.items()}
        params = {**parsed.translate_connect_args(username="user", database="dbname"), **query}
    connection = psycopg2.connect(**{**params, "connect_timeout": "5"})
    connection.autocommit = True
    return closing(connection)
