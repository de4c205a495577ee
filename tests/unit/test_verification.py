"""Restore verification without a database: the comparison and the verdict (pure), the
dump-time record per engine, the scratch's lifecycle with the recording fake Host (removed on
every path, Ctrl-C included), and the steps after `record` (they never undo a run).

The real scratch restores run end to end (tests/e2e/test_backups.py, test_faults.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from deployer import engine, interrupts
from deployer.actions import Skip, drive
from deployer.commands.compose import V2, Compose
from deployer.config import load_config
from deployer.server import verification
from deployer.server.backups import FAILED, INCONCLUSIVE, VERIFIED, Backup, Verification
from deployer.server.target import Target
from deployer.server.verification import (
    RESERVE,
    PostgresScratch,
    Recorded,
    Restored,
    SqliteScratch,
    compare,
    room,
    verdict,
)
from deployer.steps import StepKind
from deployer.steps.context import Context, Options
from deployer.steps.playbook import Step
from tests.unit.fakes import FakeHost

SHA = hashlib.sha256(b"dump").hexdigest()
BACKUP = Backup(id="20260101T000000000000Z", environment="prod", release="r1", revision=("abc",), size=4, sha256=SHA,
                created_at="2026-01-01T00:00:00+00:00", path="/srv/demo.deployer/backups/20260101T000000000000Z.dump",
                baseline={"snapshot": "1:2:", "tables": {"public.users": 3, "public.recipes": 5}, "revision": ["abc"],
                          "bytes": 10_000_000})


def test_equal_revision_tables_and_rows_verify() -> None:
    recorded = Recorded(("abc",), {"public.users": 3, "public.recipes": 5})
    assert compare(recorded, Restored(("abc",), {"public.recipes": 5, "public.users": 3})) == ()
    checked = verdict(recorded, Restored(("abc",), {"public.recipes": 5, "public.users": 3}),
                      checked_at="t", seconds=1.23456, method="m")
    assert checked.state == VERIFIED and checked.ok and checked.seconds == 1.235
    assert checked.summary() == "restore-verified t: revision abc, 2 tables, 8 rows as recorded"


def test_every_difference_is_named() -> None:
    recorded = Recorded(("abc",), {"public.users": 3, "public.recipes": 5, "public.gone": 1})
    problems = compare(recorded, Restored(("def",), {"public.users": 2, "public.recipes": 5, "public.new": 0}))
    assert problems == (
        "revision def restored, abc recorded",
        "table(s) missing from the restored copy: public.gone",
        "table(s) restored that were not recorded: public.new",
        "public.users: 2 rows restored, 3 recorded",
    )
    checked = verdict(recorded, Restored(("def",), {}), checked_at="t", seconds=0, method="m")
    assert checked.state == FAILED and not checked.ok and checked.summary().startswith("FAILED its restore verification t: ")


def test_without_recorded_counts_a_clean_restore_is_inconclusive() -> None:
    checked = verdict(Recorded(("abc",), None), Restored(("abc",), {"public.users": 3}), checked_at="t", seconds=0, method="m")
    assert checked.state == INCONCLUSIVE and "no row counts were recorded" in checked.problems[0]
    # ...but a wrong revision still fails it
    assert verdict(Recorded(("abc",), None), Restored((), {}), checked_at="t", seconds=0, method="m").state == FAILED


def test_room_on_the_disk_of_dockers_data_root() -> None:
    assert room(None, 10) is None and room(10, None) is None
    assert room(RESERVE + 500, 500) is None
    short = room(RESERVE + 499, 500)
    assert short is not None and "at least 1074 MB must stay free" in short


def test_the_dump_time_record_of_each_engine() -> None:
    assert PostgresScratch().recorded(BACKUP) == Recorded(("abc",), {"public.users": 3, "public.recipes": 5})
    # a baseline from before the revision was taken in the snapshot: the description's revision
    older = replace(BACKUP, revision=("old",), baseline={"snapshot": "1:2:", "tables": {"public.users": 3}})
    assert PostgresScratch().recorded(older) == Recorded(("old",), {"public.users": 3})
    assert PostgresScratch().recorded(replace(BACKUP, baseline=None)) == Recorded(("abc",), None)
    sqlite = replace(BACKUP, engine="sqlite", baseline={"tables": {"notes": [3, 7]}, "schema_version": 4, "revision": ["x"]})
    assert SqliteScratch().recorded(sqlite) == Recorded(("x",), {"notes": 3})


def test_the_verdict_is_kept_in_the_description_and_a_failure_is_refused() -> None:
    failed = Verification(FAILED, "t", 1.0, "m", (), {}, ("public.users: 2 rows restored, 3 recorded",))
    kept = Backup.from_dict(replace(BACKUP, verification=failed).to_dict())
    assert kept.verification == failed
    assert kept.refusal() == ("backup 20260101T000000000000Z failed its restore verification (t): "
                              "public.users: 2 rows restored, 3 recorded")
    assert replace(BACKUP, verification=replace(failed, state=VERIFIED)).refusal() is None
    assert replace(BACKUP, verification=replace(failed, state=INCONCLUSIVE)).refusal() is None
    assert Backup.from_dict({**BACKUP.to_dict(), "verification": None, "copies": None}).verification is None


# --------------------------------------------------------------------------- the scratch's lifecycle


def target_on(host: FakeHost, tmp_path: Path) -> Target:
    (tmp_path / "deploy.toml").write_text('[app]\nname = "demo"\n[environments.prod]\nhost = "local"\npath = "/srv/demo"\n'
                                          'database_url = "postgresql://app:pw@db:5432/appdb"\n')
    cfg = load_config(tmp_path / "deploy.toml")
    compose = Compose(program=V2, project="demo", project_dir="/srv/demo", files=("/srv/demo/docker-compose.yml",))
    return Target(config=cfg, env=cfg.environment("prod"), host=host, compose=compose)  # type: ignore[arg-type]


def scripted(*, restore_exit: int = 0, counts: str = '{"revision": ["abc"], "tables": {"public.users": 3, "public.recipes": 5}}',
             free: str = str(50 * 10**9)) -> FakeHost:
    def has(*words: str):  # noqa: ANN202
        return lambda argv: all(any(word in part for part in argv) for word in words)

    return FakeHost(rules=[
        (has("stat"), 0, "4\n"),
        (has("sha256sum"), 0, f"{SHA}  {BACKUP.path}\n"),
        (has("DockerRootDir"), 0, free + "\n"),
        (has("pg_restore"), restore_exit, ""),
        (has("psql"), 0, counts + "\n"),
    ])


def run_verification(host: FakeHost, tmp_path: Path, *, image: str = "sha256:img") -> Verification:
    target = target_on(host, tmp_path)
    return drive(host, verification.verify_steps(target, BACKUP, run_label="deployer.run=r2"), {},
                 answer=lambda action: image)


def removed(host: FakeHost) -> list[list[str]]:
    return [c for c in host.calls if c[:4] == ["docker", "rm", "--force", "--volumes"]]


def test_a_scratch_restore_is_isolated_limited_labelled_and_removed(tmp_path: Path) -> None:
    host = scripted()
    checked = run_verification(host, tmp_path)
    assert checked.state == VERIFIED, checked
    assert checked.tables == {"public.recipes": 5, "public.users": 3} and checked.revision == ("abc",)
    (started,) = [c for c in host.calls if c[:3] == ["docker", "run", "--detach"]]
    name = f"deployer-restore-check-demo-{BACKUP.id}"
    for flag, value in (("--name", name), ("--network", "none"), ("--cpus", "1"), ("--memory", "1g"),
                        ("--label", "deployer.run=r2"), ("--label", "deployer.scratch=/srv/demo.deployer")):
        assert value in started[started.index(flag):], (flag, started)
    assert "-v" not in started and "--volume" not in started and "--mount" not in started  # no volume of the app
    assert started[started.index("POSTGRES_USER=app") - 1:started.index("POSTGRES_USER=app") + 1] == ["-e", "POSTGRES_USER=app"]
    assert "POSTGRES_DB=appdb" in started and "sha256:img" in started and not any("pw" in part for part in started)
    # the leftovers of an earlier verification are swept first, its own container removed last
    sweep = host.index(lambda c: c[:2] == ["sh", "-c"] and "xargs -r docker rm -f -v" in c[2])
    assert sweep < host.calls.index(started) and host.calls[-1] == ["docker", "rm", "--force", "--volumes", name]


def test_a_dump_that_does_not_restore_fails_and_its_scratch_goes(tmp_path: Path) -> None:
    host = scripted(restore_exit=1)
    checked = run_verification(host, tmp_path)
    assert checked.state == FAILED and checked.problems[0].startswith("pg_restore failed (exit 1)"), checked
    assert len(removed(host)) == 1


def test_a_count_that_differs_fails(tmp_path: Path) -> None:
    checked = run_verification(scripted(counts='{"revision": ["abc"], "tables": {"public.users": 2, "public.recipes": 5}}'),
                               tmp_path)
    assert checked.state == FAILED and checked.problems == ("public.users: 2 rows restored, 3 recorded",)


def test_a_changed_file_fails_before_any_scratch(tmp_path: Path) -> None:
    host = scripted()
    host.rules.insert(0, (lambda argv: "sha256sum" in argv, 0, f"{'0' * 64}  x\n"))
    checked = run_verification(host, tmp_path)
    assert checked.state == FAILED and "corrupted" in checked.problems[0]
    assert not [c for c in host.calls if c[:2] == ["docker", "run"]] and not removed(host)


def test_too_little_disk_is_inconclusive_and_starts_nothing(tmp_path: Path) -> None:
    host = scripted(free=str(RESERVE))
    checked = run_verification(host, tmp_path)
    assert checked.state == INCONCLUSIVE and "must stay free" in checked.problems[0]
    assert not [c for c in host.calls if c[:2] == ["docker", "run"]]


def test_a_scratch_that_does_not_start_is_inconclusive_not_failed(tmp_path: Path) -> None:
    host = scripted()
    host.rules.insert(0, (lambda argv: argv[:3] == ["docker", "run", "--detach"], 125, ""))
    checked = run_verification(host, tmp_path)
    assert checked.state == INCONCLUSIVE and "did not start" in checked.problems[0]
    assert len(removed(host)) == 1


class Interrupting(FakeHost):
    """Ctrl-C arrives while the dump is being restored."""

    def run(self, argv: Sequence[str], **kwargs: object):  # noqa: ANN201
        result = super().run(argv, **kwargs)
        if any("pg_restore" in part for part in argv):
            raise interrupts.Interrupted(2)
        return result


def test_ctrl_c_during_the_restore_removes_the_scratch_then_goes_on(tmp_path: Path) -> None:
    host = Interrupting(rules=scripted().rules)
    with pytest.raises(interrupts.Interrupted):
        run_verification(host, tmp_path)
    assert removed(host) and host.calls[-1] == removed(host)[-1]


# --------------------------------------------------------------------------- the steps after `record`


def test_steps_after_record_never_undo_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []

    def body(name: str, fails: BaseException | None = None):  # noqa: ANN202
        def run(ctx: Context, step: Step):  # noqa: ANN202
            ran.append(name)
            ctx.note(backup="changed")  # the step log is gone: nothing may be written to it
            if fails is not None:
                raise fails
            yield from ()
            return f"{name} done"
        return StepKind(name=name, summary="", run=run, after_record=True)

    kinds = {"broken": body("broken", RuntimeError("the copy place is full")), "skipping": body("skipping", Skip("no backup")),
             "fine": body("fine"), "stopped": body("stopped", interrupts.Interrupted(15)), "never": body("never")}
    monkeypatch.setattr(engine, "step_kind", lambda name: kinds[name])
    host = FakeHost()
    from deployer.server.runlog import Goal, RunRecord, Source

    record = RunRecord(id="r2", kind="release", environment="prod", playbook="release", steps=(), holder="me", pid=1,
                       started_at="t", source=Source(), goal=Goal(commit="c", heads=(), release="r2"))
    ctx = Context(target=target_on(host, tmp_path), options=Options(), log=lambda _: None, record=record)
    timings: list = []
    stopped = engine.run_after_record(ctx, tuple(Step(n) for n in ("broken", "skipping", "fine", "stopped", "never")), timings)
    assert ran == ["broken", "skipping", "fine", "stopped"]  # a failure goes on; a signal stops them
    assert [(t.name, t.status) for t in timings] == [("broken", "failed"), ("skipping", "skipped"), ("fine", "ok"),
                                                     ("stopped", "interrupted")]
    assert "the copy place is full" in timings[0].detail and "the release stays" in timings[3].detail
    assert isinstance(stopped, interrupts.Interrupted) and stopped.signum == 15
    assert ctx.record is not None and ctx.record.backup is None and host.calls == []  # no step log written
    error = engine.after_record_interrupted(ctx, stopped)
    assert error.exit_code == 143 and "succeeded and was recorded" in error.message
