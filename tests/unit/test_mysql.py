"""MySQL/MariaDB without a server: where the database is, URLs, checksums and what changed,
the non-transactional DDL the gate names, the scratch's answer, and the dump, read-back and
restore scripts run here with stand-ins for the MySQL tools (the real sh and gzip)."""

from __future__ import annotations

import gzip
import os
from dataclasses import replace
from pathlib import Path

import pytest

from deployer.commands.compose import Compose, ComposeConfig, ServiceConfig
from deployer.config import load_config
from deployer.db import ddl
from deployer.db import mysql as my
from deployer.db.url import (
    MYSQL,
    POSTGRESQL,
    DatabaseLocation,
    driver_url,
    engine_of,
    from_mysql_variables,
    is_mysql_service,
    locate,
    mysql_params,
    mysql_url,
)
from deployer.db.writes import Changes
from deployer.errors import ConfigError
from deployer.hosts import LocalHost
from deployer.server import backups, verification
from deployer.server.backups import Backup
from deployer.server.target import Target

# --------------------------------------------------------------------------- where the database is


def test_the_app_user_of_the_mariadb_variables_with_its_password_file() -> None:
    found = from_mysql_variables("db", {"MARIADB_DATABASE": "shop", "MARIADB_USER": "shop",
                                        "MARIADB_PASSWORD_FILE": "/run/secrets/pw", "MARIADB_ROOT_PASSWORD": "r00t"},
                                 "mariadb:10.11")
    assert found.engine == MYSQL and found.password_file == "/run/secrets/pw"
    assert found.url == "mysql+pymysql://shop@db:3306/shop?charset=utf8mb4"
    assert found.source == "the mariadb variables of the db service"


@pytest.mark.parametrize(("variables", "expected"), [
    # the official mysql image's names; the mariadb image reads them too
    ({"MYSQL_DATABASE": "app", "MYSQL_USER": "app", "MYSQL_PASSWORD": "p@ss:w/rd"},
     "mysql+pymysql://app:p%40ss%3Aw%2Frd@db:3306/app?charset=utf8mb4"),
    # MARIADB_* wins over MYSQL_*, as in the official image
    ({"MARIADB_DATABASE": "one", "MYSQL_DATABASE": "two", "MARIADB_USER": "u", "MYSQL_PASSWORD": "pw"},
     "mysql+pymysql://u:pw@db:3306/one?charset=utf8mb4"),
    # no app user: root, with its password
    ({"MYSQL_DATABASE": "app", "MYSQL_ROOT_PASSWORD": "secret"}, "mysql+pymysql://root:secret@db:3306/app?charset=utf8mb4"),
    # no app user and an empty root password the image allows
    ({"MARIADB_DATABASE": "app", "MARIADB_ALLOW_EMPTY_ROOT_PASSWORD": "1"}, "mysql+pymysql://root@db:3306/app?charset=utf8mb4"),
    ({"MYSQL_DATABASE": "app", "MYSQL_ALLOW_EMPTY_PASSWORD": "yes", "MYSQL_TCP_PORT": "3307"},
     "mysql+pymysql://root@db:3307/app?charset=utf8mb4"),
])
def test_the_official_images_variables(variables: dict[str, str], expected: str) -> None:
    found = from_mysql_variables("db", variables)
    assert found.url == expected and found.password_file is None
    assert mysql_params(found.url)["database"] == expected.split("/")[-1].split("?")[0]


def test_root_password_from_a_file() -> None:
    found = from_mysql_variables("db", {"MYSQL_DATABASE": "app", "MYSQL_ROOT_PASSWORD_FILE": "/run/secrets/root"})
    assert found.url.startswith("mysql+pymysql://root@db:3306/app") and found.password_file == "/run/secrets/root"


@pytest.mark.parametrize(("variables", "words"), [
    ({"MARIADB_USER": "u", "MARIADB_PASSWORD": "pw"}, "MARIADB_DATABASE or MYSQL_DATABASE"),
    ({"MARIADB_DATABASE": "d", "MARIADB_USER": "u"}, "without MARIADB_PASSWORD or MYSQL_PASSWORD"),
    ({"MARIADB_DATABASE": "d", "MARIADB_RANDOM_ROOT_PASSWORD": "1"}, "random root password"),
    ({"MYSQL_DATABASE_FILE": "/run/secrets/db"}, "names its database in a file"),
])
def test_variables_that_cannot_reach_the_database_say_why(variables: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words) as raised:
        from_mysql_variables("db", variables, "mariadb:11")
    assert "database_url" in (raised.value.hint or "")


