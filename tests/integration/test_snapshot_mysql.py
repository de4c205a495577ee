"""What a MySQL/MariaDB dump holds, against a real MariaDB (the bench's image, a throwaway
container): the rows counted are the rows ``mysqldump --single-transaction`` dumps while the app
keeps writing; a hold nobody ends is ended at its limit, and a user who may not lock tables
gets no counts to compare; writes since are told from the migration's own changes."""

from __future__ import annotations

import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from deployer.db import mysql as my
from deployer.db.url import mysql_url
from deployer.server.backups import MYSQL_DUMP

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class MariaDB:
    container: str
    host: str
    root_password: str
    password: str

    def url(self, user: str = "app", password: str | None = None) -> str:
        return mysql_url({"user": user, "password": self.password if password is None else password, "host": self.host,
                          "port": "3306", "database": "app", "charset": "utf8mb4"})

    def execute(self, *statements: str, url: str | None = None) -> list[tuple]:
        connection = my.connect(url or self.url())
        try:
            rows: list[tuple] = []
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
                    rows = [tuple(r) for r in cursor.fetchall()]
            return rows
        finally:
            connection.close()


@pytest.fixture(scope="module")
def mariadb(docker_engine, bench_images) -> Iterator[MariaDB]:  # noqa: ANN001 - fixtures
    name = f"deployer-it-mariadb-{secrets.token_hex(4)}"
    root, password = secrets.token_hex(8), secrets.token_hex(8)
    subprocess.run(["docker", "run", "--detach", "--name", name, "-e", f"MARIADB_ROOT_PASSWORD={root}",
                    "-e", "MARIADB_DATABASE=app", "-e", "MARIADB_USER=app", "-e", f"MARIADB_PASSWORD={password}",
                    bench_images.mariadb], check=True, capture_output=True, timeout=120)
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(["docker", "exec", name, "healthcheck.sh", "--connect"], capture_output=True).returncode:
            assert time.monotonic() < deadline, "the MariaDB container did not get ready"
            time.sleep(0.5)
        address = subprocess.run(["docker", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                                  name], check=True, capture_output=True, text=True).stdout.strip()
        yield MariaDB(name, address, root, password)
    finally:
        subprocess.run(["docker", "rm", "--force", "--volumes", name], capture_output=True, timeout=120)


@pytest.fixture()
def table(mariadb: MariaDB) -> Iterator[str]:
    mariadb.execute("DROP TABLE IF EXISTS notes", "DROP TABLE IF EXISTS alembic_version",
                    "CREATE TABLE notes (id INT PRIMARY KEY AUTO_INCREMENT, body VARCHAR(100) NOT NULL, note TEXT NULL)",
                    "INSERT INTO notes (body, note) VALUES ('one', NULL), ('two', ''), ('Zoë 🦊', 'x')",
                    "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
                    "INSERT INTO alembic_version VALUES ('abc123')")
    yield "notes"
    mariadb.execute("DROP TABLE IF EXISTS notes", "DROP TABLE IF EXISTS alembic_version")


