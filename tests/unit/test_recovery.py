"""Recovery from the step log, with the recording fake Host: every branch, exact commands.

The happy paths of recovery run end to end (tests/e2e); here are the ones a real stack
rarely reaches: a downgrade that fails (and what restoring would discard), nothing left to
restore with, a first release, and the direction of a failed rollback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.commands.compose import V2, Compose, ComposeConfig, ServiceConfig
from deployer.config import load_config
from deployer.db.url import DatabaseLocation
from deployer.db.writes import Changes
from deployer.engine import drive
from deployer.server import backups, facts, health
from deployer.server.runlog import DONE, STARTED, Goal, Progress, RunRecord, Source
from deployer.server.target import Target
from deployer.steps import migrate
from deployer.steps.context import Context, Options
from deployer.steps.recovery import Recovery, undo_all
from tests.unit.fakes import FakeHost

OLD, NEW = "a" * 40, "b" * 40
RELEASE = (("preflight", "preflight"), ("lock", "lock"), ("snapshot", "snapshot"), ("sync", "sync"), ("build", "build"),
           ("database_up", "database_up"), ("backup", "backup"), ("migrate", "migrate"), ("up", "up"),
           ("verify", "verify"), ("health", "health"), ("record", "record"))
ROLLBACK = (("preflight", "rollback_preflight"), ("lock", "lock"), ("snapshot", "snapshot"), ("backup", "backup"),
            ("schema", "schema"), ("switch", "switch"), ("up", "up"), ("verify", "verify"), ("health", "health"),
            ("record", "record"))
LOCATION = DatabaseLocation("postgresql://app:pw@db:5432/app", "postgresql", "test")
CONFIG = ComposeConfig(services={"web": ServiceConfig("web", build_context="/srv/demo"),
                                 "db": ServiceConfig("db", volumes=("dbdata",))},
                       volumes={"dbdata": "demo_dbdata"})


@pytest.fixture()
def cfg(tmp_path: Path):  # noqa: ANN201
    (tmp_path / "deploy.toml").write_text(
        '[app]\nname = "demo"\n[environments.prod]\nhost = "local"\npath = "/srv/demo"\n'
    )
    return load_config(tmp_path / "deploy.toml")


def record(steps=RELEASE, upto: str = "health", *, kind: str = "release", source: Source | None = None,
           backup: str | None = None) -> RunRecord:
    """A step log whose steps ran up to (and failed at) ``upto``."""
    progress = []
    for label, name in steps:
        progress.append(Progress(label, name, STARTED, "t"))
        if label == upto:
            break
        progress.append(Progress(label, name, DONE, "t"))
    return RunRecord(
        id="r2", kind=kind, environment="prod", playbook="release", steps=steps, holder="me", pid=1, started_at="t",
        source=source or Source(commit=OLD, release="r1", revision=("old1",), images={"demo-web": "demo-web:deployer-r1"},
                                volumes=("demo_dbdata",), running=("db", "web")),
        goal=Goal(commit=NEW, heads=("new1",), release="r2"), progress=tuple(progress), backup=backup,
    )


@pytest.fixture()
def db(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The database revision recovery reads back: a queue, the last value sticks."""
    values: list[tuple[str, ...]] = []
    monkeypatch.setattr(facts, "read_revisions", lambda *a, **k: values.pop(0) if len(values) > 1 else values[0])
    monkeypatch.setattr(health, "wait_healthy", lambda *a, **k: "healthy")
    return values


def recover(cfg, host: FakeHost, rec: RunRecord, **options: object) -> Recovery:  # noqa: ANN001
    compose = Compose(program=V2, project="demo", project_dir="/srv/demo", files=("/srv/demo/docker-compose.yml",))
    target = Target(config=cfg, env=cfg.environment("prod"), host=host, compose=compose)  # type: ignore[arg-type]
    ctx = Context(target=target, options=Options(**options), log=lambda _: None, kind=rec.kind, record=rec)  # type: ignore[arg-type]
    ctx.values["release_id"] = rec.id
    recovery = Recovery(rec, "health failed", LOCATION, CONFIG, restore_backup=bool(options.get("restore_backup")))
    drive(ctx, "recovery", undo_all(ctx, recovery))
    return recovery


def kind_of(argv: list[str]) -> str | None:
    if "downgrade" in argv:
        return "downgrade"
    if argv[:2] == ["docker", "tag"]:
        return "tag"
    if "checkout" in argv:
        return "checkout"
    return None


def test_downgrade_with_the_new_image_then_old_images_and_code(cfg, db) -> None:  # noqa: ANN001
    host = FakeHost()
    db.extend([("new1",), ("old1",)])
    done = recover(cfg, host, record()).report
    downgrade = host.commands("downgrade")
    # in a one-off container of the web service, through the launcher that keeps errors visible
    assert downgrade[0][-4:] == ["flask", "db", "downgrade", "old1"] and "web" in downgrade[0][:-6]
    kinds = [k for k in map(kind_of, host.calls) if k]
    assert kinds[0] == "downgrade" and set(kinds) == {"downgrade", "tag", "checkout"}  # schema first, with the new image
    assert ["docker", "tag", "demo-web:deployer-r1", "demo-web"] in host.calls
    assert ["git", "-C", "/srv/demo", "checkout", "--force", "--detach", OLD] in host.calls
    assert host.index(lambda c: "up" in c) > host.index(lambda c: "checkout" in c)  # old containers last
    assert "database downgraded to old1" in done and "previous release answers" in done


