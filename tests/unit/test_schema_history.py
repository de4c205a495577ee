"""deployer.schema_history: the rows of `deployer migrations` from scripts, the database's
revisions and the journal (pure), on linear, branched and merged histories."""

from __future__ import annotations

from deployer.db.migrations import scripts_from_sources
from deployer.schema_history import MigrationsReport, appliers, render, rows
from deployer.server.journal import Record
from tests.unit.test_migrations import revision_source

BASE, USERS, NOTES, TAGS, MERGE, LATER = "a0base", "b1users", "c2notes", "d3tags", "e4merge", "f5later"
DROP_TAGS = "    op.drop_column('recipes', 'tags')\n"


def scripts(*revisions: tuple[str, str | tuple[str, ...] | None, str], drops: dict[str, str] | None = None):  # noqa: ANN201
    drops = drops or {}
    sources = {
        f"migrations/versions/{rev}_{message.replace(' ', '_')}.py": revision_source(
            rev, down, message, upgrade=drops.get(rev, "    pass\n"),
            downgrade="    raise NotImplementedError()\n" if rev == NOTES else "    pass\n",
        )
        for rev, down, message in revisions
    }
    return scripts_from_sources(sources, location="test")


def record(rid: str, before: tuple[str, ...], after: tuple[str, ...], *, kind: str = "release", outcome: str = "succeeded",
           backup: str | None = None) -> Record:
    return Record(
        id=rid, kind=kind, environment="production", outcome=outcome, commit="c" * 40, previous_commit=None,
        revision_before=before, revision_after=after, started_at=f"{rid}-start", finished_at=f"{rid}-end",
        seconds=1.0, user="ana@laptop", backup=backup,
    )


LINEAR = scripts((BASE, None, "create tables"), (USERS, BASE, "add users"), (NOTES, USERS, "add notes"))
# BASE -> USERS -> NOTES and USERS -> TAGS (a branch point at USERS), merged by MERGE.
BRANCHED = scripts(
    (BASE, None, "create tables"), (USERS, BASE, "add users"), (NOTES, USERS, "add notes"), (TAGS, USERS, "add tags"),
    (MERGE, (NOTES, TAGS), "merge heads"), drops={TAGS: DROP_TAGS},
)


def by_revision(found) -> dict:  # noqa: ANN001
    return {m.revision: m for m in found}


def test_linear_history_newest_first_with_the_releases_that_applied_each() -> None:
    journal = [
        record("r1", (), (USERS,)),  # the first release ran BASE and USERS (nothing to back up)
        record("r2", (USERS,), (NOTES,), backup="r2-backup"),
    ]
    found = rows(LINEAR, LINEAR, (NOTES,), journal, frozenset({"r2-backup"}))
    assert [(m.revision, m.state) for m in found] == [(NOTES, "current"), (USERS, "applied"), (BASE, "applied")]
    got = by_revision(found)
    assert (got[NOTES].applied_by, got[NOTES].applied_at, got[NOTES].backup, got[NOTES].backup_kept) == (
        "r2", "r2-end", "r2-backup", True)
    assert (got[USERS].applied_by, got[USERS].backup, got[BASE].applied_by) == ("r1", None, "r1")
    assert got[NOTES].marks == ("head",) and got[BASE].marks == ("base",) and got[USERS].down_revision == (BASE,)
    assert got[NOTES].has_downgrade is False and got[USERS].has_downgrade is True
    assert got[NOTES].known_to == ("running", "tip") and got[NOTES].create_date == "2024-01-01 00:00:00"


def test_a_rollback_takes_away_what_it_undid_and_a_failed_release_applied_nothing() -> None:
    journal = [
        record("r1", (), (NOTES,)),
        record("r2", (NOTES,), (USERS,), kind="rollback"),
        record("r3", (USERS,), (NOTES,), outcome="failed", backup="r3-backup"),
    ]
    found = by_revision(rows(LINEAR, LINEAR, (USERS,), journal, frozenset()))
    assert found[NOTES].state == "pending" and found[NOTES].applied_by is None
    assert found[USERS].state == "current" and found[USERS].applied_by == "r1"
    # released again later: the later release is the one that applied it
    again = appliers([*journal, record("r4", (USERS,), (NOTES,), backup="r4-backup")], dict(LINEAR.revisions))
    assert again[NOTES].id == "r4" and again[USERS].id == "r1"