def test_a_db_service_is_mysql_by_its_variables_else_its_image() -> None:
    assert is_mysql_service({"MARIADB_ROOT_PASSWORD": "x"})
    assert is_mysql_service({"MYSQL_DATABASE": "x"}, "postgres:15")
    assert not is_mysql_service({"POSTGRES_PASSWORD": "x", "MYSQL_SOMETHING": "y"})
    assert is_mysql_service({}, "registry.example.com/library/mariadb:10.11")
    assert is_mysql_service({}, "percona/percona-server:8.0")
    assert not is_mysql_service({}, "postgres:15") and not is_mysql_service({}, "")


def test_locate_takes_the_mariadb_variables_when_the_web_service_names_no_url(tmp_path: Path) -> None:
    (tmp_path / "deploy.toml").write_text('[app]\nname = "gb"\n[environments.prod]\nhost = "local"\npath = "/srv/gb"\n')
    cfg = load_config(tmp_path / "deploy.toml")
    compose = ComposeConfig(services={
        "web": ServiceConfig("web", environment={"DB_HOST": "db"}),
        "db": ServiceConfig("db", image="mariadb:10.11", environment={
            "MARIADB_DATABASE": "gb", "MARIADB_USER": "gb", "MARIADB_PASSWORD": "pw"})})
    found = locate(cfg.app, cfg.environment("prod"), compose)
    assert found.engine == MYSQL and found.url == "mysql+pymysql://gb:pw@db:3306/gb?charset=utf8mb4"
    # a URL of the app's own wins, whatever its driver
    web = ServiceConfig("web", environment={"DATABASE_URL": "mariadb+mariadbconnector://a:b@db/x"})
    found = locate(cfg.app, cfg.environment("prod"), ComposeConfig(services={**compose.services, "web": web}))
    assert found.engine == MYSQL and found.source == "DATABASE_URL of the web service"


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize("url", [
    "mysql://u:p@db/app",
    "mysql+pymysql://u:p%40x%2Fy@db:3307/app?charset=utf8mb4",
    "mariadb+mariadbconnector://root@10.0.0.5:3306/shop",
    "mysql+mysqldb://u:p@[2001:db8::1]:3306/app",
    "mysql://u@db/a%20b",
    "mysql://u:pa:ss@db/app",
    "mysql+pymysql://user:@db/app?ssl_ca=/x&charset=latin1",
])
def test_mysql_urls_are_read_as_sqlalchemy_reads_them(url: str) -> None:
    from sqlalchemy.engine import make_url

    expected = make_url(url)
    params = mysql_params(url)
    assert params is not None
    assert params.get("user") == expected.username and params.get("password") == expected.password
    assert params.get("host") == expected.host and params.get("database") == expected.database
    assert params.get("port") == (str(expected.port) if expected.port else None)
    assert params.get("charset") == expected.query.get("charset")
    # written back, SQLAlchemy reads the same
    again = make_url(mysql_url(params))
    assert (again.username, again.password, again.host, again.port, again.database) == (
        expected.username, expected.password, expected.host, expected.port, expected.database)


def test_other_urls_are_not_mysql_and_the_driver_is_pymysql() -> None:
    assert mysql_params("postgresql://u:p@db/app") is None and mysql_params("sqlite:////x.db") is None
    assert mysql_params("mysql://u:p@db:port/app") is None
    assert engine_of("mariadb://u@db/x") == MYSQL and engine_of("postgres://u@db/x") == POSTGRESQL
    assert driver_url("mysql://u:p@db/app").drivername == "mysql+pymysql"
    assert driver_url("mariadb+mariadbconnector://u:p@db/app").drivername == "mysql+pymysql"


def test_the_url_deployer_connects_with_goes_to_the_forwarded_address() -> None:
    from deployer.server.facts import _url_parts

    host, port, render = _url_parts("mysql+pymysql://app@db/app?charset=utf8mb4")
    assert (host, port) == ("db", 3306)
    moved = mysql_params(render("127.0.0.1", 40001, "s3cr3t/+"))
    assert moved == {"user": "app", "password": "s3cr3t/+", "host": "127.0.0.1", "port": "40001", "database": "app",
                     "charset": "utf8mb4"}


