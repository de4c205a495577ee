"""Backups without a database: retention, descriptions, argv, and failed dumps leaving nothing.

The failure tests run the real ``create`` on this machine (LocalHost) with a stand-in for
``docker compose`` that runs the in-container command here instead: the dump it emits is
controlled by the test, the readability check is the real ``pg_restore``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from deployer.commands.compose import Compose
from deployer.config import load_config
from deployer.hosts import LocalHost
from deployer.server import backups, lock
from deployer.server.backups import Backup, BackupError, select_retention
from deployer.server.journal import Record
from deployer.server.target import Target


def backup(id_: str, created: str, release: str | None = None) -> Backup:
    return Backup(id=id_, environment="production", release=release, revision=("abc",), size=10, sha256="0" * 64,
                  created_at=created, path=f"/srv/app/backups/{id_}.dump")


def record(id_: str, finished: str, backup_id: str | None, outcome: str = "succeeded") -> Record:
    return Record(id=id_, kind="release", environment="production", outcome=outcome, commit="c" * 40,
                  previous_commit=None, revision_before=(), revision_after=(), started_at=finished,
                  finished_at=finished, seconds=1.0, user="u@h", backup=backup_id)


B = [backup(f"2026010{i}T000000000000Z", f"2026-01-0{i}T00:00:00+00:00") for i in range(1, 8)]


def ids(items) -> list[str]:  # noqa: ANN001
    return [b.id if isinstance(b, Backup) else b[0].id for b in items]


def test_keeps_the_newest_and_removes_the_rest_newest_first() -> None:
    decision = select_retention(B, [], keep=3)
    assert ids(decision.kept) == [B[6].id, B[5].id, B[4].id]
    assert ids(decision.removed) == [B[3].id, B[2].id, B[1].id, B[0].id]
    assert all(why == "one of the 3 newest" for _, why in decision.kept)


def test_never_removes_the_current_releases_pre_upgrade_backup() -> None:
    records = [record("r1", "2026-01-01T00:10:00+00:00", B[0].id)]
    decision = select_retention(B, records, keep=2)
    kept = {b.id: why for b, why in decision.kept}
    assert set(kept) == {B[6].id, B[5].id, B[0].id}
    assert kept[B[0].id] == "pre-upgrade backup of the current release r1"


def test_keeps_the_last_migrating_release_backup_when_the_current_release_took_none() -> None:
    records = [record("r1", "2026-01-02T00:10:00+00:00", B[1].id), record("r2", "2026-01-03T00:10:00+00:00", None)]
    decision = select_retention(B, records, keep=1)
    kept = {b.id: why for b, why in decision.kept}
    assert set(kept) == {B[6].id, B[1].id}
    assert "last release that migrated" in kept[B[1].id]


def test_keeps_backups_of_successful_releases_newer_than_the_oldest_kept() -> None:
    records = [
        record("r1", "2026-01-01T00:10:00+00:00", B[0].id),  # older than the cutoff: not a rollback target
        record("r3", "2026-01-03T00:10:00+00:00", B[2].id),
        record("r4", "2026-01-04T00:10:00+00:00", B[3].id, outcome="failed"),  # never ran: not needed
        record("r5", "2026-01-05T00:10:00+00:00", B[4].id),
        record("r6", "2026-01-06T00:10:00+00:00", B[5].id),
    ]
    decision = select_retention(B, records, keep=2)  # newest two: B6, B5; cutoff 2026-01-06
    kept = {b.id: why for b, why in decision.kept}
    # B5 is among the newest; r6's backup is B5 (current); r5 finished before the cutoff
    assert set(kept) == {B[6].id, B[5].id}
    decision = select_retention(B, records, keep=3)  # cutoff 2026-01-05: r5 (B4) finished after
    assert set(ids(decision.kept)) == {B[6].id, B[5].id, B[4].id}
    records.append(record("r7", "2026-01-07T00:10:00+00:00", B[2].id))  # a rollback target still
    decision = select_retention(B, records, keep=2)
    kept = {b.id: why for b, why in decision.kept}
    assert set(kept) == {B[6].id, B[5].id, B[2].id} and "current release r7" in kept[B[2].id]
    assert ids(decision.removed) == [B[4].id, B[3].id, B[1].id, B[0].id]


def test_failed_releases_protect_nothing_and_missing_backups_are_ignored() -> None:
    records = [record("r1", "2026-01-07T00:10:00+00:00", B[0].id, outcome="failed"),
               record("r2", "2026-01-07T00:20:00+00:00", "20990101T000000000000Z")]
    decision = select_retention(B, records, keep=1)
    assert ids(decision.kept) == [B[6].id] and B[0].id in ids(decision.removed)


def test_retention_of_nothing_and_a_bad_keep() -> None:
    assert select_retention([], [record("r1", "2026-01-01T00:00:00+00:00", "x")], keep=3).removed == ()
    with pytest.raises(ValueError):
        select_retention(B, [], keep=0)


def test_description_round_trip_tolerates_unknown_and_missing_keys() -> None:
    original = replace(B[0], reason=backups.MANUAL)
    data = json.loads(original.to_json())
    assert Backup.from_dict(data) == original
    data["added_later"] = 1
    del data["reason"], data["engine"]  # a description written before these existed
    assert Backup.from_dict(data) == replace(original, reason=backups.PRE_RELEASE)
    assert original.meta_path == "/srv/app/backups/20260101T000000000000Z.json"


def test_sqlite_path_from_url() -> None:
    assert backups.sqlite_path("sqlite:////data/app.db") == "/data/app.db"
    assert backups.sqlite_path("sqlite:///app.db") == "app.db"
    with pytest.raises(BackupError, match="names no database file"):
        backups.sqlite_path("sqlite://")


# --------------------------------------------------------------------------- real files on this machine

# Stands in for `docker compose`: runs the in-container command here, except pg_dump, whose
# output FAKE_DUMP chooses ("fail": some bytes then exit 1; "garbage": not a dump, exit 0).
FAKE_COMPOSE = """#!/bin/sh
while [ "$1" != exec ] && [ "$1" != run ]; do shift; done
shift
while [ "${1#-}" != "$1" ]; do shift; done
shift
case "$*" in
  *pg_dump*)
    printf 'PGDMP\\001\\016\\000half a dump'
    [ "$FAKE_DUMP" = garbage ] && exit 0
    echo 'pg_dump: error: connection to server lost' >&2; exit 1 ;;
