"""A MariaDB-backed app, released, backed up, restored and rolled back with the real ``deployer``.

The guestbook (tests/apps/guestbook: Flask-Migrate, PyMySQL, the official mariadb image's
variables, its password in a compose secret) on MariaDB 10.11 built offline from Debian's
packages, over SSH, one deployment for the module, in order:

1. a dry run names the DDL MySQL/MariaDB commits on its own; the first release finds the
   database by the db service's MARIADB_* variables; status is in sync;
2. rows through the form and with SQL (non-ASCII, emoji) are served;
3. status reports the revision against the tip's head; a migrating release takes a backup,
   restore-verified in a throwaway container of the database's image (revision and every
   table's rows as counted in the dump's snapshot), and its gate names the DDL;
4. a manual backup, changed rows, and a restore: every row, column by column, as it was;
5. a corrupted dump fails its verification and is refused by restore (also once its
   description is made to match: it no longer reads to its end); the intact copy kept on
   this machine (``backup_copy``) is restored instead, every row back;
6. a migration whose second DDL statement fails (the first one committed: a half-applied
   schema, the revision unchanged) is recovered by restoring the pre-upgrade backup: rows
   intact, the schema as before;
7. ``deployer rollback`` brings the first release back: its schema, its code, every row.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.apps import AppDeployment
from tests.bench.cli import envelope
from tests.bench.cli import result as result_of

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

FIRST = ("6e57b0000002",)
MOOD = ("6e57b0000003",)
ALL_ROWS = "SELECT id, name, message, created_at FROM entries ORDER BY id"


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The backup_copy place on this machine (the laptop)."""
    return tmp_path_factory.mktemp("guestbook-copies")


@pytest.fixture(scope="module")
def d(module_app_deployment_factory, copies: Path) -> AppDeployment:  # noqa: ANN001 - a fixture
    return module_app_deployment_factory("guestbook", "ssh", environment_keys={"backup_copy": f'"local:{copies}"'})


def columns(d: AppDeployment) -> list[tuple]:
    """The entries table's columns and indexes, as information_schema has them."""
    found = d.sql("SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS "
                  "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'entries' ORDER BY ORDINAL_POSITION")
    indexes = d.sql("SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'entries' ORDER BY INDEX_NAME, SEQ_IN_INDEX")
    return [*found, *indexes]


def backups(d: AppDeployment, *args: str, expect: int | None = 0):  # noqa: ANN201 - a CompletedProcess
    result = d.deployer("backups", *args, timeout=600)
    if expect is not None:
        assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def backup_dir(d: AppDeployment) -> Path:
    return Path(f"{d.server_path}.deployer") / "backups"


def scratch_containers(d: AppDeployment) -> list[str]:
    return [c.name for c in d.engine.client.containers.list(all=True, filters={"label": "deployer.scratch"})
            if c.name.startswith(f"deployer-restore-check-{d.name}-")]


def test_the_gate_names_the_ddl_and_the_first_release_finds_mariadb_by_its_variables(d: AppDeployment) -> None:
    planned = d.deployer("release", d.env_name, "--dry-run", "--json")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    plan = result_of(planned.stdout)
    assert "the mariadb variables of the db service" in plan["database"], plan["database"]
    gate = "\n".join(plan["not_transactional"])
    assert "commits each DDL statement on its own" in gate, gate
    assert 'op.create_table("entries"' in gate and 'op.add_column("entries", sa.Column("created_at"' in gate, gate
    assert "restores the pre-upgrade backup" in gate, gate
    assert "commits each DDL statement on its own" in planned.stderr  # said in preflight too

    result = d.release()
    assert result["outcome"] == "succeeded", result
    assert tuple(result["revision_after"]) == FIRST and d.revision() == FIRST
    status, body = d.page()
    assert status == 200 and "Nobody signed yet." in body, body[:2000]
    code, doc = d.status()
    assert code == 0 and doc["verdict"] == "up to date", doc
    assert tuple(doc["database"]["revisions"]) == FIRST == tuple(doc["database"]["deployed_heads"]), doc["database"]


def test_rows_written_through_the_form_and_with_sql_are_served(d: AppDeployment) -> None:
    status, body = d.post_form()
    assert status == 200 and d.shape.form_shown in body, body[:2000]
    d.sql(d.shape.rows_insert)
    status, body = d.page()
    assert status == 200 and d.shape.form_shown in body and d.shape.rows_shown in body, body[:2000]
    assert [row[1:] for row in d.rows()] == [("Ana", "Hello from the form"), ("Zoë", "Ünïcödé entry ✓ 🦊")]


