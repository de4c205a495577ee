"""``deployer backups`` end to end over SSH: the real command, engine, compose and PostgreSQL.

One deployment, released once, then: back up -> change and delete rows -> restore, row by
row equal; a restore without a terminal and without --yes is refused; a truncated or
corrupted dump is reported invalid and refused; a dump killed midway leaves no file that
looks like a backup; prune keeps what retention promises; and a restore into a fresh,
empty database (``docker compose down -v`` + db up) brings every row back.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.bench.cli import result as result_of
from tests.bench.deployment import EXAMPLE_HEAD, Deployment, add_migration

pytestmark = pytest.mark.e2e

R_NOTES = "d4e5f6a7b8c9"

def backups(d: Deployment, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``deployer backups ARGS`` as a user runs it in the laptop clone (no terminal)."""
    return subprocess.run(
        d.deployer_argv("backups", *args), cwd=d.laptop, env=d.environ(),
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def rows(d: Deployment) -> dict[str, list[tuple]]:
    return {
        "users": d.sql("SELECT * FROM users ORDER BY id"),
        "recipes": d.sql("SELECT * FROM recipes ORDER BY id"),
        "revision": d.revision(),
    }


def backup_dir(d: Deployment) -> Path:
    return d.backup_path


def files(d: Deployment) -> set[str]:
    return {p.name for p in backup_dir(d).iterdir()} if backup_dir(d).exists() else set()


def wait_db(d: Deployment, deadline: float = 90) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            d.sql("SELECT 1")
            return
        except Exception:  # noqa: BLE001 - not accepting connections yet
            if time.monotonic() > end:
                raise
            time.sleep(1)


@pytest.fixture(scope="module")
def d(deployment_factory) -> Deployment:
    deployment = deployment_factory("ssh", health_timeout=25)
    assert deployment.release()["outcome"] == "succeeded"
    return deployment


@pytest.fixture(scope="module")
def saved() -> dict:
    """What the first test backed up, for the fresh-database restore at the end."""
    return {}


def test_backup_change_restore_every_row_equal(d: Deployment, saved: dict, tmp_path: Path) -> None:
    d.sql("INSERT INTO users (email, name) VALUES ('ana@example.com', 'Ana'), ('bo@example.com', 'Bø Ærlig'), "
          "('zoë@example.com', 'Zoë 中文 🚀')")
    d.sql("INSERT INTO recipes (recipe_title, recipe_description, is_public, user_id, inspiration) "
          "SELECT 'Crème brûlée 🍮 ' || name, E'line one\\nline \"two\" ''quoted''', id % 2 = 0, id, NULL FROM users")
    before = rows(d)
    assert len(before["users"]) == 3 and len(before["recipes"]) == 3

    created = result_of(ok(backups(d, "create", "production", "--json", "--download", str(tmp_path / "local"))).stdout)
    assert created["revision"] == [EXAMPLE_HEAD] and created["reason"] == "manual"
    assert created["release"] == d.journal()[-1]["id"] and created["environment"] == "production"
    dump = backup_dir(d) / f"{created['id']}.dump"
    meta = backup_dir(d) / f"{created['id']}.json"
    assert dump.stat().st_size == created["size"] > 0
    assert dump.stat().st_mode & 0o777 == 0o600 and meta.stat().st_mode & 0o777 == 0o600
    assert backup_dir(d).stat().st_mode & 0o777 == 0o700
    local = Path(created["local_path"])
    assert local.read_bytes() == dump.read_bytes() and local.stat().st_mode & 0o777 == 0o600
    assert json.loads((tmp_path / "local" / f"{created['id']}.json").read_text())["sha256"] == created["sha256"]
    listed = result_of(ok(backups(d, "list", "production", "--json")).stdout)
    assert [b["id"] for b in listed] == [created["id"]]
    assert created["id"] in ok(backups(d, "list", "production")).stdout

    # change, delete, add: a table the backup does not know, rows gone, text edited
    d.sql("UPDATE users SET name = 'changed' WHERE email = 'ana@example.com'")
    d.sql("DELETE FROM recipes WHERE user_id = (SELECT id FROM users WHERE email = 'bo@example.com')")
    d.sql("CREATE TABLE scratch (x int)")
    assert rows(d) != before

    result = ok(backups(d, "restore", "production", created["id"], "--yes", "--json"))
    outcome = result_of(result.stdout)
    assert rows(d) == before
    assert d.sql("SELECT count(*) FROM information_schema.tables WHERE table_name = 'scratch'") == [(0,)]
    assert outcome["revision_after"] == [EXAMPLE_HEAD] and outcome["revision_before"] == [EXAMPLE_HEAD]
    safety = outcome["safety_backup"]
    assert safety["reason"] == "pre-restore" and (backup_dir(d) / f"{safety['id']}.dump").exists()
    assert not d.lock_held()
    # the sequences came back too: the app inserts after a restore
    d.sql("INSERT INTO users (email, name) VALUES ('new@example.com', 'New')")
    d.sql("DELETE FROM users WHERE email = 'new@example.com'")
    assert d.get("/")[0] == 200 and "Crème brûlée 🍮" in d.get("/")[1]
    saved.update(id=created["id"], rows=before)


def test_restore_without_terminal_or_yes_is_refused(d: Deployment, saved: dict) -> None:
    before = rows(d)
    d.sql("DELETE FROM recipes")
    result = backups(d, "restore", "production", saved["id"], timeout=120)
    assert result.returncode == 6, result.stderr
    assert "--yes" in result.stderr and "no terminal" in result.stderr
    assert d.sql("SELECT count(*) FROM recipes") == [(0,)]
    assert not d.lock_held()
    # "latest" is the safety backup the first restore took: the state it replaced
    ok(backups(d, "restore", "production", "latest", "--yes", "--no-safety-backup"))
    assert d.sql("SELECT name FROM users WHERE email = 'ana@example.com'") == [("changed",)]
    assert d.sql("SELECT count(*) FROM information_schema.tables WHERE table_name = 'scratch'") == [(1,)]
    ok(backups(d, "restore", "production", saved["id"], "--yes", "--no-safety-backup"))
    assert rows(d) == before


def _rewrite_meta(meta: Path, dump: Path) -> None:
    """Make the description match a damaged dump, so only the readability check can tell."""
    import hashlib

    data = json.loads(meta.read_text())
    data.update(size=dump.stat().st_size, sha256=hashlib.sha256(dump.read_bytes()).hexdigest())
    meta.write_text(json.dumps(data))


def test_truncated_or_corrupted_backup_is_invalid_and_refused(d: Deployment) -> None:
    # enough rows that the data blocks are well past the archive's table of contents
    d.sql("CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS text FROM generate_series(1, 20000) AS g")
    made = [result_of(ok(backups(d, "create", "production", "--json")).stdout) for _ in range(2)]
    d.sql("DROP TABLE filler")
    truncated, corrupted = (backup_dir(d) / f"{m['id']}.dump" for m in made)
    with open(truncated, "r+b") as handle:
        handle.truncate(truncated.stat().st_size // 2)
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))

    result = backups(d, "verify", "production", made[0]["id"], made[1]["id"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"INVALID  {made[0]['id']}: its size is" in result.stdout and "truncated" in result.stdout
    assert f"INVALID  {made[1]['id']}: its sha256" in result.stdout and "corrupted" in result.stdout
    assert "2 of 2 backup(s) of production are invalid" in result.stderr

    # a damaged dump whose description was made to match: pg_restore cannot read it to its end
    _rewrite_meta(backup_dir(d) / f"{made[0]['id']}.json", truncated)
    result = backups(d, "verify", "production", made[0]["id"], "--json")
    assert result.returncode == 1
    (report,) = result_of(result.stdout)
    assert not report["valid"] and "not a readable dump" in report["problem"], report

    before = rows(d)
    for made_one in made:
        result = backups(d, "restore", "production", made_one["id"], "--yes")
        assert result.returncode == 1 and "is invalid" in result.stderr, result.stderr
    assert rows(d) == before and not d.lock_held()
    for m in made:  # out of the way of the retention test
        (backup_dir(d) / f"{m['id']}.dump").unlink()
        (backup_dir(d) / f"{m['id']}.json").unlink()


def test_dump_killed_midway_leaves_no_backup(d: Deployment) -> None:
    d.sql("CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS text FROM generate_series(1, 600000) AS g")
    try:
        before = files(d)
        process = subprocess.Popen(
            d.deployer_argv("backups", "create", "production"), cwd=d.laptop, env=d.environ(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        killed = False
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            partial = [p for p in backup_dir(d).glob("*.dump.partial") if p.stat().st_size > 0]
            if partial:
                # the dump is being written: cut pg_dump's connection, as a crash or restart would
                killed = d.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE application_name = 'pg_dump'")[0][0] > 0
                if killed:
                    break
            time.sleep(0.02)
        stdout, stderr = process.communicate(timeout=120)
        assert killed, f"the dump finished before it could be cut off: {stdout} {stderr}"
        assert process.returncode == 1, stderr
        assert "dump failed" in stderr and "Traceback" not in stderr
        assert files(d) == before, files(d) - before
        assert not d.lock_held()
    finally:
        d.sql("DROP TABLE big")


def test_prune_keeps_what_retention_promises(d: Deployment, saved: dict) -> None:
    # a release with a migration takes a pre-upgrade backup: the current release's
    d.commit(add_migration(R_NOTES, EXAMPLE_HEAD, "Add notes to recipes",
                           ["op.add_column('recipes', sa.Column('notes', sa.Text(), nullable=True))"],
                           ["op.drop_column('recipes', 'notes')"]), "add notes")
    release = d.release()
    pre_upgrade = release["backup"]
    assert pre_upgrade
    manual = [result_of(ok(backups(d, "create", "production", "--json")).stdout)["id"] for _ in range(3)]
    (backup_dir(d) / "20000101T000000000000Z.dump.partial").write_bytes(b"left by a killed dump")
    everything = [b["id"] for b in result_of(ok(backups(d, "list", "production", "--json")).stdout)]
    assert set(manual) | {pre_upgrade, saved["id"]} <= set(everything)

    plan = result_of(ok(backups(d, "prune", "production", "--keep", "2", "--dry-run", "--json")).stdout)
    kept = {k["id"]: k["why"] for k in plan["kept"]}
    assert set(kept) == {manual[-1], manual[-2], pre_upgrade}, plan
    assert "current release" in kept[pre_upgrade]
    assert set(plan["removed"]) == set(everything) - set(kept)
    assert plan["leftovers"] == [str(backup_dir(d) / "20000101T000000000000Z.dump.partial")]
    assert len(files(d)) == 2 * len(everything) + 1  # a dry run removes nothing

    text = ok(backups(d, "prune", "production", "--keep", "2")).stdout
    assert f"keep     {pre_upgrade}" in text
    remaining = [b["id"] for b in result_of(ok(backups(d, "list", "production", "--json")).stdout)]
    assert sorted(remaining) == sorted(kept)
    assert files(d) == {f"{i}{suffix}" for i in kept for suffix in (".dump", ".json")}
    assert all((backup_dir(d) / name).stat().st_mode & 0o777 == 0o600 for name in files(d))
    assert "nothing to prune" in ok(backups(d, "prune", "production", "--keep", "2")).stdout
    ok(backups(d, "verify", "production"))


def test_restore_into_a_fresh_empty_database(d: Deployment, saved: dict) -> None:
    # the pre-upgrade backup of the current release holds the rows the first test saved
    pre_upgrade = d.journal()[-1]["backup"]
    expected = saved["rows"]
    d.compose("down", "--volumes")
    d.compose("up", "--detach", "db")
    wait_db(d)
    assert d.sql("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == [(0,)]
    outcome = result_of(ok(backups(d, "restore", "production", pre_upgrade, "--yes", "--json")).stdout)
    assert outcome["revision_before"] == [] and outcome["revision_after"] == [EXAMPLE_HEAD]
    assert rows(d) == expected
    assert outcome["safety_backup"]["revision"] == []


# --------------------------------------------------------------------------- SQLite

SQLITE_COMPOSE = """\
services:
  web:
    image: ${PYTHON_IMAGE}
    volumes: [data:/data]
    command: ["sleep", "infinity"]
volumes:
  data:
"""

SQLITE_SETUP = """\
import sqlite3, sys
db = sqlite3.connect("/data/app.db")
db.executescript(sys.stdin.read())
db.commit()
"""

SQLITE_ROWS = """\
import json, sqlite3
db = sqlite3.connect("/data/app.db")
print(json.dumps({t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("alembic_version", "notes")}))
"""


@pytest.fixture()
def sqlite_target(tmp_path: Path, docker_engine, bench_images):  # noqa: ANN001, ANN201
    """A compose project whose web service keeps a SQLite database in a volume, as a Target."""
    import secrets

    from deployer.config import load_config
    from deployer.server.target import open_target, write_env_file

    server = tmp_path / "server"
    server.mkdir()
    (server / "compose.yml").write_text(SQLITE_COMPOSE)
    name = f"e2esqlite{secrets.token_hex(3)}"
    (tmp_path / "deploy.toml").write_text(f"""\
[app]
name = "{name}"
compose_file = "compose.yml"

[environments.local]
host = "local"
path = "{server}"
database_url = "sqlite:////data/app.db"

[environments.local.env]
PYTHON_IMAGE = "{bench_images.python}"
""")
    target = open_target(load_config(tmp_path / "deploy.toml", environ={}), "local")
    write_env_file(target)
    try:
        yield target
    finally:
        target.host.run([*target.compose.down(volumes=True)], timeout=120)
        target.host.close()


def test_sqlite_backup_restore_and_corruption(sqlite_target) -> None:  # noqa: ANN001
    from deployer.server import backups as api

    t = sqlite_target

    def sql(script: str) -> None:
        t.host.run(t.compose.run("web", ["python3", "-c", SQLITE_SETUP]), stdin=script.encode(), timeout=120).check("sql")

    def contents() -> dict:
        return json.loads(t.host.run(t.compose.run("web", ["python3", "-c", SQLITE_ROWS]), timeout=120).check("rows").stdout)

    sql("CREATE TABLE alembic_version (version_num TEXT PRIMARY KEY); INSERT INTO alembic_version VALUES ('abc123');"
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); "
        "INSERT INTO notes (body) VALUES ('Crème brûlée 🍮'), ('zoë'), ('中文');")
    before = contents()
    made, _ = api.create_environment(t)
    assert made.engine == "sqlite" and made.revision == ("abc123",) and made.reason == "manual"
    assert Path(made.path).stat().st_mode & 0o777 == 0o600
    api.verify(t, made)

    sql("UPDATE notes SET body = 'changed'; DELETE FROM notes WHERE id = 2; UPDATE alembic_version SET version_num = 'def456';")
    assert contents() != before
    outcome = api.restore_environment(t, made.id, yes=True)
    assert contents() == before
    assert outcome.revision_before == ("def456",) and outcome.revision_after == ("abc123",)
    assert outcome.safety_backup is not None and outcome.safety_backup.revision == ("def456",)

    # a damaged copy whose description matches it: only the integrity check can tell
    dump = Path(made.path)
    data = bytearray(dump.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    data[100:108] = b"\xff" * 8  # the header's page counts
    dump.write_bytes(bytes(data))
    import hashlib

    meta = json.loads(Path(made.meta_path).read_text())
    meta["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    Path(made.meta_path).write_text(json.dumps(meta))
    problem = api.check(t, api.find(t, made.id))
    assert problem is not None and "not a readable dump" in problem, problem
    with pytest.raises(api.BackupError, match="is invalid"):
        api.restore_environment(t, made.id, yes=True)
    assert contents() == before