esac
exec "$@"
"""


@pytest.fixture()
def target(tmp_path: Path) -> Target:
    program = tmp_path / "fake-compose"
    program.write_text(FAKE_COMPOSE)
    program.chmod(0o755)
    app_dir = tmp_path / "server"
    app_dir.mkdir()
    (tmp_path / "deploy.toml").write_text(
        f'[app]\nname = "shop"\n\n[environments.production]\nhost = "local"\npath = "{app_dir}"\n'
    )
    cfg = load_config(tmp_path / "deploy.toml", environ={})
    Path(cfg.environment("production").backup_dir).mkdir(parents=True)  # beside the checkout
    compose = Compose(program=(str(program),), project="shop", project_dir=str(app_dir), files=(str(app_dir / "c.yml"),))
    return Target(config=cfg, env=cfg.environment("production"), host=LocalHost(), compose=compose)


@pytest.mark.parametrize(("mode", "message"), [("fail", "dump failed"), ("garbage", "does not read back")])
def test_a_failed_dump_leaves_no_file(target: Target, monkeypatch: pytest.MonkeyPatch, mode: str, message: str) -> None:
    monkeypatch.setenv("FAKE_DUMP", mode)
    with pytest.raises(BackupError, match=message):
        backups.create(target, release="r1", revision=("abc",))
    directory = Path(target.env.backup_dir)
    assert directory.is_dir() and list(directory.iterdir()) == []
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert backups.list_backups(target) == []


def test_dump_argv_runs_pg_dump_in_the_db_service_with_a_lock_timeout(target: Target) -> None:
    argv = backups.dump_argv(target, lock_wait_timeout=2.5)
    assert argv[:2] == [str(Path(target.env.path).parent / "fake-compose"), "--project-name"]
    assert argv[-8:-3] == ["exec", "-T", "db", "sh", "-c"] and argv[-2:] == ["sh", "2500ms"]
    assert "pg_dump --format=custom --compress=1 --lock-wait-timeout=\"$1\"" in argv[-3]
    sqlite = replace(target, env=replace(target.env, database_url="sqlite:////data/app.db"))
    assert backups.engine_of(sqlite) == backups.SQLITE and backups.engine_of(target) == backups.POSTGRESQL
    argv = backups.dump_argv(sqlite)
    assert argv[-9:-3] == ["run", "--rm", "-T", "--no-deps", "web", "python3"]
    assert argv[-3] == "-c" and argv[-1] == "/data/app.db" and "source.backup(target)" in argv[-2]


def _place(target: Target, item: Backup, content: bytes) -> Backup:
    directory = Path(target.env.backup_dir)
    directory.mkdir(exist_ok=True)
    path = directory / f"{item.id}.dump"
    path.write_bytes(content)
    placed = replace(item, path=str(path), size=len(content), sha256=hashlib.sha256(content).hexdigest())
    Path(placed.meta_path).write_text(placed.to_json())
    return placed


def test_verify_reports_missing_truncated_and_corrupted_files(target: Target) -> None:
    placed = _place(target, B[0], b"0123456789" * 100)
    path = Path(placed.path)
    path.write_bytes(path.read_bytes()[:500])
    assert "truncated" in (backups.check(target, placed) or "")
    path.write_bytes(b"X" * 1000)
    assert "corrupted" in (backups.check(target, placed) or "")
    path.write_bytes(b"0123456789" * 100)
    assert "not a readable dump" in (backups.check(target, placed) or "")  # the real pg_restore says so
    path.unlink()
    with pytest.raises(BackupError, match="is invalid: .* is missing"):
        backups.verify(target, placed)


def test_list_find_and_leftovers(target: Target) -> None:
    placed = [_place(target, b, b"dump") for b in (B[1], B[0])]
    other = _place(target, replace(B[2], environment="staging"), b"dump")
    directory = Path(target.env.backup_dir)
    (directory / "20260109T000000000000Z.dump.partial").write_bytes(b"half")
    (directory / "20260110T000000000000Z.dump").write_bytes(b"no description")
    (directory / "broken.json").write_text("{not json")
    assert backups.list_backups(target) == sorted(placed, key=lambda b: b.id)
    assert other in backups.list_backups(target, all_environments=True)
    assert backups.find(target, "latest") == placed[0]
    assert backups.find(target, "20260101") == placed[1]
    with pytest.raises(BackupError, match="matches 2 backups"):
        backups.find(target, "2026010")
    with pytest.raises(BackupError, match="no backup 'nope'"):
        backups.find(target, "nope")
    assert backups._leftovers(target) == [str(directory / "20260109T000000000000Z.dump.partial"),
                                          str(directory / "20260110T000000000000Z.dump")]


def test_prune_removes_what_retention_drops_and_leftovers(target: Target) -> None:
    placed = [_place(target, b, b"dump") for b in B[:4]]
    directory = Path(target.env.backup_dir)
    (directory / "x.dump.partial").write_bytes(b"half")
    dry = backups.prune(target, keep=2, dry_run=True)
    assert ids(dry.removed) == [placed[1].id, placed[0].id] and len(list(directory.iterdir())) == 9
    done = backups.prune(target, keep=2)
    assert ids(done.removed) == ids(dry.removed)
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        f"{b.id}{suffix}" for b in placed[2:] for suffix in (".dump", ".json"))
    assert not lock.read_lock(target.host, target.state_dir).held  # the lease ended with the prune


def test_download_checks_the_copy(target: Target, tmp_path: Path) -> None:
    placed = _place(target, B[0], b"a real dump's bytes")
    local = backups.download(target, placed, tmp_path / "copies")
    assert local.read_bytes() == b"a real dump's bytes" and stat.S_IMODE(local.stat().st_mode) == 0o600
    assert json.loads((tmp_path / "copies" / f"{placed.id}.json").read_text())["sha256"] == placed.sha256
    Path(placed.path).write_bytes(b"changed since")
    shutil.rmtree(tmp_path / "copies")
    with pytest.raises(BackupError, match="does not match its sha256"):
        backups.download(target, placed, tmp_path / "copies")
    assert os.listdir(tmp_path / "copies") == []


def test_a_written_dump_reports_its_exit_and_the_checksum_of_the_file(tmp_path: Path) -> None:
    host = LocalHost()
    out = tmp_path / "dump.partial"
    result = host.run(list(backups.to_file(["printf", "some dump bytes"], str(out))))
    written = backups.parse_written(result.stdout)
    assert written == backups.Written(0, hashlib.sha256(b"some dump bytes").hexdigest()) and written.ok
    assert out.read_bytes() == b"some dump bytes" and stat.S_IMODE(out.stat().st_mode) == 0o600
    # the dump fails midway: its status, and no checksum of half a dump
    failed = backups.parse_written(host.run(list(backups.to_file(["sh", "-c", "printf half; exit 3"], str(out)))).stdout)
    assert failed == backups.Written(3, None) and not failed.ok
    # a full disk: the write fails, so does the dump
    full = host.run(list(backups.to_file(["sh", "-c", "head -c 100000 /dev/zero"], "/dev/full")))
    written = backups.parse_written(full.stdout)
    assert written.dump_exit not in (0, None) and not written.ok and "No space left" in full.stderr
    message = backups._dump_failure("postgresql", "h", full, written)
    assert message.startswith("the postgresql dump failed on h") and "No space left" in message
    assert backups.parse_written("") == backups.Written(None, None)


# --------------------------------------------------------------------------- copies (backup_copy), on this machine


def with_copies(target: Target, *places: str) -> Target:
    from deployer.config import parse_backup_copy

    return replace(target, env=replace(target.env, backup_copies=tuple(parse_backup_copy(p) for p in places)))


def test_copies_are_checksummed_where_they_arrive_listed_and_brought_back(target: Target, tmp_path: Path) -> None:
    from deployer.actions import drive
    from deployer.server import copies

    here, there = tmp_path / "here", tmp_path / "there"
    t = with_copies(target, f"local:{here}", f"local:{there}", "local:/dev/null/cannot")
    placed = _place(t, B[0], b"a dump's bytes")
    updated, failed = drive(t.host, copies.copy_steps(t, placed), {})
    assert len(failed) == 1 and failed[0].startswith("local:/dev/null/cannot: ")  # one place failing stops no other
    assert [c.where for c in updated.copies] == [f"local:{here}", f"local:{there}"]
    for directory in (here, there):
        dump = directory / f"{placed.id}.dump"
        assert dump.read_bytes() == b"a dump's bytes" and stat.S_IMODE(dump.stat().st_mode) == 0o600
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert json.loads((directory / f"{placed.id}.json").read_text())["sha256"] == placed.sha256
    # the server's description says where the copies are
    assert [c.where for c in backups.find(t, placed.id).copies] == [f"local:{here}", f"local:{there}"]
    located, unreadable = copies.locate_all(t, backups.list_backups(t))
    assert [item.places for item in located] == [("server", f"local:{here}", f"local:{there}")]
    assert len(unreadable) == 1 and unreadable[0].startswith("local:/dev/null/cannot: cannot list /dev/null/cannot")

    # the server's dump is gone: a restore takes the first copy, put back and checked on the server
    Path(placed.path).unlink()
    Path(placed.meta_path).unlink()
    chosen, origin = backups.choose(t, placed.id)
    assert origin is not None and origin.where == f"local:{here}" and chosen.path == str(here / f"{placed.id}.dump")
    back = copies.bring_back(t, chosen, origin)
    assert Path(back.path).read_bytes() == b"a dump's bytes" and back.path == placed.path
    assert stat.S_IMODE(Path(back.path).stat().st_mode) == 0o600 and backups.find(t, placed.id).sha256 == placed.sha256
    # the server's dump damaged: the intact copy is used, or the place asked for
    Path(placed.path).write_bytes(b"a dump's bytez")
    assert backups.choose(t, placed.id)[1].where == f"local:{here}"  # type: ignore[union-attr]
    assert backups.choose(t, placed.id, "local:" + str(there))[1].where == f"local:{there}"  # type: ignore[union-attr]
    with pytest.raises(BackupError, match="keeps no copy at 'nowhere'"):
        backups.choose(t, placed.id, "nowhere")
    # a damaged copy is refused on its way back, and leaves nothing on the server
    (here / f"{placed.id}.dump").write_bytes(b"a dump's bytez")
    with pytest.raises(BackupError, match="does not match its recorded sha256"):
        copies.bring_back(t, *copies.find_copy(t, placed.id, "local:" + str(here)))
    assert not list(Path(t.env.backup_dir).glob("*.partial"))


def test_a_damaged_dump_is_not_copied(target: Target, tmp_path: Path) -> None:
    from deployer.actions import drive
    from deployer.server import copies

    t = with_copies(target, f"local:{tmp_path / 'here'}")
    placed = _place(t, B[0], b"a dump's bytes")
    Path(placed.path).write_bytes(b"rotten bytes!!")
    updated, failed = drive(t.host, copies.copy_steps(t, placed), {})
    assert updated.copies == () and "does not match its sha256" in failed[0]
    assert list((tmp_path / "here").iterdir()) == []


def test_prune_applies_retention_at_every_place(target: Target, tmp_path: Path) -> None:
    from deployer.actions import drive
    from deployer.server import copies

    here = tmp_path / "here"
    t = with_copies(target, f"local:{here}")
    placed = [_place(t, b, b"dump") for b in B[:4]]
    for item in placed[1:]:  # the oldest one was never copied
        drive(t.host, copies.copy_steps(t, item), {})
    (here / "x.dump.partial").write_bytes(b"half a copy")
    dry = backups.prune(t, keep=2, dry_run=True)
    (place,) = dry.copies
    assert [b.id for b, _ in place.retention.kept] == [placed[3].id, placed[2].id]
    assert [b.id for b in place.retention.removed] == [placed[1].id] and place.retention.leftovers == (str(here / "x.dump.partial"),)
    assert len(list(here.iterdir())) == 7  # a dry run removes nothing
    done = backups.prune(t, keep=2)
    assert done.to_dict()["copies"][0]["removed"] == [placed[1].id]
    assert sorted(p.name for p in here.iterdir()) == sorted(f"{b.id}{s}" for b in placed[2:] for s in (".dump", ".json"))
