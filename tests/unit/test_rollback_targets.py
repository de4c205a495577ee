"""Choosing a rollback target from the journal: pure, table-driven."""

from __future__ import annotations

import pytest

from deployer.server import journal
from deployer.server.backups import Backup
from deployer.steps.rollback import TargetError, replacing_backup, resolve_target


def rec(id_: str, rev: str, *, kind: str = "release", outcome: str = journal.SUCCEEDED, backup: str | None = None,
        target: str | None = None) -> journal.Record:
    return journal.Record(
        id=id_, kind=kind, environment="p", outcome=outcome, commit=id_ * 8, previous_commit=None,
        revision_before=(), revision_after=(rev,) if rev else (), started_at="", finished_at="", seconds=0.0,
        user="u", backup=backup, target_release=target,
    )


R1, R2, R3 = rec("r1", "aaa111"), rec("r2", "abc222", backup="b2"), rec("r3", "abd333", backup="b3")
FAILED = rec("r4", "eee444", outcome=journal.FAILED)
HISTORY = [R1, R2, R3, FAILED]


@pytest.mark.parametrize(
    ("records", "target", "expected"),
    [
        (HISTORY, "previous", "r2"),
        (HISTORY, "r1", "r1"),
        (HISTORY, "aaa", "r1"),
        (HISTORY, "abc222", "r2"),
        # after rolling back to r2, "previous" is r1 and r3 is newer
        ([*HISTORY, rec("rb1", "abc222", kind="rollback", target="r2")], "previous", "r1"),
    ],
)
def test_resolve(records: list, target: str, expected: str) -> None:
    assert resolve_target(records, target).id == expected


@pytest.mark.parametrize(
    ("records", "target", "message"),
    [
        ([], "previous", "no successful release is recorded"),
        ([R1], "previous", "is the first one recorded"),
        (HISTORY, "ab", "ambiguous"),
        (HISTORY, "zzz", "neither a release id nor the head revision"),
        (HISTORY, "abd", "revision of the running release"),
        (HISTORY, "r3", "is the running release"),
        (HISTORY, "eee444", "neither a release id"),  # a failed release is no target
        ([*HISTORY, rec("rb1", "abc222", kind="rollback", target="r2")], "r3", "newer than the running release"),
        ([*HISTORY, rec("rb1", "abc222", kind="rollback", target="r2")], "abd", "newer than the running one"),
    ],
)
def test_refusals(records: list, target: str, message: str) -> None:
    with pytest.raises(TargetError) as caught:
        resolve_target(records, target)
    assert message in str(caught.value)
    assert caught.value.exit_code == 6


def test_unknown_target_lists_candidates() -> None:
    with pytest.raises(TargetError) as caught:
        resolve_target(HISTORY, "nope")
    assert "r2" in str(caught.value) and "r1" in str(caught.value)


def _backup(id_: str, rev: str) -> Backup:
    return Backup(id=id_, environment="p", release=None, revision=(rev,), size=1, sha256="0" * 64, created_at="", path=f"/b/{id_}.dump")


def test_replacing_backup_is_the_dump_taken_before_the_next_release_migrated() -> None:
    available = [_backup("b2", "aaa111"), _backup("b3", "abc222")]
    assert replacing_backup(HISTORY, R2, available).id == "b3"
    assert replacing_backup(HISTORY, R1, available).id == "b2"
    assert replacing_backup(HISTORY, R3, available) is None
    # a pruned or mismatching backup is not offered
    assert replacing_backup(HISTORY, R2, [_backup("b3", "zzz")]) is None
