"""The deploy lock and the release journal, on a real filesystem through LocalHost."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from deployer.server import journal
from deployer.server import lock
from deployer.errors import ExitCode, LockHeldError
from deployer.hosts import LocalHost


@pytest.fixture()
def host() -> LocalHost:
    return LocalHost()


def test_lock_is_exclusive_and_names_its_holder(host: LocalHost, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    first = lock.new_info("release production")
    lock.acquire(host, state, first, env_name="production")
    held = lock.read_lock(host, state)
    assert held == first
    with pytest.raises(LockHeldError) as caught:
        lock.acquire(host, state, lock.new_info("release production"), env_name="production")
    message = str(caught.value)
    assert first.holder in message and "release production" in message and first.acquired_at in message
    assert "deployer lock release production" in message
    assert caught.value.exit_code == ExitCode.LOCKED
    assert lock.release(host, state) is True
    assert lock.read_lock(host, state) is None
    assert lock.release(host, state) is False


def test_lock_released_on_every_path(host: LocalHost, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    with pytest.raises(KeyboardInterrupt):
        with lock.held(host, state, "release x", env_name="x"):
            assert lock.read_lock(host, state) is not None
            raise KeyboardInterrupt
    assert lock.read_lock(host, state) is None
    with pytest.raises(RuntimeError):
        with lock.held(host, state, "release x", env_name="x"):
            raise RuntimeError("boom")
    assert lock.read_lock(host, state) is None


def test_half_made_lock_is_reported_not_crashed(host: LocalHost, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "lock").mkdir(parents=True)
    (state / "lock" / "info.json").write_text("{not json")
    info = lock.read_lock(host, str(state))
    assert info is not None and "unreadable" in info.holder


def test_age_formatting() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
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