# --------------------------------------------------------------------------- what changed since a backup


def test_one_pass_per_table_counts_rows_and_checksums_each_column_with_the_key() -> None:
    sql = my.checksum_sql("entries", ["id", "name"], ["id"])
    assert sql == ("SELECT COUNT(*), BIT_XOR(CRC32(CONCAT_WS(0x1F, COALESCE(CONCAT('=', `id`), '-')))), "
                   "BIT_XOR(CRC32(CONCAT_WS(0x1F, COALESCE(CONCAT('=', `id`), '-'), COALESCE(CONCAT('=', `name`), '-')))) "
                   "FROM `entries`")
    assert my.name("we`ird") == "`we``ird`"


RECORDED = {"entries": {"rows": 3, "key": ["id"], "columns": {"id": 11, "name": 22, "mood": 33}},
            "tags": {"rows": 2, "key": ["id"], "columns": {"id": 1, "label": 2}},
            "dropped": {"rows": 9, "key": ["id"], "columns": {"id": 5}}}


def test_nothing_changed_when_only_the_migration_touched_the_schema() -> None:
    # a column added (not recorded: not compared), a column dropped ("mood": not measured), a table dropped
    now = {"entries": (3, {"id": 11, "name": 22}), "tags": (2, {"id": 1, "label": 2}), "dropped": None}
    changes = my.compare(RECORDED, now, {"entries": ["id"], "tags": ["id"]})
    assert changes.total == 0 and changes.describe() == "none"


def test_rows_added_gone_or_changed_in_place_are_writes() -> None:
    now = {"entries": (5, {"id": 1, "name": 2}), "tags": (2, {"id": 1, "label": 99}), "dropped": (7, {"id": 5})}
    changes = my.compare(RECORDED, now, {"entries": ["id"], "tags": ["id"], "dropped": ["id"]})
    assert changes.written == {"entries": 2, "tags": 1} and changes.gone == {"dropped": 2}
    assert changes.total == 5 and not changes.exact
    assert changes.describe() == "dropped: 2 gone; entries: at least 2 written; tags: at least 1 written"


def test_a_table_whose_primary_key_changed_cannot_be_compared_and_counts_as_changed() -> None:
    now = {"entries": (0, {}), "tags": (2, {"id": 1, "label": 2}), "dropped": None}
    changes = my.compare(RECORDED, now, {"entries": ["uuid"], "tags": ["id"]})
    assert changes.unknown == ("entries",) and changes.total == 1
    assert changes.describe() == "entries: cannot be compared (its primary key changed)"
    assert Changes(written={"t": 1}).describe() == "t: 1 written"  # PostgreSQL's counts are exact


# --------------------------------------------------------------------------- the gate: non-transactional DDL

MIGRATION = '''
from alembic import op
import sqlalchemy as sa


def upgrade():
    op.add_column("entries", sa.Column("rating", sa.Integer(), nullable=True))
    op.execute("UPDATE entries SET rating = 0")
    with op.batch_alter_table("entries") as batch_op:
        batch_op.create_index("ix_entries_rating", ["rating"])
    op.execute(sa.text("-- why\\nALTER TABLE entries ENGINE=InnoDB"))
    op.bulk_insert(sa.table("entries"), [])
    op.execute(built)


def downgrade():
    op.drop_column("entries", "rating")
'''

RENDERED = """\
-- Running upgrade  -> 6e57b0000001

CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

CREATE TABLE entries (
    id INTEGER NOT NULL AUTO_INCREMENT,
    name VARCHAR(80) NOT NULL,
    PRIMARY KEY (id)
)CHARSET=utf8mb4;

INSERT INTO alembic_version (version_num) VALUES ('6e57b0000001');

-- Running upgrade 6e57b0000001 -> 6e57b0000002

ALTER TABLE entries ADD COLUMN note VARCHAR(20) DEFAULT 'a;b' NULL;

UPDATE entries SET note = 'x -- not a comment; really';

CREATE INDEX ix_entries_note ON entries (note);

UPDATE alembic_version SET version_num='6e57b0000002' WHERE alembic_version.version_num = '6e57b0000001';
"""