def _backup(monkeypatch: pytest.MonkeyPatch, changes: Changes | None) -> list[str]:
    restored: list[str] = []
    pre = backups.Backup("b1", "prod", "r2", ("old1",), 10, "0" * 64, "", "/srv/demo.deployer/backups/b1.dump",
                         baseline={"snapshot": "1:2:", "tables": {}})
    monkeypatch.setattr(backups, "find", lambda target, backup_id: pre)
    monkeypatch.setattr(backups, "check", lambda target, backup: None)
    monkeypatch.setattr(migrate, "count_changes", lambda ctx, recovery, backup: changes)

    def restore_steps(target, backup, location):  # noqa: ANN001, ANN202
        restored.append(backup.id)
        return
        yield

    monkeypatch.setattr(backups, "restore_steps", restore_steps)
    return restored


def test_failed_downgrade_restores_the_backup_when_nothing_was_written_since(cfg, db, monkeypatch) -> None:  # noqa: ANN001
    restored = _backup(monkeypatch, Changes())
    host = FakeHost(rules=[(lambda argv: "downgrade" in argv, 1, "")])
    db.extend([("new1",), ("new1",), ("old1",)])
    recovery = recover(cfg, host, record(upto="verify", backup="b1"))
    assert restored == ["b1"] and "restored from backup b1 (no write since it was taken" in recovery.report
    # writes are held while deciding: the app stops before the count and the old release starts after
    stop = host.index(lambda c: "stop" in c and "web" in c)
    assert stop < host.index(lambda c: c[-1:] == [] or "up" in c)
    assert not recovery.left


def test_a_restore_that_would_discard_writes_is_not_made(cfg, db, monkeypatch) -> None:  # noqa: ANN001
    restored = _backup(monkeypatch, Changes(written={"public.recipes": 64}))
    host = FakeHost(rules=[(lambda argv: "downgrade" in argv, 1, "")])
    db.extend([("new1",), ("new1",)])
    recovery = recover(cfg, host, record(upto="health", backup="b1"))
    assert restored == []
    message = " ".join(recovery.left)
    assert "would discard 64 row change(s)" in message and "public.recipes: 64 written" in message
    assert "deployer recover prod --restore-backup" in message and "--forward" in message
    # the new release stays with the schema it knows: code and images are not put back, nothing old starts
    assert not [c for c in host.calls if kind_of(c) in ("tag", "checkout")]
    assert host.commands("start") and not [c for c in host.calls if "up" in c]
    # ... unless the user chooses it
    host = FakeHost(rules=[(lambda argv: "downgrade" in argv, 1, "")])
    db.extend([("new1",), ("old1",)])
    chosen = recover(cfg, host, record(upto="health", backup="b1"), restore_backup=True)
    assert restored == ["b1"] and "64 change(s) discarded as chosen" in chosen.report
    assert not host.commands("downgrade")  # chosen: straight to the backup


def test_nothing_to_restore_with_says_what_is_left(cfg, db) -> None:  # noqa: ANN001
    host = FakeHost(rules=[(lambda argv: "downgrade" in argv, 1, "")])
    db.extend([("new1",), ("new1",)])
    recovery = recover(cfg, host, record(upto="verify"))
    message = " ".join(recovery.left)
    assert "bring the database from new1 back to old1" in message
    assert "keep running" in message  # old code is not started on a schema it cannot run on
    assert not [c for c in host.calls if "up" in c]


def test_first_release_leaves_the_server_as_it_found_it(cfg, db) -> None:  # noqa: ANN001
    # the database volume existed before (a database of the user's): its schema goes back, it is kept
    host = FakeHost()
    db.extend([("new1",), ()])
    existing = Source(commit=None, revision=(), path_existed=False, checkout_existed=False, volumes=("demo_dbdata",),
                      running=("db",))
    done = recover(cfg, host, record(source=existing)).report
    assert host.commands("downgrade")[0][-1] == "base"
    assert [c for c in host.calls if c[-4:] == ["rm", "--force", "--stop", "web"]]  # the user's db keeps running
    assert not host.commands("down") and not [c for c in host.calls if c[:3] == ["docker", "volume", "rm"]]
    assert ["rm", "-rf", "--", "/srv/demo"] in host.calls
    assert "first release: nothing deployed" in done
    # a database this release created goes with its volume: no downgrade needed
    host = FakeHost()
    db.extend([("new1",)])
    fresh = Source(commit=None, revision=None, path_existed=False, checkout_existed=False, volumes=())
    done = recover(cfg, host, record(source=fresh)).report
    assert not host.commands("downgrade")
    assert ["docker", "volume", "rm", "--force", "demo_dbdata"] in host.calls
    assert "volumes removed (demo_dbdata)" in done


