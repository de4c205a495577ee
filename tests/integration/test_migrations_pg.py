"""deployer.db.migrations against a real PostgreSQL (tests/bench/postgres.py), migrated by real alembic."""

from __future__ import annotations

import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from deployer.db.migrations import VerdictKind, database_revisions, load_scripts, upgrade_path, verdict
from deployer.errors import HostError
from tests.bench.postgres import PostgresServer

pytestmark = pytest.mark.integration

A, B, C = "1a0000000001", "2b0000000002", "3c0000000003"

# An env.py in the shape Flask-Migrate's, minus the app: the connection comes from the caller.
ENV_PY = """
from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
"""


def revision(rev: str, down: str | None, message: str, upgrade: str, downgrade: str) -> str:
    return textwrap.dedent(
        f'''\
        """{message}"""
        from alembic import op
        import sqlalchemy as sa

        revision = {rev!r}
        down_revision = {down!r}
        branch_labels = None
        depends_on = None


        def upgrade():
            {upgrade}


        def downgrade():
            {downgrade}
        '''
    )


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    root = tmp_path / "migrations"
    (root / "versions").mkdir(parents=True)
    (root / "env.py").write_text(ENV_PY)
    (root / "script.py.mako").write_text("")
    (root / "alembic.ini").write_text("[alembic]\n")
    versions = root / "versions"
    (versions / f"{A}_users.py").write_text(
        revision(A, None, "create users", 'op.create_table("users", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("users")')
    )
    (versions / f"{B}_name.py").write_text(
        revision(B, A, "add name", 'op.add_column("users", sa.Column("name", sa.Text))', 'op.drop_column("users", "name")')
    )
    (versions / f"{C}_drop_name.py").write_text(
        revision(C, B, "drop name", 'op.drop_column("users", "name")', "pass")
    )
    return root


@pytest.fixture
def engine(pg_database: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_database, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def alembic_upgrade(engine: sa.Engine, migrations: Path, target: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, target)


def test_fresh_database_is_not_initialised(pg_database: str, migrations: Path) -> None:
    assert database_revisions(pg_database) == ()
    assert verdict(database_revisions(pg_database), migrations).kind is VerdictKind.NOT_INITIALISED


def test_revisions_follow_real_alembic_upgrades(engine: sa.Engine, pg_database: str, migrations: Path) -> None:
    alembic_upgrade(engine, migrations, A)
    assert database_revisions(pg_database) == (A,)
    result = verdict(database_revisions(pg_database), migrations)
    assert result.kind is VerdictKind.PENDING
    assert [s.revision for s in result.steps] == [B, C]

    # What deployer plans is what alembic then does.
    planned = [s.revision for s in upgrade_path(migrations, database_revisions(pg_database))]
    alembic_upgrade(engine, migrations, "head")
    assert planned == [B, C]
    assert database_revisions(pg_database) == (C,)
    assert verdict(database_revisions(pg_database), load_scripts(migrations)).kind is VerdictKind.UP_TO_DATE
    with engine.connect() as connection:
        columns = {c["name"] for c in sa.inspect(connection).get_columns("users")}
    assert columns == {"id"}


def test_empty_version_table_reads_as_no_revision(engine: sa.Engine, pg_database: str) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
    assert database_revisions(pg_database) == ()
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO alembic_version VALUES ('9999deadbeef'), ('1111aaaa')"))
    assert database_revisions(pg_database) == ("1111aaaa", "9999deadbeef")


def test_postgres_scheme_alias_is_accepted(engine: sa.Engine, pg_database: str, migrations: Path) -> None:
    alembic_upgrade(engine, migrations, B)
    heroku_style = pg_database.replace("postgresql+psycopg2://", "postgres://")
    assert database_revisions(heroku_style) == (B,)
    # No driver named: SQLAlchemy 2.1 would pick psycopg 3, which deployer does not ship.
    assert database_revisions(pg_database.replace("postgresql+psycopg2://", "postgresql://")) == (B,)


def test_a_url_libpq_would_misread_is_read_as_sqlalchemy_reads_it(
    engine: sa.Engine, pg_database: str, migrations: Path
) -> None:
    # An unescaped "/" in a password: SQLAlchemy (the app's reading) keeps it in the
    # password; libpq would end the host there. deployer must connect as the app does.
    from deployer.db.url import pg_params

    alembic_upgrade(engine, migrations, B)
    role = "slash_" + pg_database.rsplit("/", 1)[1]
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'pa/ss'"))
        connection.execute(sa.text(f"GRANT SELECT ON alembic_version TO {role}"))
    try:
        address = pg_database.split("@", 1)[1]
        url = f"postgresql://{role}:pa/ss@{address}"
        assert pg_params(url) is None
        assert database_revisions(url) == (B,)
        assert database_revisions(url.replace("pa/ss", "pa%2Fss")) == (B,)  # escaped: libpq reads it
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP OWNED BY {role}"))
            connection.execute(sa.text(f"DROP ROLE {role}"))


def test_version_table_in_a_schema(engine: sa.Engine, pg_database: str) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text('CREATE SCHEMA "Meta"'))
        connection.execute(sa.text('CREATE TABLE "Meta".alembic_version (version_num VARCHAR(32) PRIMARY KEY)'))
        connection.execute(sa.text("INSERT INTO \"Meta\".alembic_version VALUES ('abc123')"))
    assert database_revisions(pg_database) == ()  # not on the search path
    assert database_revisions(pg_database, version_table_schema="Meta") == ("abc123",)
    assert database_revisions(pg_database, version_table_schema="meta") == ()  # identifiers are exact


def test_database_encoding_is_utf8(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        assert connection.execute(sa.text("SHOW server_encoding")).scalar() == "UTF8"
        assert connection.execute(sa.text("SELECT 'Zoë ✓'")).scalar() == "Zoë ✓"


def test_refused_connection_is_a_host_error(postgres_server: PostgresServer) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg2://app:s3cret-pw@127.0.0.1:{port}/app"
    started = time.monotonic()
    with pytest.raises(HostError) as caught:
        database_revisions(url)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert f"postgresql+psycopg2://app:***@127.0.0.1:{port}/app" in message
    assert "s3cret-pw" not in message
    assert "refused" in message.lower()
    assert "running" in caught.value.hint


def test_wrong_password_is_a_host_error(postgres_server: PostgresServer) -> None:
    url = f"postgresql+psycopg2://{postgres_server.user}:wrong-pw@127.0.0.1:{postgres_server.port}/postgres"
    with pytest.raises(HostError) as caught:
        database_revisions(url)
    assert "password authentication failed" in caught.value.message
    assert "wrong-pw" not in str(caught.value)
    assert caught.value.hint == "check the user and password of the database URL"


def test_missing_database_is_a_host_error(postgres_server: PostgresServer) -> None:
    with pytest.raises(HostError, match="does not exist"):
        database_revisions(postgres_server.url("no_such_db"))


def test_silent_server_times_out(postgres_server: PostgresServer) -> None:
    # A loopback listener that accepts TCP but never speaks: what a hung database looks like.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(HostError) as caught:
            database_revisions(f"postgresql+psycopg2://app:pw@127.0.0.1:{port}/app", connect_timeout=2)
        elapsed = time.monotonic() - started
        assert 1.5 < elapsed < 10
        assert "timeout" in str(caught.value).lower()
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()