def test_the_ddl_of_a_migrations_operations() -> None:
    found = ddl.from_source("r4", MIGRATION)
    assert [(d.statement, d.table, d.certain) for d in found] == [
        ('op.add_column("entries", sa.Column("rating", sa.Integer(), nullable=True))', "entries", True),
        ('batch_op.create_index("ix_entries_rating", ["rating"])', "entries", True),
        ('op.execute(sa.text("-- why\\nALTER TABLE entries ENGINE=InnoDB"))', None, True),
        ("op.execute(built)", None, False),
    ]
    assert ddl.from_source("r4", "def upgrade(:") == []


def test_the_ddl_of_the_rendered_sql_per_revision() -> None:
    found = ddl.from_rendered(RENDERED)
    assert [(d.revision, d.statement, d.table) for d in found] == [
        ("6e57b0000001", "CREATE TABLE entries ( id INTEGER NOT NULL AUTO_INCREMENT, name VARCHAR(80) NOT NULL, "
                         "PRIMARY KEY (id) )CHARSET=utf8mb4", "entries"),
        ("6e57b0000002", "ALTER TABLE entries ADD COLUMN note VARCHAR(20) DEFAULT 'a;b' NULL", "entries"),
        ("6e57b0000002", "CREATE INDEX ix_entries_note ON entries (note)", "entries"),
    ]
    assert ddl.split_statements("SELECT ';'; -- a; comment\nSELECT `x;y` /* ; */ FROM t;") == [
        "SELECT ';'", "-- a; comment\nSELECT `x;y` /* ; */ FROM t"]


def test_the_gate_says_what_a_failure_would_leave_and_what_the_release_does() -> None:
    lines = ddl.warning(ddl.from_source("6e57b0000004", MIGRATION))
    assert lines[0].startswith("MySQL/MariaDB commits each DDL statement on its own: if a migration fails partway")
    assert "(4 statement(s) in 1 revision(s))" in lines[0]
    assert lines[1] == '  - 6e57b0000004: op.add_column("entries", sa.Column("rating", sa.Integer(), nullable=True))'
    assert lines[4] == "  - 6e57b0000004: op.execute(built) (SQL built at run time: DDL if it is)"
    assert "restores the pre-upgrade backup" in lines[-1] and "no write was made since" in lines[-1]
    assert ddl.warning([]) == []


# --------------------------------------------------------------------------- the scratch's answer


def test_the_scratch_counts_are_read_and_compared_with_the_dump_time_record() -> None:
    restored = verification.parse_counts("table\tentries\t3\ntable\twith\ttab\t2\nrevision\t6e57b0000003\t0\n")
    assert restored == verification.Restored(("6e57b0000003",), {"entries": 3, "with\ttab": 2})
    assert verification.parse_counts("none\t\t0\n") == verification.Restored((), {})
    with pytest.raises(verification.ScratchUnavailable, match="unreadable line"):
        verification.parse_counts("ERROR 1146 (42S02) at line 1: Table doesn't exist\n")
    engine = verification.ENGINES["mysql"]
    backup = Backup("b1", "prod", "r1", ("6e57b0000003",), 10, "0" * 64, "", "/x.dump", engine="mysql",
                    baseline={"tables": {"entries": 3}, "revision": ["6e57b0000003"], "held": "held"})
    assert engine.recorded(backup) == verification.Recorded(("6e57b0000003",), {"entries": 3})
    verdict = verification.verdict(engine.recorded(backup), verification.Restored(("6e57b0000003",), {"entries": 2}),
                                   checked_at="t", seconds=1.0, method="m")
    assert verdict.state == "failed" and verdict.problems == ("entries: 2 rows restored, 3 recorded",)
    # counts not taken in the dump's own snapshot are not compared: inconclusive, never failed
    unheld = replace(backup, baseline={"revision": ["6e57b0000003"], "held": "not held: no LOCK TABLES"})
    verdict = verification.verdict(engine.recorded(unheld), verification.Restored(("6e57b0000003",), {"entries": 2}),
                                   checked_at="t", seconds=1.0, method="m")
    assert verdict.state == "inconclusive"


# --------------------------------------------------------------------------- the scripts, with stand-ins

