"""Recovery after a failed step, with a recording fake Host: every branch, exact commands.

The happy paths of recovery run end to end (tests/e2e); here are the ones a real stack
rarely reaches: a downgrade that fails, a backup restore, nothing left to restore with,
a first release, and the direction of a failed rollback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deployer import release
from deployer.db import backups
from deployer.server import health
from deployer.commands.compose import V2, Compose
from deployer.config import load_config
from deployer.errors import DeployerError, ExitCode, RecoveryFailed
from deployer.hosts import Result
from deployer.playbook import Playbook
from deployer.release import Options, Run, recover
from deployer.server.target import Target

OLD, NEW = "a" * 40, "b" * 40


@dataclass
class FakeHost:
    """Answers commands by rule (first matching predicate wins) and records every argv."""

    rules: list[tuple[Callable[[Sequence[str]], bool], int, str]] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    name: str = "fake"
    is_local: bool = False

    def run(self, argv: Sequence[str], **_: object) -> Result:
        self.calls.append(list(argv))
        for matches, code, out in self.rules:
            if matches(argv):
                return Result(tuple(argv), code, out, "" if code == 0 else "failed", 0.0)
        return Result(tuple(argv), 0, "", "", 0.0)

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        self.calls.append(["write", path])

    def forward(self, host: str, port: int) -> contextlib.AbstractContextManager[tuple[str, int]]:
        return contextlib.nullcontext((host, port))

    def close(self) -> None:
        pass

    def commands(self, word: str) -> list[list[str]]:
        return [c for c in self.calls if word in c]


@pytest.fixture()
def cfg(tmp_path: Path):  # noqa: ANN201
    (tmp_path / "deploy.toml").write_text(
        '[app]\nname = "demo"\n[environments.prod]\nhost = "local"\npath = "/srv/demo"\n'
    )
    return load_config(tmp_path / "deploy.toml")


def make_run(cfg, host: FakeHost, **state: object) -> Run:  # noqa: ANN001
    compose = Compose(program=V2, project="demo", project_dir="/srv/demo", files=("/srv/demo/docker-compose.yml",))
    target = Target(config=cfg, env=cfg.environment("prod"), host=host, compose=compose)  # type: ignore[arg-type]
    run = Run(target=target, playbook=Playbook("release", Path("x"), "", ()), options=Options(), log=lambda _: None)
    run.remote = "/origin"
    for key, value in state.items():
        setattr(run, key, value)
    return run


@pytest.fixture()
def db(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The database revision recovery reads back: a queue, the last value sticks."""
    values: list[tuple[str, ...]] = []
    monkeypatch.setattr(Run, "revisions", lambda run: values.pop(0) if len(values) > 1 else values[0])
    monkeypatch.setattr(health, "wait_healthy", lambda *a, **k: "healthy")
    return values


def head_is(sha: str) -> tuple[Callable[[Sequence[str]], bool], int, str]:
    return (lambda argv: "rev-parse" in argv, 0, sha + "\n")


def test_downgrade_with_the_new_image_then_old_code_and_images(cfg, db) -> None:  # noqa: ANN001
    host = FakeHost(rules=[head_is(OLD)])
    db.extend([("new1",), ("old1",)])
    run = make_run(cfg, host, revision_before=("old1",), previous_commit=OLD, migrated=True, synced=True, recreated=True,
                   saved_images={"demo-web": "demo-web:deployer-r1"})
    done = recover(run, DeployerError("health failed"))
    downgrade = host.commands("downgrade")
    assert downgrade[0][-5:] == ["web", "flask", "db", "downgrade", "old1"]
    order = [i for i, c in enumerate(host.calls) if "downgrade" in c or c[:2] == ["docker", "tag"] or "checkout" in c]
    kinds = ["downgrade" if "downgrade" in host.calls[i] else "tag" if host.calls[i][1] == "tag" else "checkout" for i in order]
    assert kinds == ["downgrade", "checkout", "tag"]  # schema first, with the image that knows both revisions
    assert ["docker", "tag", "demo-web:deployer-r1", "demo-web"] in host.calls
    assert "database downgraded to old1" in done and "previous release answers" in done


def test_failed_downgrade_falls_back_to_the_backup(cfg, db, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    restored: list[str] = []
    monkeypatch.setattr(backups, "restore", lambda target, backup: restored.append(backup.id))
    host = FakeHost(rules=[(lambda argv: "downgrade" in argv, 1, ""), head_is(OLD)])
    db.extend([("new1",), ("new1",)])
    pre = backups.Backup("b1", "prod", "r2", ("old1",), 10, "0" * 64, "", "/srv/demo/backups/b1.dump")
    run = make_run(cfg, host, revision_before=("old1",), previous_commit=OLD, migrated=True, backup=pre)
    done = recover(run, DeployerError("verify failed"))
    assert restored == ["b1"] and "restored from backup b1" in done


def test_nothing_to_restore_with_says_what_is_left(cfg, db) -> None:  # noqa: ANN001
    host = FakeHost(rules=[(lambda argv: "downgrade" in argv, 1, ""), head_is(OLD)])
    db.extend([("new1",), ("new1",)])
    run = make_run(cfg, host, revision_before=("old1",), previous_commit=OLD, migrated=True, recreated=True)
    with pytest.raises(RecoveryFailed) as caught:
        recover(run, DeployerError("verify failed"))
    message = str(caught.value)
    assert "bring the database from new1 back to old1" in message
    assert "start the previous release" in message  # not started on a schema it cannot run on
    assert caught.value.exit_code == ExitCode.RECOVERY_FAILED
    assert not [c for c in host.calls if "up" in c]


def test_first_release_stops_the_web_service_and_keeps_the_data(cfg, db) -> None:  # noqa: ANN001
    host = FakeHost()
    db.extend([("new1",), ()])
    run = make_run(cfg, host, revision_before=(), previous_commit=None, migrated=True, recreated=True)
    done = recover(run, DeployerError("health failed"))
    assert host.commands("downgrade")[0][-1] == "base"
    assert [c for c in host.calls if c[-2:] == ["stop", "web"]]
    assert "first release" in done and not [c for c in host.calls if "down" in c]


def test_failed_rollback_restores_its_images_first_and_migrates_up(cfg, db) -> None:  # noqa: ANN001
    host = FakeHost(rules=[head_is(NEW)])
    db.extend([("old1",), ("new1",)])
    run = make_run(cfg, host, kind="rollback", revision_before=("new1",), previous_commit=NEW, migrated=True,
                   synced=True, recreated=True, saved_images={"demo-web": "demo-web:deployer-r2"})
    done = recover(run, DeployerError("health failed"))
    tag_at = host.calls.index(["docker", "tag", "demo-web:deployer-r2", "demo-web"])
    upgrade_at = next(i for i, c in enumerate(host.calls) if c[-3:] == ["db", "upgrade", "new1"])
    assert tag_at < upgrade_at
    assert "database upgraded to new1" in done


def test_migration_argv() -> None:
    assert release.migration_argv(("flask", "db", "upgrade"), "upgrade", "x") == ["flask", "db", "upgrade", "x"]