def test_branched_and_merged_graph() -> None:
    # The database is on one branch (NOTES) while the code has the other branch and the merge.
    found = rows(BRANCHED, None, (NOTES,), [record("r1", (), (NOTES,), backup=None)])
    order = [m.revision for m in found]
    assert order[0] == MERGE and order[-1] == BASE
    assert order.index(NOTES) < order.index(USERS) and order.index(TAGS) < order.index(USERS)
    got = by_revision(found)
    assert {r: got[r].state for r in order} == {
        MERGE: "pending", TAGS: "pending", NOTES: "current", USERS: "applied", BASE: "applied"}
    assert got[MERGE].marks == ("head", "mergepoint") and got[MERGE].down_revision == (NOTES, TAGS)
    assert got[USERS].marks == ("branchpoint",)
    assert got[TAGS].upgrade_drops == ("drop column recipes.tags",)
    assert got[TAGS].backup_kept is None  # the host's backups were not listed


def test_two_current_heads() -> None:
    heads = scripts((BASE, None, "create tables"), (NOTES, BASE, "add notes"), (TAGS, BASE, "add tags"))
    got = by_revision(rows(heads, heads, (NOTES, TAGS), []))
    assert got[NOTES].state == got[TAGS].state == "current" and got[BASE].state == "applied"
    assert got[BASE].marks == ("branchpoint", "base")


def test_tip_only_revisions_are_pending_and_say_so() -> None:
    tip = scripts((BASE, None, "create tables"), (USERS, BASE, "add users"), (NOTES, USERS, "add notes"),
                  (LATER, NOTES, "drop tags"), drops={LATER: DROP_TAGS})
    found = rows(LINEAR, tip, (NOTES,), [])
    first = found[0]
    assert (first.revision, first.state, first.known_to, first.upgrade_drops) == (
        LATER, "pending", ("tip",), ("drop column recipes.tags",))
    assert by_revision(found)[NOTES].marks == ("head of the running code",)  # the tip's LATER revises it
    text = render(MigrationsReport("production", "bench", "a" * 40, "b" * 40, (NOTES,), None, found, 0.1))
    assert f"pending      {LATER}" in text and "[branch tip only]" in text and "its upgrade drops: drop column recipes.tags" in text


def test_a_revision_the_code_does_not_know_is_unknown_and_the_rest_undetermined() -> None:
    found = rows(LINEAR, LINEAR, ("9999deadbeef",), [record("r1", (), ("9999deadbeef",))])
    assert (found[0].revision, found[0].state, found[0].known_to, found[0].applied_by) == ("9999deadbeef", "unknown", (), "r1")
    assert {m.state for m in found[1:]} == {"undetermined"}
    text = render(MigrationsReport("production", "bench", "a" * 40, "a" * 40, ("9999deadbeef",), None, found, 0.1))
    assert "unknown      9999deadbeef  not in the running code or the branch tip" in text


def test_an_unreadable_database_leaves_every_state_undetermined() -> None:
    found = rows(LINEAR, LINEAR, None, [])
    assert {m.state for m in found} == {"undetermined"}
    report = MigrationsReport("production", "bench", None, None, None, "the db container is exited", found, 0.1)
    assert render(report).startswith("production on bench: database not read: the db container is exited; nothing deployed")


def test_all_adds_the_revisions_only_the_journal_names() -> None:
    journal = [record("r1", (), (NOTES,)), record("r2", (NOTES,), ("0ldgone",)), record("r3", ("0ldgone",), (NOTES,), kind="rollback")]
    assert "0ldgone" not in by_revision(rows(LINEAR, LINEAR, (NOTES,), journal))
    gone = by_revision(rows(LINEAR, LINEAR, (NOTES,), journal, everything=True))["0ldgone"]
    assert gone.state == "unknown" and gone.applied_by is None  # the rollback took it away


def test_verbose_text_shows_path_parent_and_date() -> None:
    found = rows(LINEAR, LINEAR, (NOTES,), [record("r1", (), (NOTES,))], frozenset())
    text = render(MigrationsReport("production", "bench", "a" * 40, "a" * 40, (NOTES,), None, found, 0.1), verbose=True)
    assert f"path migrations/versions/{NOTES}_add_notes.py; parent {USERS}; created 2024-01-01 00:00:00" in text
    assert "parent <base>" in text
    assert "no working downgrade: a rollback past it needs --restore-backup" in text
