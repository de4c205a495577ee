"""The pure half of ``deployer status``: verdicts, exit codes, argv and rendering."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from deployer.db.migrations import scripts_from_sources
from deployer.errors import ExitCode
from deployer.server.journal import Record
from deployer.status import (
    BackupSummary,
    CodeState,
    History,
    LockState,
    Migration,
    ReleaseSummary,
    Service,
    Status,
    StatusCode,
    assess,
    code_problems,
    exit_code_for,
    render_history,
    render_status,
    service_problems,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def script(rev: str, down: str | tuple[str, ...] | None, message: str) -> tuple[str, str]:
    down_src = repr(down)
    return (
        f"migrations/versions/{rev}_x.py",
        f'"""{message}\n\nRevision ID: {rev}\n"""\nrevision = "{rev}"\ndown_revision = {down_src}\n'
        "branch_labels = None\ndepends_on = None\n\ndef upgrade():\n    pass\n\ndef downgrade():\n    pass\n",
    )


def scripts(*items: tuple[str, str | tuple[str, ...] | None, str]):
    return scripts_from_sources(dict(script(*item) for item in items), location="migrations")


OLD = scripts(("aaa", None, "create users"), ("bbb", "aaa", "add recipes"))
NEW = scripts(("aaa", None, "create users"), ("bbb", "aaa", "add recipes"), ("ccc", "bbb", "add ratings"))
SPLIT = scripts(("aaa", None, "create users"), ("bbb", "aaa", "add recipes"), ("ccc", "bbb", "left"), ("ddd", "bbb", "right"))


def test_up_to_date() -> None:
    state = assess(("bbb",), OLD, OLD)
    assert state.verdict == "up to date" and state.pending == () and exit_code_for(state, []) == 0


def test_pending_lists_messages_in_order() -> None:
    state = assess(("aaa",), NEW, NEW)
    assert state.verdict == "pending"
    assert state.pending == (Migration("bbb", "add recipes"), Migration("ccc", "add ratings"))
    assert exit_code_for(state, []) == StatusCode.PENDING == 10


def test_database_ahead_of_deployed_code_when_the_tip_knows_the_revision() -> None:
    state = assess(("ccc",), OLD, NEW)
    assert state.verdict == "ahead" and state.ahead == (Migration("ccc", "add ratings"),)
    assert "old code runs on a newer schema" in state.summary
    assert exit_code_for(state, []) == 11


def test_unknown_revision_when_no_script_knows_it() -> None:
    state = assess(("zzz",), OLD, NEW)
    assert state.verdict == "unknown revision" and state.unknown == ("zzz",)
    assert exit_code_for(state, []) == 12


def test_multiple_heads_on_the_tip_blocks_an_otherwise_fine_database() -> None:
    state = assess(("bbb",), OLD, SPLIT)
    assert state.verdict == "multiple heads" and state.tip_heads == ("ccc", "ddd")
    assert exit_code_for(state, []) == 13


def test_multiple_heads_in_the_deployed_code() -> None:
    state = assess(("ccc",), SPLIT, SPLIT)
    assert state.verdict == "multiple heads" and exit_code_for(state, []) == 13


def test_not_initialised_and_not_deployed() -> None:
    state = assess((), OLD, OLD)
    assert state.verdict == "not initialised" and [m.revision for m in state.pending] == ["aaa", "bbb"]
    assert exit_code_for(state, []) == 14
    nothing = assess(None, None, OLD, error="the db container is missing")
    assert nothing.verdict == "not deployed" and exit_code_for(nothing, []) == 14


def test_unreachable_database_is_exit_3() -> None:
    state = assess(None, OLD, OLD, error="connection refused")
    assert state.verdict == "database unreachable" and not state.reachable and "connection refused" in state.summary
    assert exit_code_for(state, []) == ExitCode.UNREACHABLE == 3


def test_tip_pending_is_what_the_next_release_runs() -> None:
    state = assess(("bbb",), OLD, NEW)
    assert state.verdict == "up to date" and state.tip_pending == (Migration("ccc", "add ratings"),)


def test_drift_only_when_the_schema_is_fine() -> None:
    fine = assess(("bbb",), OLD, OLD)
    assert exit_code_for(fine, ["service web is not healthy (exited)"]) == 15
    pending = assess(("aaa",), OLD, OLD)
    assert exit_code_for(pending, ["anything"]) == 10


def test_codes_do_not_clash_with_exit_codes() -> None:
    taken = {int(c) for c in ExitCode} - {0, 3}
    assert not taken & {int(c) for c in StatusCode}


def code(deployed: str | None, tip: str | None, ahead: int | None = 0, behind: int | None = 0) -> CodeState:
    return CodeState("main", deployed, "subject", tip, "tip subject", ahead, behind)


def test_code_problems() -> None:
    a, b = "a" * 40, "b" * 40
    assert code_problems(code(a, a)) == []
    assert code_problems(code(a, b, 0, 2)) == [f"the deployed commit {a[:12]} is 2 commit(s) behind main"]
    assert "ahead of main" in code_problems(code(a, b, 1, 0))[0]
    assert "diverged" in code_problems(code(a, b, 1, 1))[0]
    assert "not the tip" in code_problems(code(a, b, None, None))[0]
    assert code_problems(code(None, b)) == []


def svc(name: str, state: str = "running", health: str = "healthy") -> Service:
    return Service(name, f"app-{name}-1", state, health, f"{name}:latest", "2024-05-01T11:00:00.123456789Z", 0,
                   state == "running" and health in ("", "healthy"))


def test_service_problems() -> None:
    assert service_problems([svc("web"), svc("db")], ["db", "web"]) == []
    problems = service_problems([svc("db", "exited", "")], ["db", "web"])
    assert problems == ["service web has no container", "service db is not healthy (exited)"]
    assert service_problems([svc("web", health="starting")], ["web"]) == ["service web is not healthy (running, starting)"]
    # Docker has not run the first healthcheck yet (a release just ended): not a problem
    pending = replace(svc("web", health="starting"), health_pending=True)
    assert service_problems([pending, svc("db")], ["db", "web"]) == []


def test_a_healthcheck_docker_has_not_judged_yet_is_pending_not_unhealthy() -> None:
    from deployer.commands.docker import parse_rows
    from deployer.status import _service

    row = {"Id": "x", "Name": "/app-web-1", "State": {"Status": "running", "Health": {"Status": "starting", "Log": []}},
           "Config": {"Labels": {"com.docker.compose.service": "web"}}}
    due = _service(parse_rows([row])[0])
    assert due.health_pending is True and due.health_checks == 0
    # It ran and failed, fewer times than its retries: Docker still says starting; so do we.
    row["State"]["Health"]["Log"] = [{"ExitCode": 1}]
    starting = _service(parse_rows([row])[0])
    assert starting.health_pending is True and starting.health_checks == 1
    assert service_problems([starting], ["web"]) == []
    row["State"]["Health"]["Status"] = "unhealthy"
    unhealthy = _service(parse_rows([row])[0])
    assert unhealthy.health_pending is False and service_problems([unhealthy], ["web"]) == [
        "service web is not healthy (running, unhealthy)"]


def test_containers_argv_passes_the_project_as_an_argument() -> None:
    from deployer.commands.docker import project_argv

    argv = project_argv("my-app; rm -rf /")
    assert argv[:2] == ["sh", "-c"] and argv[-1] == "my-app; rm -rf /"
    assert "my-app" not in argv[2]


def report(exit_code: int = 0, **changes) -> Status:  # noqa: ANN003
    values = dict(
        environment="production", host="deploy@example.com", path="/srv/app", checked_at=NOW.isoformat(), seconds=0.42,
        code=code("a" * 40, "a" * 40), database=assess(("bbb",), OLD, OLD), services=(svc("db"), svc("web")),
        lock=LockState(held=False), last_release=ReleaseSummary("20240501-115000-aaaaaaa", "release", "succeeded", "a" * 40,
                                                                 "2024-05-01T11:50:00+00:00", "ana@laptop"),
        last_backup=BackupSummary("20240501T114900Z", "2024-05-01T11:49:00+00:00", 1234, ("aaa",), None, "/srv/backups/x.dump"),
        problems=(), exit_code=exit_code,
    )
    values.update(changes)
    return Status(**values)


def test_json_document_has_stable_fields() -> None:
    doc = json.loads(json.dumps(report().to_dict()))
    assert set(doc) == {
        "schema", "environment", "host", "path", "checked_at", "seconds", "code", "database", "services", "lock",
        "last_release", "last_backup", "problems", "exit_code", "in_sync", "verdict", "interrupted", "running", "proxy",
        "swarm", "nodes",
    }
    assert doc["verdict"] == "up to date" and doc["in_sync"] is True and doc["schema"] == 1
    assert set(doc["code"]) == {"branch", "deployed", "deployed_subject", "tip", "tip_subject", "ahead", "behind", "error"}
    assert set(doc["database"]) >= {"reachable", "revisions", "deployed_heads", "tip_heads", "verdict", "summary",
                                    "pending", "ahead", "unknown", "tip_pending", "error"}
    assert set(doc["services"][0]) == {"service", "container", "state", "health", "image", "started_at", "restart_count", "healthy", "health_pending", "health_checks"}
    assert doc["database"]["revisions"] == ["bbb"]


def test_render_in_sync() -> None:
    text = render_status(report(), now=NOW)
    assert "= tip of main" in text and "verdict    up to date" in text
    assert "ok db" in text and "since 59m 59s" in text  # docker's nanosecond timestamps are read
    assert "lock       free" in text and "10m 00s ago by ana@laptop" in text
    assert text.endswith("=> in sync (exit 0)")


def test_render_pending_lists_each_migration() -> None:
    text = render_status(report(10, database=assess(("aaa",), NEW, NEW)), now=NOW)
    assert "verdict    2 pending" in text
    assert "to run  bbb  add recipes" in text and "to run  ccc  add ratings" in text
    assert text.endswith("NOT in sync (exit 10)")


def test_render_lock_and_problems() -> None:
    held = LockState(True, "bo@ci", "release production", "2024-05-01T11:58:00+00:00")
    text = render_status(report(15, lock=held, problems=("service web has no container",), services=(svc("db"),)), now=NOW)
    assert "held by bo@ci for 'release production'" in text and "(2m 00s ago)" in text
    assert "problem    service web has no container" in text


def test_render_history() -> None:
    entry = Record(
        id="20240501-115000-aaaaaaa", kind="release", environment="production", outcome="failed", commit="a" * 40,
        previous_commit=None, revision_before=("aaa",), revision_after=("aaa",), started_at="2024-05-01T11:49:00+00:00",
        finished_at="2024-05-01T11:50:00+00:00", seconds=61.0, user="ana@laptop", error="the migration exited 1\nmore",
    )
    text = render_history(History("production", "deploy@example.com", 3, (entry,)))
    assert "1 of 3 record(s), newest first" in text and "aaa -> aaa" in text and "61.0s" in text
    assert "error: the migration exited 1" in text and "more" not in text
    assert render_history(History("production", "h", 0)) == "production on h: no release recorded"


@pytest.mark.parametrize("verdict", ["up to date", "pending", "ahead", "unknown revision", "multiple heads", "not initialised"])
def test_every_verdict_has_a_code(verdict: str) -> None:
    from deployer.status import _VERDICT_CODES

    assert verdict in _VERDICT_CODES


def test_the_verdict_is_said_once() -> None:
    cases = {
        "up to date at bbb": assess(("bbb",), OLD, OLD),
        "2 pending: aaa -> ccc": assess(("aaa",), NEW, NEW),
        "not initialised": assess((), OLD, OLD),
        "not deployed: nothing deployed yet": assess(None, None, OLD),
        "database unreachable: cannot read the database: refused": assess(None, OLD, OLD, error="refused"),
    }
    for start, state in cases.items():
        line = next(line for line in render_status(report(database=state), now=NOW).splitlines() if "verdict" in line)
        assert line.startswith(f"  verdict    {start}"), line
        words = state.verdict if state.verdict != "pending" else "pending"
        assert line.lower().count(words) == 1, line  # never "up to date: up to date at bbb"


def test_verdicts_have_a_tone() -> None:
    from deployer.status import verdict_tone

    assert verdict_tone("up to date") == "good"
    assert {verdict_tone(v) for v in ("pending", "not initialised", "not deployed")} == {"warn"}
    assert {verdict_tone(v) for v in ("ahead", "unknown revision", "multiple heads", "database unreachable")} == {"bad"}