class Writer:
    """The app: inserts a row after another until stopped; how long each insert waited."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.waits: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def _run(self) -> None:
        connection = my.connect(self.url)
        try:
            with connection.cursor() as cursor:
                while not self._stop.is_set():
                    began = time.monotonic()
                    cursor.execute("INSERT INTO notes (body) VALUES ('written meanwhile')")
                    self.waits.append(time.monotonic() - began)
                    time.sleep(0.01)
        finally:
            connection.close()

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def dumped_rows(dump: str, table: str) -> int:
    """Rows in mysqldump's extended INSERTs of ``table``, a row a line or all on one (the
    values here hold no "),(")."""
    statements = re.findall(rf"^INSERT INTO `{table}` VALUES\s*(.*?);$", dump, re.MULTILINE | re.DOTALL)
    return sum(statement.replace("),\n(", "),(").count("),(") + 1 for statement in statements)


def test_the_counts_are_the_dumps_while_the_app_writes(mariadb: MariaDB, table: str) -> None:
    with Writer(mariadb.url()) as writer:
        time.sleep(0.3)
        snapshot = my.Snapshot(mariadb.url())
        try:
            assert snapshot.held == "held" and snapshot.hold_id is not None
            snapshot.count()
            dump = subprocess.run(["docker", "exec", "-i", mariadb.container, "sh", "-c", MYSQL_DUMP, "sh", "3306", "app",
                                   "app", str(snapshot.hold_id)], input=f"{mariadb.password}\n".encode(),
                                  capture_output=True, timeout=120)
            assert dump.returncode == 0, dump.stderr
            baseline = snapshot.baseline()
        finally:
            snapshot.close()
        time.sleep(0.3)
    import gzip

    text = gzip.decompress(dump.stdout).decode()
    assert baseline["held"] == "held" and baseline["revision"] == ["abc123"], baseline
    assert baseline["tables"] == {"notes": dumped_rows(text, "notes")}, baseline
    assert baseline["checksums"]["notes"]["rows"] == baseline["tables"]["notes"]
    now = mariadb.execute("SELECT COUNT(*) FROM notes")[0][0]
    assert now > baseline["tables"]["notes"] > 3, (now, baseline)  # the app wrote before and after the dump
    changes = my.changes(mariadb.url(), baseline)
    assert changes.written == {"notes": now - baseline["tables"]["notes"]} and not changes.gone
    assert writer.waits, "the writer never wrote"


def test_a_hold_nobody_ends_is_ended_at_its_limit(mariadb: MariaDB, table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(my, "HOLD_LIMIT", 1.0)
    snapshot = my.Snapshot(mariadb.url())
    try:
        assert snapshot.held == "held"
        with Writer(mariadb.url()) as writer:
            deadline = time.monotonic() + 30
            while not writer.waits and time.monotonic() < deadline:  # held back, then let through
                time.sleep(0.05)
        assert writer.waits and writer.waits[0] >= 0.3, writer.waits[:3]
        baseline = snapshot.baseline()
    finally:
        snapshot.close()
    assert baseline["held"] == f"not held until the dump's snapshot: deployer ended the hold after {my.HOLD_LIMIT:g}s"
    assert "tables" not in baseline and baseline["checksums"]["notes"]["rows"] == 3, baseline


def test_a_user_who_may_not_lock_tables_gets_no_counts_to_compare(mariadb: MariaDB, table: str) -> None:
    root = mariadb.url("root", mariadb.root_password)
    mariadb.execute("CREATE USER IF NOT EXISTS 'reader'@'%' IDENTIFIED BY 'rpw'",
                    "GRANT SELECT, INSERT ON app.* TO 'reader'@'%'", url=root)
    snapshot = my.Snapshot(mariadb.url("reader", "rpw"))
    try:
        assert snapshot.hold_id is None and re.match(r"not held: the database user may not LOCK TABLES", snapshot.held)
        baseline = snapshot.baseline()
    finally:
        snapshot.close()
    assert "tables" not in baseline and baseline["checksums"]["notes"]["rows"] == 3 and baseline["revision"] == ["abc123"]


def test_writes_since_are_told_from_the_migrations_schema_changes(mariadb: MariaDB, table: str) -> None:
    snapshot = my.Snapshot(mariadb.url())
    try:
        baseline = snapshot.baseline()
    finally:
        snapshot.close()
    url = mariadb.url()
    connection = my.connect(url)
    try:
        with connection.cursor() as cursor:
            before = my.schema_fingerprint(cursor)
    finally:
        connection.close()
    assert baseline["schema"] == before
    # the migration's own: a column added (with a default), the version moved
    mariadb.execute("ALTER TABLE notes ADD COLUMN rating INT NOT NULL DEFAULT 0",
                    "UPDATE alembic_version SET version_num = 'def456'")
    assert my.changes(url, baseline).total == 0
    assert my.read_schema(url) != before
    assert my.revisions(url) == ("def456",)
    # the app's: a value changed in place, a NULL made empty, a row gone
    mariadb.execute("UPDATE notes SET body = 'ONE' WHERE id = 1")
    assert my.changes(url, baseline).written == {"notes": 1}
    mariadb.execute("UPDATE notes SET body = 'one' WHERE id = 1", "UPDATE notes SET note = '' WHERE id = 1")
    assert my.changes(url, baseline).written == {"notes": 1}
    mariadb.execute("UPDATE notes SET note = NULL WHERE id = 1", "DELETE FROM notes WHERE id = 2")
    changes = my.changes(url, baseline)
    assert changes.gone == {"notes": 1} and not changes.written
    mariadb.execute("ALTER TABLE notes DROP COLUMN rating", "INSERT INTO notes (id, body, note) VALUES (2, 'two', '')")
    assert my.changes(url, baseline).total == 0 and my.read_schema(url) == before


def test_the_revision_is_read_and_bad_credentials_say_so(mariadb: MariaDB, table: str) -> None:
    from deployer.errors import ConfigError, HostError

    assert my.revisions(mariadb.url()) == ("abc123",)
    mariadb.execute("DROP TABLE alembic_version")
    assert my.revisions(mariadb.url()) == ()
    with pytest.raises(HostError, match="Access denied") as raised:
        my.revisions(mariadb.url(password="wrong"))
    assert "wrong" not in raised.value.message and "user and password" in (raised.value.hint or "")
    with pytest.raises(ConfigError, match="names no database"):
        my.connect(mysql_url({"user": "app", "host": mariadb.host}))