def test_a_migrating_release_is_gated_backed_up_and_its_backup_restore_verified(d: AppDeployment) -> None:
    rows = d.sql(ALL_ROWS)
    d.apply("migrate")
    code, doc = d.status()
    database = doc["database"]
    assert code == 15 and doc["verdict"] == "up to date", doc  # the deployed commit is behind the tip
    assert tuple(database["revisions"]) == FIRST and tuple(database["tip_heads"]) == MOOD, database
    assert [m["revision"] for m in database["tip_pending"]] == list(MOOD), database

    result = d.release()
    statuses = {s["name"]: s for s in result["steps"]}
    assert statuses["backup"]["status"] == "ok" and statuses["migrate"]["status"] == "ok", result["steps"]
    assert "its header read back" in statuses["backup"]["detail"], statuses["backup"]
    # the gate, on the SQL rendered in the new image: the two statements MariaDB commits one by one
    assert "2 DDL statement(s) in 1 revision(s)" in statuses["lint"]["detail"], statuses["lint"]
    assert "ALTER TABLE entries ADD COLUMN mood" in result["stderr"], result["stderr"][-3000:]
    assert "CREATE INDEX ix_entries_mood ON entries (mood)" in result["stderr"], result["stderr"][-3000:]
    verified = result["backup_verification"]
    assert verified["state"] == "verified", verified
    assert tuple(verified["revision"]) == FIRST and verified["tables"] == {"entries": 2}, verified
    assert "throwaway container" in verified["method"], verified
    described = json.loads((backup_dir(d) / f"{result['backup']}.json").read_text())
    assert described["engine"] == "mysql" and described["baseline"]["held"] == "held", described["baseline"]
    assert described["baseline"]["tables"] == {"entries": 2} and described["baseline"]["revision"] == list(FIRST)
    assert scratch_containers(d) == []
    # copied to this machine, byte for byte
    assert statuses["copy_backup"]["status"] == "ok", statuses["copy_backup"]
    (copy,) = [Path(c["path"]) for c in result["backup_copies"]]
    assert copy.read_bytes() == (backup_dir(d) / f"{result['backup']}.dump").read_bytes()

    assert d.revision() == MOOD and d.sql(ALL_ROWS) == rows
    status, body = d.page()
    assert status == 200 and d.shape.migrate_marker in body and d.shape.rows_shown in body, body[:2000]
    code, doc = d.status()
    assert code == 0 and doc["verdict"] == "up to date", doc
    assert doc["last_backup"]["id"] == result["backup"] and doc["last_backup"]["verification"] == "verified", doc


def test_a_backup_is_restored_row_by_row(d: AppDeployment) -> None:
    d.sql("INSERT INTO entries (name, message, mood) VALUES ('Bø', 'line one\\nline \"two\" ''quoted'' \\\\ 中文', 'calm')")
    before = d.sql("SELECT * FROM entries ORDER BY id")
    made = result_of(backups(d, "create", d.env_name, "--verify", "--json").stdout)
    assert made["engine"] == "mysql" and made["reason"] == "manual" and tuple(made["revision"]) == MOOD
    assert made["verification"]["state"] == "verified" and made["verification"]["tables"] == {"entries": 3}, made
    dump = backup_dir(d) / f"{made['id']}.dump"
    assert dump.stat().st_mode & 0o777 == 0o600 and dump.stat().st_size == made["size"]

    # change, delete, add: a table the backup does not know, rows gone, text edited
    d.sql("UPDATE entries SET message = 'changed' WHERE name = 'Ana'")
    d.sql("DELETE FROM entries WHERE name = 'Bø'")
    d.sql("INSERT INTO entries (name, message) VALUES ('Later', 'written after the backup')")
    d.sql("CREATE TABLE scratch (x int)")
    assert d.sql("SELECT * FROM entries ORDER BY id") != before

    outcome = result_of(backups(d, "restore", d.env_name, made["id"], "--yes", "--json").stdout)
    assert d.sql("SELECT * FROM entries ORDER BY id") == before  # every row, every column
    assert d.sql("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                 "AND TABLE_NAME = 'scratch'") == [(0,)]
    assert tuple(outcome["revision_after"]) == MOOD == tuple(outcome["revision_before"])
    safety = outcome["safety_backup"]
    assert safety["reason"] == "pre-restore" and (backup_dir(d) / f"{safety['id']}.dump").exists()
    # the app writes after the restore (the auto-increment came back too) and reads it all
    status, body = d.post_form()
    assert status == 200 and "mood: unsaid" in body and "中文" in body, body[:2000]
    d.sql("DELETE FROM entries WHERE id > (SELECT m FROM (SELECT MAX(id) AS m FROM entries WHERE name = 'Bø') AS t)")
    assert d.sql("SELECT * FROM entries ORDER BY id") == before
    assert not d.lock_held()


def test_a_corrupted_dump_fails_verification_and_is_refused_and_the_copy_restores(d: AppDeployment, copies: Path) -> None:
    before = d.sql("SELECT * FROM entries ORDER BY id")
    made = result_of(backups(d, "create", d.env_name, "--json").stdout)
    assert [c["where"] for c in made["copies"]] == [f"local:{copies}"]
    dump, meta = (backup_dir(d) / f"{made['id']}{suffix}" for suffix in (".dump", ".json"))
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))

    result = backups(d, "verify", d.env_name, made["id"], "--restore", "--json", expect=1)
    (report,) = result_of(result.stdout)
    verdict = report["verification"]
    assert verdict["state"] == "failed" and "sha256" in verdict["problems"][0] and "corrupted" in verdict["problems"][0]
    result = backups(d, "restore", d.env_name, made["id"], "--yes", "--from", "server", expect=1)
    assert "is invalid" in result.stderr and "sha256" in result.stderr, result.stderr

    # its description made to match the damaged file: the dump no longer reads to its end
    import hashlib

    described = json.loads(meta.read_text())
    described.update(size=dump.stat().st_size, sha256=hashlib.sha256(dump.read_bytes()).hexdigest(), verification=None)
    meta.write_text(json.dumps(described))
    result = backups(d, "verify", d.env_name, made["id"], "--json", expect=1)
    (report,) = result_of(result.stdout)
    assert not report["valid"] and "not a readable dump" in report["problem"] and "gzip" in report["problem"], report
    result = backups(d, "verify", d.env_name, made["id"], "--restore", expect=1)
    assert f"FAILED   {made['id']}: FAILED its restore verification" in result.stdout, result.stdout
    assert "does not decompress" in result.stdout, result.stdout
    assert scratch_containers(d) == []
    result = backups(d, "restore", d.env_name, made["id"], "--yes", "--force", "--from", "server", expect=1)
    assert "is invalid" in result.stderr and "not a readable dump" in result.stderr, result.stderr
    assert d.sql("SELECT * FROM entries ORDER BY id") == before and not d.lock_held()

    # the copy on this machine is intact: a restore takes it (put back on the server and checked there)
    d.sql("DELETE FROM entries WHERE name = 'Ana'")
    result = backups(d, "restore", d.env_name, made["id"], "--yes", "--no-safety-backup")
    assert "unusable" in result.stderr and f"bringing backup {made['id']} back from local:{copies}" in result.stderr
    assert d.sql("SELECT * FROM entries ORDER BY id") == before and not d.lock_held()
    for place in (backup_dir(d), copies):
        for suffix in (".dump", ".json"):
            (place / f"{made['id']}{suffix}").unlink(missing_ok=True)


