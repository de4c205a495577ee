"""Which step runs where across hosts (deployer.steps.fleet.schedule): pure."""

from __future__ import annotations

import pytest

from deployer.steps.fleet import EACH, PRIMARY, ROLLING, Phase, Scope, batches, schedule
from deployer.steps.playbook import Step

RELEASE: list[tuple[str, Scope]] = [
    ("preflight", EACH), ("lock", EACH), ("sync", EACH), ("build", EACH), ("backup", PRIMARY),
    ("migrate", PRIMARY), ("swap", ROLLING), ("verify", PRIMARY), ("health", ROLLING), ("record", EACH),
]


def plan(host_count: int, **rollout: float) -> list[tuple[list[str], tuple[int, ...], float, int]]:
    steps = [Step(name) for name, _ in RELEASE]
    phases = schedule(steps, [scope for _, scope in RELEASE], host_count, **rollout)  # type: ignore[arg-type]
    return [([s.name for s in p.steps], p.hosts, p.pause, p.batch) for p in phases]


def test_three_hosts_one_at_a_time_the_primary_first() -> None:
    assert plan(3, pause=5) == [
        (["preflight"], (0, 1, 2), 0.0, 0), (["lock"], (0, 1, 2), 0.0, 0), (["sync"], (0, 1, 2), 0.0, 0),
        (["build"], (0, 1, 2), 0.0, 0), (["backup"], (0,), 0.0, 0), (["migrate"], (0,), 0.0, 0),
        # the switch rolls: the primary's batch also verifies the revision, once
        (["swap", "verify", "health"], (0,), 0.0, 1),
        (["swap", "health"], (1,), 5.0, 2),
        (["swap", "health"], (2,), 5.0, 3),
        (["record"], (0, 1, 2), 0.0, 0),
    ]


def test_batches_of_two() -> None:
    assert [(p[1], p[3]) for p in plan(5, batch=2) if p[3]] == [((0, 1), 1), ((2, 3), 2), ((4,), 3)]
    assert batches(5, 2) == [(0, 1), (2, 3), (4,)] and batches(1, 3) == [(0,)]


def test_one_host_is_the_playbook_as_written() -> None:
    flat = [name for names, hosts, _, _ in plan(1) for name in names]
    assert flat == [name for name, _ in RELEASE]
    assert all(hosts == (0,) for _, hosts, _, _ in plan(1))


def test_no_rolling_step_every_step_in_lockstep() -> None:
    steps = [Step("preflight"), Step("backup"), Step("record")]
    phases = schedule(steps, [EACH, PRIMARY, EACH], 2)
    assert phases == [Phase((steps[0],), (0, 1)), Phase((steps[1],), (0,)), Phase((steps[2],), (0, 1))]


def test_a_step_on_every_host_inside_the_rollout_is_refused() -> None:
    steps = [Step("swap"), Step("run", {"name": "warm caches", "command": "true"}), Step("health")]
    with pytest.raises(ValueError, match="warm caches cannot run between the switch's steps"):
        schedule(steps, [ROLLING, EACH, ROLLING], 2)


def test_described() -> None:
    phase = plan(3, pause=5)
    steps = [Step(name) for name, _ in RELEASE]
    described = schedule(steps, [s for _, s in RELEASE], 3, pause=5)[7].describe(["a", "b", "c"])
    assert described == "batch 2: swap, health on b (after 5s)" and phase[7][1] == (1,)


@pytest.mark.parametrize("name", ["release", "classic"])
def test_the_built_in_playbooks_migrate_once_and_switch_in_batches(name: str) -> None:
    from pathlib import Path

    from deployer.steps import kind
    from deployer.steps.playbook import load_playbook

    book = load_playbook(name, Path("/nonexistent"))
    phases = schedule(book.steps, [kind(step.name).scope for step in book.steps], 3)
    ran = {(step.name, host) for phase in phases for step in phase.steps for host in phase.hosts}
    for once in ("backup", "migrate", "verify", "verify_backup", "copy_backup"):
        assert {host for step, host in ran if step == once} == {0}, once
    assert {host for step, host in ran if step == "health"} == {0, 1, 2}
    assert [p.hosts for p in phases if p.batch] == [(0,), (1,), (2,)]
    assert all(phase.hosts == (0, 1, 2) for phase in phases if phase.steps[0].name in ("preflight", "lock", "build"))


def test_a_rollback_downgrades_once_switches_every_host_and_swaps_in_batches() -> None:
    from deployer.fleet import _where
    from deployer.steps import kind
    from deployer.steps import rollback as rollbacks

    book = rollbacks.playbook()
    phases = schedule(book.steps, [kind(step.name).scope for step in book.steps], 3, batch=2)
    ran = {(step.name, host) for phase in phases for step in phase.steps for host in _where(step, phase)}
    for once in ("backup", "schema", "verify", "verify_backup", "copy_backup"):
        assert {host for step, host in ran if step == once} == {0}, once
    for everywhere in ("rollback_preflight", "lock", "switch", "swap", "health", "record"):
        assert {host for step, host in ran if step == everywhere} == {0, 1, 2}, everywhere
    assert [p.hosts for p in phases if p.batch] == [(0, 1), (2,)]
    order = [step.name for phase in phases for step in phase.steps]
    assert order.index("schema") < order.index("switch") < order.index("swap")