def test_failed_rollback_restores_its_images_first_and_migrates_up(cfg, db) -> None:  # noqa: ANN001
    host = FakeHost()
    db.extend([("old1",), ("new1",)])
    source = Source(commit=NEW, release="r2", revision=("new1",), images={"demo-web": "demo-web:deployer-r2"},
                    volumes=("demo_dbdata",), running=("db", "web"))
    done = recover(cfg, host, record(ROLLBACK, kind="rollback", source=source)).report
    tag_at = host.calls.index(["docker", "tag", "demo-web:deployer-r2", "demo-web"])
    upgrade_at = next(i for i, c in enumerate(host.calls) if c[-3:] == ["db", "upgrade", "new1"])
    assert tag_at < upgrade_at
    assert "database upgraded to new1" in done


# --------------------------------------------------------------------------- MySQL/MariaDB: DDL commits on its own

MYSQL = DatabaseLocation("mysql+pymysql://app:pw@db:3306/app", "mysql", "test")


def recover_mysql(cfg, host: FakeHost, rec: RunRecord) -> Recovery:  # noqa: ANN001
    compose = Compose(program=V2, project="demo", project_dir="/srv/demo", files=("/srv/demo/docker-compose.yml",))
    target = Target(config=cfg, env=cfg.environment("prod"), host=host, compose=compose)  # type: ignore[arg-type]
    ctx = Context(target=target, options=Options(), log=lambda _: None, kind=rec.kind, record=rec)  # type: ignore[arg-type]
    ctx.values["release_id"] = rec.id
    recovery = Recovery(rec, "migration failed", MYSQL, CONFIG)
    drive(ctx, "recovery", undo_all(ctx, recovery))
    return recovery


def _mysql_backup(monkeypatch: pytest.MonkeyPatch, changes: Changes | None, schema_now: str) -> list[str]:
    restored = _backup(monkeypatch, changes)
    pre = backups.Backup("b1", "prod", "r2", ("old1",), 10, "0" * 64, "", "/srv/demo.deployer/backups/b1.dump",
                         engine="mysql", baseline={"tables": {}, "checksums": {}, "schema": "as-backed-up"})
    monkeypatch.setattr(backups, "find", lambda target, backup_id: pre)
    monkeypatch.setattr(migrate, "_mysql_schema", lambda ctx, recovery: schema_now)
    return restored


def test_a_migration_that_fails_on_mysql_is_restored_from_the_backup_not_trusted_or_downgraded(
        cfg, db, monkeypatch) -> None:  # noqa: ANN001
    # the revision did not move, but the failed migration's first statements were committed
    restored = _mysql_backup(monkeypatch, Changes(), schema_now="half-applied")
    host = FakeHost()
    db.extend([("old1",), ("old1",)])
    recovery = recover_mysql(cfg, host, record(upto="migrate", backup="b1"))
    assert restored == ["b1"] and not host.commands("downgrade")
    assert ("database restored from backup b1 because the migration failed on MySQL/MariaDB, which commits each DDL "
            "statement") in recovery.report and "no write since it was taken" in recovery.report
    assert not recovery.left and "previous release answers" in recovery.report
    # the revision moved too (an earlier migration of the release finished): still the backup, never a downgrade
    restored.clear()
    host = FakeHost()
    db[:] = [("mid1",), ("old1",)]
    recovery = recover_mysql(cfg, host, record(upto="migrate", backup="b1"))
    assert restored == ["b1"] and not host.commands("downgrade") and "database is at mid1" in recovery.report


def test_a_migration_that_failed_before_changing_anything_needs_no_restore(cfg, db, monkeypatch) -> None:  # noqa: ANN001
    restored = _mysql_backup(monkeypatch, Changes(written={"entries": 3}), schema_now="as-backed-up")
    host = FakeHost()
    db.extend([("old1",)])
    recovery = recover_mysql(cfg, host, record(upto="migrate", backup="b1"))
    assert restored == [] and not host.commands("downgrade")
    assert "database still at old1, its schema as the backup recorded it" in recovery.report and not recovery.left


def test_a_half_applied_migration_with_writes_since_stays_and_says_why(cfg, db, monkeypatch) -> None:  # noqa: ANN001
    restored = _mysql_backup(monkeypatch, Changes(written={"entries": 2}, exact=False), schema_now="half-applied")
    host = FakeHost()
    db.extend([("old1",)])
    recovery = recover_mysql(cfg, host, record(upto="migrate", backup="b1"))
    message = " ".join(recovery.left)
    assert restored == [] and "commits each DDL statement" in message
    assert "would discard 2 row change(s) made since it was taken (entries: at least 2 written)" in message
    assert "deployer recover prod --restore-backup" in message and "--forward" in message


def test_a_migration_that_finished_on_mysql_is_downgraded_as_usual(cfg, db, monkeypatch) -> None:  # noqa: ANN001
    restored = _mysql_backup(monkeypatch, Changes(), schema_now="other")
    host = FakeHost()
    db.extend([("new1",), ("old1",)])
    recovery = recover_mysql(cfg, host, record(upto="health", backup="b1"))  # the migration was done
    assert restored == [] and host.commands("downgrade") and "database downgraded to old1" in recovery.report
