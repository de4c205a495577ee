"""``deployer backups`` end to end over SSH: the real command, engine, compose and PostgreSQL.

One deployment, keeping copies of its backups in two more places (``backup_copy``: a
directory on this machine and one on another host over SSH), released once, then: back up
-> change and delete rows -> restore, row by row equal; a restore without a terminal and
without --yes is refused; a truncated or corrupted dump is reported invalid, fails its
restore verification and is refused (the intact copy is used instead); a dump killed midway
leaves no file that looks like a backup; a release's backup is restore-verified (revision
and per-table counts equal) and copied; prune keeps what retention promises, everywhere;
a restore into a fresh, empty database (``docker compose down -v`` + db up) brings every
row back; a release whose dump rots before it is verified stays, its backup marked failed
and refused; a backup whose restored rows differ from the dump-time record fails and is
restored only with --force; a restore from the local copy after the server's copy was
deleted brings every row back; an interrupted scratch restore leaves nothing and never
touches the live database.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.bench.cli import result as result_of
from tests.bench.deployment import EXAMPLE_HEAD, Deployment, add_migration
from tests.bench.faults import (
    Background,
    scratch_containers,
    volume_exists,
    wait_lease_gone,
    wait_no_scratch,
    wait_process,
    wait_scratch,
)

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
    places = deployment.laptop.parent / "copies"
    text = (deployment.laptop / "deploy.toml").read_text().replace(
        "keep_backups = 5\n", f'keep_backups = 5\nbackup_copy = ["local:{places}/here", "host:bench:{places}/offsite"]\n')
    deployment.commit({"deploy.toml": text}, "keep every backup in two more places")
    assert deployment.release()["outcome"] == "succeeded"
    return deployment


def here(d: Deployment) -> Path:
    """The local copy place (on "the laptop")."""
    return d.laptop.parent / "copies" / "here"


def offsite(d: Deployment) -> Path:
    """The other host's copy place (the bench sshd is on this machine)."""
    return d.laptop.parent / "copies" / "offsite"


def copied(d: Deployment, backup_id: str) -> list[Path]:
    """The copies of a backup's dump that exist, at each place."""
    return [p for p in (here(d) / f"{backup_id}.dump", offsite(d) / f"{backup_id}.dump") if p.exists()]


def remove_everywhere(d: Deployment, backup_id: str) -> None:
    for directory in (backup_dir(d), here(d), offsite(d)):
        for suffix in (".dump", ".json"):
            (directory / f"{backup_id}{suffix}").unlink(missing_ok=True)