def test_a_migration_that_fails_halfway_is_recovered_from_the_pre_upgrade_backup(d: AppDeployment) -> None:
    before_rows = d.sql("SELECT * FROM entries ORDER BY id")
    before_schema = columns(d)
    deployed = d.server_head()
    d.apply("broken")
    result = d.release(expect=1)
    said = result["stderr"]
    # the gate said which statements would commit on their own
    assert 'op.add_column("entries", sa.Column("rating"' in said and "ix_entries_rating" in said, said[-4000:]
    # the second statement failed after the first committed; the revision did not move...
    assert "no_such_column" in said, said[-4000:]
    # ...so the backup was restored instead of trusting it, and the release says why
    assert "commits each DDL statement" in said and "restoring the pre-upgrade backup instead" in said, said[-4000:]
    backup = d.history()[0]["backup"]
    assert f"database restored from backup {backup} because the migration failed on MySQL/MariaDB" in said, said[-4000:]
    assert "no write since it was taken" in said, said[-4000:]

    assert d.revision() == MOOD
    assert columns(d) == before_schema, "the half-applied column is still there"
    assert d.sql("SELECT * FROM entries ORDER BY id") == before_rows
    assert d.server_head() == deployed
    status, body = d.page()
    assert status == 200 and d.shape.migrate_marker in body, body[:2000]
    newest = d.history()[0]
    assert newest["kind"] == "release" and newest["outcome"] != "succeeded", newest
    code, doc = d.status()
    assert doc["verdict"] == "up to date" and tuple(doc["database"]["revisions"]) == MOOD, doc
    assert code == 15 and any("did not succeed" in p or "last release" in p for p in doc["problems"]), doc
    assert not d.lock_held()


def test_rollback_brings_the_first_release_back(d: AppDeployment) -> None:
    rows = d.sql(ALL_ROWS)
    d.revert("broken")
    result = d.rollback()
    assert result["outcome"] == "succeeded", result
    assert d.revision() == FIRST
    assert d.sql(ALL_ROWS) == rows
    assert "mood" not in [c[0] for c in columns(d)]
    status, body = d.page()
    assert status == 200 and "mood:" not in body and d.shape.rows_shown in body, body[:2000]
    code, doc = d.status()
    assert doc["verdict"] == "up to date" and tuple(doc["database"]["revisions"]) == FIRST, doc
    assert [m["revision"] for m in doc["database"]["tip_pending"]] == list(MOOD), doc["database"]
    assert not d.lock_held()
    doc = envelope(d.deployer("history", d.env_name, "--json").stdout)
    kinds = [(e["kind"], e["outcome"]) for e in doc["result"]["entries"]]
    assert kinds[0] == ("rollback", "succeeded") and kinds[-2:] == [("release", "succeeded")] * 2, kinds
