"""The dump's snapshot against a real PostgreSQL (tests/bench/postgres.py): what is counted in it
is what ``pg_dump --snapshot`` dumps, however the database changes meanwhile, and the count
runs beside the dump."""

from __future__ import annotations

import subprocess

import pytest
import sqlalchemy as sa

from deployer.db import url as urls
from deployer.db.writes import Snapshot
from tests.bench.postgres import PostgresServer

pytestmark = pytest.mark.integration


def execute(url: str, *statements: str) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            rows: list[tuple] = []
            for statement in statements:
                result = connection.exec_driver_sql(statement)
                rows = [tuple(r) for r in result] if result.returns_rows else []
            return rows
    finally:
        engine.dispose()


@pytest.mark.parametrize("through", ["psycopg2", "sqlalchemy"])
def test_the_counts_are_the_dumps_whatever_is_written_meanwhile(pg_database: str, postgres_server: PostgresServer,
                                                              monkeypatch: pytest.MonkeyPatch, through: str) -> None:
    if through == "sqlalchemy":  # a URL libpq cannot read goes through SQLAlchemy's connection
        monkeypatch.setattr(urls, "pg_params", lambda url: None)
    execute(pg_database,
            "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
            "INSERT INTO alembic_version VALUES ('abc123')",
            'CREATE TABLE "Odd name" (id serial PRIMARY KEY, body text)',
            "INSERT INTO \"Odd name\" (body) SELECT 'row ' || g FROM generate_series(1, 3) g")
    snapshot = Snapshot(pg_database)
    try:
        # written after the snapshot was taken, before it is counted and dumped
        execute(pg_database, "INSERT INTO \"Odd name\" (body) VALUES ('later')", "UPDATE alembic_version SET version_num = 'def456'",
                "CREATE TABLE later (x int)")
        database = pg_database.rsplit("/", 1)[1]
        dump = subprocess.run(
            [str(postgres_server.bin_dir / "pg_dump"), "--format=plain", f"--snapshot={snapshot.snapshot_id}",
             "--data-only", "--table=\"Odd name\"", postgres_server.dsn(database)],
            capture_output=True, text=True, check=True, timeout=120).stdout
        snapshot.count()
        baseline = snapshot.baseline()
    finally:
        snapshot.close()
    assert baseline["tables"] == {'public."Odd name"': 3} and baseline["revision"] == ["abc123"], baseline
    assert baseline["bytes"] > 0 and baseline["snapshot"].count(":") == 2
    assert [line for line in dump.splitlines() if line.startswith(("1\t", "2\t", "3\t", "4\t"))] == [
        "1\trow 1", "2\trow 2", "3\trow 3"]  # the dump holds what was counted: not the later row
    assert not any("already a transaction" in notice for notice in getattr(snapshot._connection, "notices", []))
    # the transaction is gone: nothing holds the table any more
    execute(pg_database, "LOCK TABLE \"Odd name\" IN ACCESS EXCLUSIVE MODE NOWAIT")


def test_counting_waits_for_a_table_lock_no_longer_than_the_dump_would(pg_database: str) -> None:
    execute(pg_database, "CREATE TABLE busy (x int)")
    holder = sa.create_engine(pg_database)
    try:
        with holder.connect() as connection:
            connection.exec_driver_sql("BEGIN")
            connection.exec_driver_sql("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
            snapshot = Snapshot(pg_database, lock_wait=0.5)
            try:
                snapshot.count()
                with pytest.raises(Exception, match="cannot record what the backup holds: .*lock timeout"):
                    snapshot.baseline()
            finally:
                snapshot.close()
            connection.exec_driver_sql("ROLLBACK")
    finally:
        holder.dispose()