# `docker compose` and `docker exec`: the in-container command runs here.
FAKE_COMPOSE = """#!/bin/sh
while [ "$1" != exec ]; do shift; done
shift
while [ "${1#-}" != "$1" ]; do shift; done
shift
exec "$@"
"""
# mariadb-dump: its --verbose lines on stderr around the data; once its snapshot "exists", it
# waits for the hold to be ended (the KILL the script sends), as a writer held back would.
FAKE_DUMP = """#!/bin/sh
echo "dump $*" >>"$LOG"
echo "dump password=$MYSQL_PWD" >>"$LOG"
echo "-- Connecting to 127.0.0.1..." >&2
echo "-- Starting transaction..." >&2
echo "snapshot" >>"$LOG"
echo "-- Setting savepoint..." >&2
i=0
until grep -q '^client .*KILL' "$LOG"; do i=$((i+1)); [ "$i" -gt 100 ] && { echo "never released" >>"$LOG"; break; }; sleep 0.05; done
echo "-- Retrieving table structure for table entries..." >&2
printf 'CREATE TABLE `entries` (id int);\\nINSERT INTO `entries` VALUES (1),(2);\\n'
[ -n "$FAKE_DUMP_ERROR" ] && { echo "mariadb-dump: Got error: 2013: Lost connection" >&2; exit "$FAKE_DUMP_ERROR"; }
printf -- '-- Dump completed on 2026-01-01  0:00:00\\n'
echo "dump done" >>"$LOG"
"""
# mariadb: records how it was called; the drop query names two tables; loading keeps stdin.
FAKE_CLIENT = """#!/bin/sh
echo "client $* password=$MYSQL_PWD" >>"$LOG"
case "$*" in
  *"-e SELECT CONCAT('DROP "*) printf 'DROP TABLE IF EXISTS `entries`;\\nDROP TABLE IF EXISTS `later`;\\n' ;;
  *" -e "*) ;;
  *) cat >"$LOADED" ;;
esac
"""
LOCATION = DatabaseLocation("mysql+pymysql://gb:pw@db:3306/gb?charset=utf8mb4", MYSQL, "test")


@pytest.fixture()
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bin directory with the stand-ins first on PATH; the log they write."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("fake-compose", FAKE_COMPOSE), ("mariadb-dump", FAKE_DUMP), ("mariadb", FAKE_CLIENT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LOG", str(tmp_path / "log"))
    monkeypatch.setenv("LOADED", str(tmp_path / "loaded.sql"))
    (tmp_path / "log").write_text("")
    return tmp_path


@pytest.fixture()
def target(tools: Path) -> Target:
    app_dir = tools / "server"
    app_dir.mkdir()
    (tools / "deploy.toml").write_text(f'[app]\nname = "gb"\n[environments.prod]\nhost = "local"\npath = "{app_dir}"\n')
    cfg = load_config(tools / "deploy.toml", environ={})
    compose = Compose(program=(str(tools / "bin" / "fake-compose"),), project="gb", project_dir=str(app_dir),
                      files=(str(app_dir / "c.yml"),))
    return Target(config=cfg, env=cfg.environment("prod"), host=LocalHost(), compose=compose)


def test_the_dump_argv_passes_no_password_and_names_the_hold(target: Target) -> None:
    argv = backups.dump_argv(target, location=LOCATION, snapshot="42")
    assert argv[-11:-5] == ["exec", "-T", "db", "sh", "-c", backups.MYSQL_DUMP]
    assert argv[-5:] == ["sh", "3306", "gb", "gb", "42"]
    assert not any(a == "pw" or ":pw@" in a for a in argv)


def test_the_dump_ends_the_hold_once_its_snapshot_exists_and_is_gzipped(target: Target, tools: Path) -> None:
    path = tools / "d.dump"
    result = target.host.run(list(backups.to_file(backups.dump_argv(target, location=LOCATION, snapshot="42"), str(path))),
                             stdin=b"pw\n", timeout=60)
    written = backups.parse_written(result.stdout)
    assert written.ok, result.stdout + result.stderr
    log = (tools / "log").read_text().splitlines()
    kill = next(i for i, line in enumerate(log) if line.startswith("client") and "-e KILL 42" in line)
    assert log.index("snapshot") < kill < log.index("dump done"), log  # after its snapshot, before its end
    assert "never released" not in log and "dump password=pw" in log and log[kill].endswith("password=pw")
    assert "--single-transaction" in log[0] and "--user=gb" in log[0] and "pw" not in log[0].split("password")[0]
    text = gzip.decompress(path.read_bytes()).decode()
    assert text.endswith("-- Dump completed on 2026-01-01  0:00:00\n") and "-- Setting savepoint" not in text
    assert "-- Setting savepoint" not in result.stderr  # its progress lines are not errors


