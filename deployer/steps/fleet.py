"""How a playbook runs across an environment's hosts: which step runs where, in what order.

Every step kind has a scope (:attr:`StepKind.scope`):

* ``each`` — on every host, side by side (the lock, preflight's reads, sync, build, the
  journal): a host is ready when all are;
* ``primary`` — once, on the primary host (the database's steps: backup, lint, migrate,
  verify, contract): a migration runs exactly once;
* ``rolling`` — host by host in batches (the switch and its health check): a batch switches
  only once the one before it is healthy, with the rollout's pause in between.

A run of consecutive steps that holds a rolling step is the *rollout*: it runs whole on
each batch in turn, the primary's batch first; a primary step inside it (``verify``, after
the switch) runs in the primary's batch only. :func:`schedule` is pure: the dry run lists
the phases it returns and the run performs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deployer.steps import EACH, PRIMARY, ROLLING, Scope
from deployer.steps.playbook import Step

__all__ = ["EACH", "PRIMARY", "ROLLING", "Phase", "Scope", "batches", "schedule"]


@dataclass(frozen=True)
class Phase:
    """Steps run in order, each on ``hosts`` (indexes into the hosts, the primary is 0) side
    by side; ``pause`` seconds are waited before the phase starts."""

    steps: tuple[Step, ...]
    hosts: tuple[int, ...]
    pause: float = 0.0
    batch: int = 0  # the rollout's batch number (1, 2, …); 0 outside the rollout

    def describe(self, names: Sequence[str]) -> str:
        where = ", ".join(names[i] for i in self.hosts)
        steps = ", ".join(step.label for step in self.steps)
        batch = f"batch {self.batch}: " if self.batch else ""
        wait = f" (after {self.pause:g}s)" if self.pause else ""
        return f"{batch}{steps} on {where}{wait}"


def batches(host_count: int, size: int) -> list[tuple[int, ...]]:
    """The hosts in batches of ``size``, the primary (0) in the first."""
    if host_count < 1 or size < 1:
        raise ValueError("a rollout needs at least one host and a batch of at least one")
    return [tuple(range(start, min(start + size, host_count))) for start in range(0, host_count, size)]


def schedule(steps: Sequence[Step], scopes: Sequence[Scope], host_count: int, *, batch: int = 1,
             pause: float = 0.0) -> list[Phase]:
    """The phases that run ``steps`` (``scopes[i]`` is the scope of ``steps[i]``) on
    ``host_count`` hosts, rolling ``batch`` hosts at a time with ``pause`` seconds between."""
    if len(steps) != len(scopes):
        raise ValueError("one scope per step")
    rolling = [i for i, scope in enumerate(scopes) if scope == ROLLING]
    phases: list[Phase] = []
    everyone = tuple(range(host_count))

    def plain(index: int) -> None:
        # Lockstep: every host finishes a step before any starts the next (preflight's
        # refusal on one host, before anything changed on another).
        phases.append(Phase((steps[index],), (0,) if scopes[index] == PRIMARY else everyone))

    if not rolling:
        for index in range(len(steps)):
            plain(index)
        return phases
    first, last = rolling[0], rolling[-1]
    if any(scope == EACH for scope in scopes[first:last + 1]):
        names = [steps[i].label for i in range(first, last + 1) if scopes[i] == EACH]
        raise ValueError(f"{', '.join(names)} cannot run between the switch's steps on every host at once: "
                         "move it before or after them")
    for index in range(first):
        plain(index)
    for number, hosts in enumerate(batches(host_count, batch), start=1):
        chosen = tuple(steps[i] for i in range(first, last + 1) if scopes[i] == ROLLING or 0 in hosts)
        phases.append(Phase(chosen, hosts, pause if number > 1 else 0.0, number))
    for index in range(last + 1, len(steps)):
        plain(index)
    return phases