def databases(d: Deployment) -> list[tuple]:
    """The live cluster's databases and the live database's tables with their rows: what a
    restore verification must never change."""
    tables = [t for (t,) in d.sql("SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
    return [*d.sql("SELECT datname FROM pg_database ORDER BY 1"),
            *((t, d.sql(f"SELECT count(*) FROM {t}")[0][0]) for t in tables)]


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
    # copied to both backup_copy places, byte for byte, private, each with its description
    assert [c["where"] for c in created["copies"]] == [f"local:{here(d)}", f"host:bench:{offsite(d)}"]
    assert [Path(c["path"]) for c in created["copies"]] == copied(d, created["id"])
    for copy in copied(d, created["id"]):
        assert copy.read_bytes() == dump.read_bytes() and copy.stat().st_mode & 0o777 == 0o600
        assert copy.parent.stat().st_mode & 0o777 == 0o700
        assert json.loads(copy.with_suffix(".json").read_text())["sha256"] == created["sha256"]
    listed = result_of(ok(backups(d, "list", "production", "--json")).stdout)
    assert [b["id"] for b in listed] == [created["id"]]
    assert [p["where"] for p in listed[0]["places"]] == ["server", f"local:{here(d)}", f"host:bench:{offsite(d)}"]
    text = ok(backups(d, "list", "production")).stdout
    assert created["id"] in text and "server, local, bench" in text

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
    # the restore verification fails it before any scratch database is made, and keeps the verdict
    live = databases(d)
    result = backups(d, "verify", "production", made[1]["id"], "--restore", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    (report,) = result_of(result.stdout)
    assert report["verification"]["state"] == "failed" and "sha256" in report["verification"]["problems"][0], report
    assert json.loads((backup_dir(d) / f"{made[1]['id']}.json").read_text())["verification"]["state"] == "failed"

    # a damaged dump whose description was made to match: pg_restore cannot read it to its end
    _rewrite_meta(backup_dir(d) / f"{made[0]['id']}.json", truncated)
    result = backups(d, "verify", "production", made[0]["id"], "--json")
    assert result.returncode == 1
    (report,) = result_of(result.stdout)
    assert not report["valid"] and "not a readable dump" in report["problem"], report
    # ...and does not restore: the scratch restore says so
    result = backups(d, "verify", "production", made[0]["id"], "--restore")
    assert result.returncode == 1 and f"FAILED   {made[0]['id']}: FAILED its restore verification" in result.stdout, result.stdout
    assert "pg_restore failed" in result.stdout, result.stdout
    assert databases(d) == live and scratch_containers(d) == []

    before = rows(d)
    for made_one in made:
        result = backups(d, "restore", "production", made_one["id"], "--yes", "--from", "server")
        assert result.returncode == 1 and "is invalid" in result.stderr, result.stderr
    assert rows(d) == before and not d.lock_held()
    # without --from, the intact copy is used: put back on the server (sha256 checked there), then restored
    result = ok(backups(d, "restore", "production", made[1]["id"], "--yes", "--no-safety-backup"))
    assert "the server's dump of" in result.stderr and "unusable" in result.stderr, result.stderr
    assert f"bringing backup {made[1]['id']} back from local:{here(d)}" in result.stderr, result.stderr
    assert corrupted.read_bytes() == (here(d) / corrupted.name).read_bytes()
    assert d.sql("SELECT count(*) FROM filler") == [(20000,)]  # the state it was taken in
    d.sql("DROP TABLE filler")
    assert rows(d) == before
    for m in made:  # out of the way of the retention test
        remove_everywhere(d, m["id"])


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
        assert not list(here(d).glob("*.partial")) and not list(offsite(d).glob("*.partial"))
        assert not d.lock_held()
    finally:
        d.sql("DROP TABLE big")


def test_prune_keeps_what_retention_promises(d: Deployment, saved: dict) -> None:
    # a release with a migration takes a pre-upgrade backup: the current release's
    d.commit(add_migration(R_NOTES, EXAMPLE_HEAD, "Add notes to recipes",
                           ["op.add_column('recipes', sa.Column('notes', sa.Text(), nullable=True))"],
                           ["op.drop_column('recipes', 'notes')"]), "add notes")
    counted = {f"public.{t}": d.sql(f"SELECT count(*) FROM {t}")[0][0] for t in ("users", "recipes")}
    release = d.release()
    pre_upgrade = release["backup"]
    assert pre_upgrade
    # once recorded, the release's backup was restored into a scratch database: revision and
    # every table's rows equal what the dump recorded in its snapshot (and what the database held)
    verdict = release["backup_verification"]
    described = json.loads((backup_dir(d) / f"{pre_upgrade}.json").read_text())
    assert verdict["state"] == "verified" and verdict["problems"] == [], verdict
    assert verdict["revision"] == [EXAMPLE_HEAD] == described["baseline"]["revision"]
    assert verdict["tables"] == described["baseline"]["tables"] == counted, (verdict, described["baseline"])
    assert described["verification"] == verdict and "no network" in verdict["method"]
    steps = {s["name"]: s["status"] for s in release["steps"]}
    assert steps["verify_backup"] == "ok" and steps["copy_backup"] == "ok", release["steps"]
    assert [c["where"] for c in release["backup_copies"]] == [f"local:{here(d)}", f"host:bench:{offsite(d)}"]
    assert len(copied(d, pre_upgrade)) == 2
    assert json.loads((here(d) / f"{pre_upgrade}.json").read_text())["verification"]["state"] == "verified"
    assert scratch_containers(d) == []  # the scratch database went with the verification
    assert [r["id"] for r in d.journal()][-1] == release["id"]  # journaled before the verification ran
    status = d.deployer("status", "production", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    newest = result_of(status.stdout)["last_backup"]
    assert newest["id"] == pre_upgrade and newest["verification"] == "verified", newest
    assert newest["copies"] == [f"local:{here(d)}", f"host:bench:{offsite(d)}"]
    assert "restore-verified" in d.deployer("status", "production").stdout
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

    # each copy place on its own: the same rule over what it holds (the pre-restore safety
    # backups were not copied), and nothing removed yet
    for place, directory in zip(plan["copies"], (here(d), offsite(d)), strict=True):
        held = {p.stem for p in directory.glob("*.json")}
        assert place["error"] is None and set(place["removed"]) == held - {k["id"] for k in place["kept"]}, place
        assert {k["id"] for k in place["kept"]} == {manual[-1], manual[-2], pre_upgrade}, place

    text = ok(backups(d, "prune", "production", "--keep", "2")).stdout
    assert f"keep     {pre_upgrade}" in text
    remaining = [b["id"] for b in result_of(ok(backups(d, "list", "production", "--json")).stdout)]
    assert sorted(remaining) == sorted(kept)
    assert files(d) == {f"{i}{suffix}" for i in kept for suffix in (".dump", ".json")}
    assert all((backup_dir(d) / name).stat().st_mode & 0o777 == 0o600 for name in files(d))
    for directory in (here(d), offsite(d)):
        assert {p.name for p in directory.iterdir()} == {f"{i}{suffix}" for i in kept for suffix in (".dump", ".json")}
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


ROT_PLAYBOOK = """\
description = "the default release, with the newest dump damaged right after it was taken"

[[steps]]
step = "preflight"
[[steps]]
step = "lock"
[[steps]]
step = "snapshot"
[[steps]]
step = "sync"
[[steps]]
step = "build"
[[steps]]
step = "database_up"
[[steps]]
step = "backup"
always = true
[[steps]]
step = "run"
name = "disk rot"
command = ["sh", "-c", "f=$(ls -t {backups}/*.dump | head -n 1); printf rot | dd of=\\"$f\\" bs=1 seek=200 conv=notrunc 2>/dev/null"]
[[steps]]
step = "migrate"
[[steps]]
step = "swap"
[[steps]]
step = "verify"
[[steps]]
step = "health"
[[steps]]
step = "record"
[[steps]]
step = "verify_backup"
[[steps]]
step = "copy_backup"
"""


def test_a_release_whose_dump_rots_stays_and_its_backup_is_marked_and_refused(d: Deployment) -> None:
    # the database is behind the code since the previous test: this release migrates too
    commit = d.commit({"playbooks/rot.toml": ROT_PLAYBOOK.format(backups=backup_dir(d))}, "a playbook that damages the dump")
    released = d.release("--playbook", "rot")
    backup_id = released["backup"]
    verdict = released["backup_verification"]
    assert released["outcome"] == "succeeded" and verdict["state"] == "failed", released
    assert "sha256" in verdict["problems"][0] and "corrupted" in verdict["problems"][0], verdict
    steps = {s["name"]: s for s in released["steps"]}
    assert steps["verify_backup"]["status"] == "ok" and steps["copy_backup"]["status"] == "failed", released["steps"]
    assert "does not match its sha256" in steps["copy_backup"]["detail"]  # no copy of a damaged dump is kept
    assert copied(d, backup_id) == [] and not list(here(d).glob("*.partial"))
    # the release stays: recorded, its code serving, its schema in place
    assert d.journal()[-1]["id"] == released["id"] and d.journal()[-1]["outcome"] == "succeeded"
    assert d.server_head() == commit and d.revision() == (R_NOTES,) and d.get("/health")[0] == 200
    assert not (d.state_path / "run.json").exists() and not d.lock_held()
    # and everything that shows backups says so
    status = d.deployer("status", "production", "--json")
    assert status.returncode == 15, status.stdout + status.stderr
    assert any(f"the newest backup {backup_id} FAILED its restore verification" in p
               for p in result_of(status.stdout)["problems"]), status.stdout
    listing = ok(backups(d, "list", "production")).stdout
    assert f"!! {backup_id} FAILED its restore verification" in listing, listing
    result = backups(d, "restore", "production", backup_id, "--yes")
    assert result.returncode == 1 and "is invalid" in result.stderr and "no copy" in result.stderr, result.stderr
    assert d.revision() == (R_NOTES,)
    remove_everywhere(d, backup_id)


def test_a_backup_that_restores_different_rows_fails_and_is_restored_only_with_force(d: Deployment) -> None:
    before = rows(d)
    made = result_of(ok(backups(d, "create", "production", "--json", "--verify")).stdout)
    assert made["verification"]["state"] == "verified" and made["verification"]["tables"]["public.users"] == len(before["users"])
    # the dump-time record says one more user than the dump holds: a dump that lost a row
    meta = backup_dir(d) / f"{made['id']}.json"
    data = json.loads(meta.read_text())
    data["baseline"]["tables"]["public.users"] += 1
    meta.write_text(json.dumps(data))
    live = databases(d)
    result = backups(d, "verify", "production", made["id"], "--restore", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    (report,) = result_of(result.stdout)
    problems = report["verification"]["problems"]
    assert report["verification"]["state"] == "failed" and problems == [
        f"public.users: {len(before['users'])} rows restored, {len(before['users']) + 1} recorded"], report
    assert databases(d) == live and scratch_containers(d) == []
    assert "FAILED" in ok(backups(d, "list", "production")).stdout

    d.sql("DELETE FROM recipes")
    result = backups(d, "restore", "production", made["id"], "--yes", "--no-safety-backup")
    assert result.returncode == 6, result.stderr
    assert "failed its restore verification" in result.stderr and "--force" in result.stderr, result.stderr
    assert d.sql("SELECT count(*) FROM recipes") == [(0,)] and not d.lock_held()
    result = ok(backups(d, "restore", "production", made["id"], "--yes", "--no-safety-backup", "--force"))
    assert "restoring it anyway (--force)" in result.stderr
    assert rows(d) == before


def test_restore_from_a_copy_after_the_servers_was_deleted_brings_every_row_back(d: Deployment) -> None:
    before = rows(d)
    made = result_of(ok(backups(d, "create", "production", "--json")).stdout)
    for source, where in (("", f"local:{here(d)}"), ("bench", f"host:bench:{offsite(d)}")):
        (backup_dir(d) / f"{made['id']}.dump").unlink()
        (backup_dir(d) / f"{made['id']}.json").unlink()
        listed = {b["id"]: b for b in result_of(ok(backups(d, "list", "production", "--json")).stdout)}
        assert [p["where"] for p in listed[made["id"]]["places"]] == [f"local:{here(d)}", f"host:bench:{offsite(d)}"]
        d.sql("DELETE FROM recipes")
        d.sql("UPDATE users SET name = 'lost'")
        assert rows(d) != before
        result = ok(backups(d, "restore", "production", made["id"], "--yes", "--no-safety-backup",
                            *(("--from", source) if source else ())))
        assert f"bringing backup {made['id']} back from {where}" in result.stderr, result.stderr
        assert rows(d) == before
        # back on the server, byte for byte, described
        assert (backup_dir(d) / f"{made['id']}.dump").read_bytes() == (here(d) / f"{made['id']}.dump").read_bytes()
        assert json.loads((backup_dir(d) / f"{made['id']}.json").read_text())["sha256"] == made["sha256"]
    result = backups(d, "restore", "production", made["id"], "--yes", "--from", "elsewhere")
    assert result.returncode == 1 and "keeps no copy at 'elsewhere'" in result.stderr, result.stderr


def test_an_interrupted_scratch_restore_leaves_nothing_and_never_touches_the_live_database(d: Deployment) -> None:
    d.sql("CREATE TABLE ballast AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS junk "
          "FROM generate_series(1, 200000) AS g")
    try:
        made = result_of(ok(backups(d, "create", "production", "--json")).stdout)
        live = databases(d)
        for signal_name in ("SIGINT", "SIGKILL"):
            run = Background(d, ("backups", "verify", "production", made["id"], "--restore"))
            scratch = wait_scratch(d, alive=run)
            # no way to the live database: no network, no volume of the app, limited
            assert scratch["HostConfig"]["NetworkMode"] == "none"
            mounts = [m.get("Name") for m in scratch["Mounts"]]
            assert f"{d.name}_dbdata" not in mounts and all(m["Type"] == "volume" for m in scratch["Mounts"]), mounts
            assert scratch["HostConfig"]["NanoCpus"] == 10**9 and scratch["HostConfig"]["Memory"] == 1 << 30
            wait_process("pg_restore", "--single-transaction", alive=run)  # restoring into it now
            if signal_name == "SIGINT":
                run.signal(2)
                assert run.finish() == 130, run.output
                assert "Traceback" not in run.output
                wait_no_scratch(d, timeout=10)  # deployer removed it itself
            else:
                run.kill()
                run.finish()
                wait_lease_gone(d)
                wait_no_scratch(d)  # the lease's holder removed it when its owner vanished
            assert not any(volume_exists(name) for name in mounts if name), mounts
            assert json.loads((backup_dir(d) / f"{made['id']}.json").read_text())["verification"] is None
            assert databases(d) == live
        # nothing left in the way: the next verification runs to its end
        result = ok(backups(d, "verify", "production", made["id"], "--restore", "--json"))
        (report,) = result_of(result.stdout)
        assert report["verification"]["state"] == "verified" and report["verification"]["tables"]["public.ballast"] == 200000
        assert databases(d) == live and scratch_containers(d) == []
    finally:
        d.sql("DROP TABLE IF EXISTS ballast")


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
    from deployer.server import verification

    t = sqlite_target

    def sql(script: str) -> None:
        t.host.run(t.compose.run("web", ["python3", "-c", SQLITE_SETUP]), stdin=script.encode(), timeout=120).check("sql")

    def contents() -> dict:
        return json.loads(t.host.run(t.compose.run("web", ["python3", "-c", SQLITE_ROWS]), timeout=120).check("rows").stdout)

    sql("CREATE TABLE alembic_version (version_num TEXT PRIMARY KEY); INSERT INTO alembic_version VALUES ('abc123');"
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); "
        "INSERT INTO notes (body) VALUES ('Crème brûlée 🍮'), ('zoë'), ('中文');")
    before = contents()
    made = api.create_environment(t).backup
    assert made.engine == "sqlite" and made.revision == ("abc123",) and made.reason == "manual"
    assert Path(made.path).stat().st_mode & 0o777 == 0o600
    api.verify(t, made)
    # restored into a scratch copy in a throwaway container of the web image: revision and rows as recorded
    (checked,) = verification.verify_environment(t, [made.id])
    assert checked.verification is not None and checked.verification.state == "verified", checked.verification
    assert checked.verification.revision == ("abc123",) and checked.verification.tables == {"notes": 3}

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
    (checked,) = verification.verify_environment(t, [made.id])
    assert checked.verification is not None and checked.verification.state == "failed", checked.verification
    assert "not a sound SQLite database" in checked.verification.problems[0], checked.verification
    with pytest.raises(api.BackupError, match="is invalid"):
        api.restore_environment(t, made.id, yes=True)
    assert contents() == before
