"""The deploy lock and the release journal, on a real filesystem through LocalHost."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deployer.errors import ExitCode, LockHeldError
from deployer.hosts import LocalHost
from deployer.server import journal, lock


@pytest.fixture()
def host() -> LocalHost:
    return LocalHost()


def test_lock_is_exclusive_and_names_its_holder(host: LocalHost, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    first = lock.new_info("release production")
    lease = lock.acquire(host, state, first, env_name="production")
    held = lock.read_lock(host, state)
    assert held.held and held.info == first
    with pytest.raises(LockHeldError) as caught:
        lock.acquire(host, state, lock.new_info("release production"), env_name="production")
    message = str(caught.value)
    assert first.holder in message and "release production" in message and first.acquired_at in message
    assert "deployer lock status production" in message  # the lease frees itself: nothing to break by hand
    assert caught.value.exit_code == ExitCode.LOCKED
    lease.release()
    assert lock.read_lock(host, state) == lock.LockState(held=False)
    lease.release()  # idempotent


def test_lock_released_on_every_path(host: LocalHost, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    with pytest.raises(KeyboardInterrupt):
        with lock.held(host, state, "release x", env_name="x"):
            assert lock.read_lock(host, state).held
            raise KeyboardInterrupt
    assert not lock.read_lock(host, state).held and not lock.read_lock(host, state).stale
    with pytest.raises(RuntimeError):
        with lock.held(host, state, "release x", env_name="x"):
            raise RuntimeError("boom")
    assert not lock.read_lock(host, state).held


OWNER = """
import sys, time
from deployer.hosts import LocalHost
from deployer.server import lock
lock.acquire(LocalHost(), sys.argv[1], lock.new_info("release doomed"), env_name="p")
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_busy_for_a_moment_without_a_holder_is_taken_after_all(host: LocalHost, tmp_path: Path) -> None:
    # Someone checks the lock with `flock -n` (as a monitoring script, or a test, might) just
    # as a release takes it: the release waits out the check instead of failing.
    import subprocess

    state = str(tmp_path / "state")
    lock.acquire(host, state, lock.new_info("release first"), env_name="p").release()

    def check(seconds: float) -> subprocess.Popen[str]:
        """``flock -n`` on the lock for ``seconds``, returned once it holds it (a loaded machine
        may start it late: the release must ask while it holds)."""
        checker = subprocess.Popen(["flock", "-n", str(tmp_path / "state" / "lock"), "sh", "-c",
                                    f"echo held; sleep {seconds}"], stdout=subprocess.PIPE, text=True)
        assert checker.stdout is not None and checker.stdout.readline().strip() == "held"
        return checker

    checker = check(0.5)
    try:
        lease = lock.acquire(host, state, lock.new_info("release second"), env_name="p")
    finally:
        checker.wait(10)
    assert checker.returncode == 0  # the checker did hold it while the release asked
    assert lock.read_lock(host, state).info.command == "release second"
    lease.release()
    # A check that outlasts every retry is still reported, naming no holder.
    checker = check(5)
    try:
        with pytest.raises(LockHeldError, match="busy, but no deployer holds it .*: try again"):
            lock.acquire(host, state, lock.new_info("release third"), env_name="p")
    finally:
        checker.kill()
        checker.wait(10)