def test_a_dump_that_fails_fails_with_its_status_and_still_lets_the_writes_go(target: Target, tools: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_DUMP_ERROR", "2")
    path = tools / "d.dump"
    result = target.host.run(list(backups.to_file(backups.dump_argv(target, location=LOCATION, snapshot="42"), str(path))),
                             stdin=b"pw\n", timeout=60)
    written = backups.parse_written(result.stdout)
    assert written.dump_exit == 2 and not written.ok
    assert "Lost connection" in result.stderr
    assert any("-e KILL 42" in line for line in (tools / "log").read_text().splitlines())


def _dump(tools: Path, text: str, name: str = "d.dump") -> Path:
    path = tools / name
    path.write_bytes(gzip.compress(text.encode()))
    return path


DUMP = "CREATE TABLE `entries` (id int);\nINSERT INTO `entries` VALUES (1);\n-- Dump completed on 2026-01-01\n"


def _read(target: Target, path: Path) -> tuple[bool, str]:
    return backups._readable(target, str(path), MYSQL)


def test_a_dump_is_read_to_its_end(target: Target, tools: Path) -> None:
    assert _read(target, _dump(tools, DUMP)) == (True, "read to its end: gzip's checksum, and mysqldump's last line")
    incomplete = _dump(tools, DUMP.replace("-- Dump completed on 2026-01-01\n", ""))
    ok, why = _read(target, incomplete)
    assert not ok and "the dump is incomplete" in why
    good = _dump(tools, DUMP * 2000, "big.dump")
    truncated = tools / "truncated.dump"
    truncated.write_bytes(good.read_bytes()[:-50])
    assert _read(target, truncated) == (False, "it does not decompress to its end (gzip failed)")
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted = tools / "corrupted.dump"
    corrupted.write_bytes(bytes(data))
    assert _read(target, corrupted) == (False, "it does not decompress to its end (gzip failed)")


def _restore(target: Target, path: Path) -> object:
    from deployer.actions import drive

    backup = Backup("b1", "prod", "r1", ("x",), path.stat().st_size, "0" * 64, "", str(path), engine="mysql")
    return drive(target.host, backups.restore_steps(target, backup, LOCATION), {}, answer=lambda action: action.read(None))


def test_a_restore_drops_every_table_then_loads_the_dump(target: Target, tools: Path) -> None:
    _restore(target, _dump(tools, DUMP))
    loaded = (tools / "loaded.sql").read_text()
    assert loaded == ("SET FOREIGN_KEY_CHECKS = 0;\nDROP TABLE IF EXISTS `entries`;\nDROP TABLE IF EXISTS `later`;\n"
                      + DUMP)
    calls = [line for line in (tools / "log").read_text().splitlines() if line.startswith("client")]
    assert all(line.endswith("password=pw") and "--user=gb" in line and "--port=3306" in line for line in calls), calls


@pytest.mark.parametrize("damage", ["truncated", "incomplete"])
def test_a_dump_that_does_not_read_to_its_end_drops_nothing(target: Target, tools: Path, damage: str) -> None:
    from deployer.server.backups import BackupError

    if damage == "truncated":
        path = _dump(tools, DUMP * 2000)
        path.write_bytes(path.read_bytes()[:-50])
    else:
        path = _dump(tools, DUMP.replace("-- Dump completed on 2026-01-01\n", ""))
    with pytest.raises(BackupError, match="exit 3") as raised:
        _restore(target, path)
    assert "one transaction, so the database was left as it was" in (raised.value.hint or "")
    assert (tools / "log").read_text() == "" and not (tools / "loaded.sql").exists()  # never connected


def test_a_fresh_dump_has_its_header_read_back(target: Target, tools: Path) -> None:
    header = "/*M!999999\\- enable the sandbox mode */ \n-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB\n--\n"
    path = _dump(tools, header + DUMP * 5000)
    ok, why = backups.drive(target.host, backups.readable_steps(target, str(path), MYSQL, to_the_end=False), {})
    assert (ok, why) == (True, "its header read back")
    ok, why = backups.drive(target.host, backups.readable_steps(target, str(_dump(tools, "garbage\n", "g.dump")), MYSQL,
                                                                to_the_end=False), {})
    assert not ok and why == "it does not start like a mysqldump dump"