def test_an_owner_killed_while_its_holder_starts_still_gets_its_end_noted(tmp_path: Path) -> None:
    # The owner sent the holder record, then died before reading the holder's LOCKED line:
    # the holder's stdout is a closed pipe. It must neither die of SIGPIPE there (a record
    # with no end noted) nor keep the lock: it notes the end, as for any owner that went.
    import subprocess

    state = str(tmp_path / "state")
    holder = subprocess.Popen(lock.lease_argv(state, ttl=5), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdout.close()  # the owner's end of the pipe, gone
    holder.stdin.write(b'{"holder": "killed@test", "command": "release"}\n')
    holder.stdin.close()  # and its end of stdin: the owner is dead
    assert holder.wait(15) == 0
    assert (tmp_path / "state" / "lock.json").exists()
    assert (tmp_path / "state" / "lock.gone").exists()  # the end noted: `lock status` says stale


def test_a_dead_owner_leaves_no_lock_only_a_record_the_next_command_takes_over(host: LocalHost, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    state = str(tmp_path / "state")
    owner = subprocess.Popen([sys.executable, "-c", OWNER, state], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None and owner.stdout.readline().strip() == "held"
    assert lock.read_lock(host, state).held
    owner.send_signal(signal.SIGKILL)  # no handler, no cleanup: only the kernel and the holder's EOF
    owner.wait()
    deadline = time.monotonic() + 10
    while lock.read_lock(host, state).held and time.monotonic() < deadline:
        time.sleep(0.05)
    stale = lock.read_lock(host, state)
    assert not stale.held and stale.stale and stale.info is not None and stale.info.command == "release doomed"
    assert stale.gone_since and "stale: its owner" in stale.describe()
    lease = lock.acquire(host, state, lock.new_info("release next"), env_name="p")
    assert lease.previous.info is not None and lease.previous.info.command == "release doomed"
    lease.release()
    assert lock.read_lock(host, state) == lock.LockState(held=False)


def test_taking_the_lock_is_all_or_nothing(host: LocalHost, tmp_path: Path) -> None:
    from deployer.errors import DeployerError

    state = tmp_path / "state"
    state.mkdir()
    (state / "lock.json").mkdir()  # the holder record cannot be written
    with pytest.raises(DeployerError, match="not writable"):
        lock.acquire(host, str(state), lock.new_info("release p"), env_name="p")
    (state / "lock.json").rmdir()
    assert not lock.read_lock(host, str(state)).held  # the flock went with the holder that failed
    lock.acquire(host, str(state), lock.new_info("release p"), env_name="p").release()


def test_an_unreadable_record_is_reported_not_crashed(host: LocalHost, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "lock").write_text("")
    (state / "lock.json").write_text("{not json")
    info = lock.read_lock(host, str(state))
    assert info.stale and info.info is not None and "unreadable" in info.info.holder


def test_age_formatting() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    info = lock.LockInfo("a@b", "release p", 1, (now - timedelta(minutes=3, seconds=12)).isoformat())
    assert info.age_seconds(now) == 192
    assert "3m 12s ago" in info.describe(now)
    assert lock.format_age(5) == "5s" and lock.format_age(3 * 3600 + 60) == "3h 01m" and lock.format_age(90000) == "1d 1h"


def _record(i: int, outcome: str = journal.SUCCEEDED) -> journal.Record:
    return journal.Record(
        id=f"r{i}", kind="release", environment="p", outcome=outcome, commit=f"{i:040x}", previous_commit=None,
        revision_before=("a",), revision_after=("b",), started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:01:00+00:00", seconds=60.0, user="u@h",
        steps=(journal.StepTiming("build", "ok", 1.5, "built"),),
    )


def test_journal_roundtrip_and_last_succeeded(host: LocalHost, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    assert journal.read(host, state) == []
    journal.append(host, state, _record(1))
    journal.append(host, state, _record(2, journal.FAILED))
    records = journal.read(host, state)
    assert [r.id for r in records] == ["r1", "r2"]
    assert records[0] == _record(1)
    assert journal.last_succeeded(records).id == "r1"
    assert os.stat(journal.journal_path(state)).st_mode & 0o777 == 0o600
    lines = Path(journal.journal_path(state)).read_text().splitlines()
    assert json.loads(lines[1])["outcome"] == "failed"


def test_journal_skips_garbage_lines() -> None:
    text = _record(1).to_json() + "\nnot json\n{\"id\": 1}\n\n" + _record(2).to_json() + "\n"
    assert [r.id for r in journal.parse(text)] == ["r1", "r2"]
