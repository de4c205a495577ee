"""A stack on its swarm, read and watched through the primary (a manager): its services and
their tasks, the nodes, and whether an update converged, failed, or was rolled back by Swarm.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from deployer import interrupts
from deployer.commands import swarm as swarm_cmds
from deployer.commands.swarm import Node, Service, SwarmState, Task
from deployer.errors import DeployerError, HostError
from deployer.hosts import Host

POLL_SECONDS = 1.0
# A service being created has no update to roll back: this many failed tasks of it end the wait.
FAILED_TASKS_LIMIT = 3


class UpdateFailed(DeployerError):
    """The stack did not converge: a service's update failed (Swarm rolled it back, or paused
    it), its tasks keep failing, or the wait timed out."""

    def __init__(self, message: str, *, hint: str | None = None, rolled_back: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.rolled_back = rolled_back


def swarm_state(host: Host) -> SwarmState:
    result = host.run(swarm_cmds.swarm_state_argv(), timeout=30)
    if not result.ok:
        raise HostError(f"cannot ask docker on {host.name} about its swarm: {(result.stderr or result.stdout).strip()[-300:]}")
    return swarm_cmds.parse_swarm_state(result.stdout)


def nodes(host: Host) -> list[Node]:
    result = host.run(swarm_cmds.nodes_argv(), timeout=60)
    if not result.ok:
        raise HostError(f"cannot list the swarm's nodes on {host.name}: {(result.stderr or result.stdout).strip()[-300:]}",
                        hint="the primary host must be a manager of the swarm")
    return swarm_cmds.parse_nodes(result.stdout)


def services(host: Host, stack: str) -> list[Service]:
    result = host.run(swarm_cmds.services_argv(stack), timeout=60)
    if not result.ok:
        raise HostError(f"cannot list the services of stack {stack} on {host.name}: {(result.stderr or result.stdout).strip()[-300:]}")
    return swarm_cmds.parse_services(result.stdout, stack)


def tasks(host: Host, stack: str) -> list[Task]:
    result = host.run(swarm_cmds.tasks_argv(stack), timeout=60)
    if not result.ok:
        raise HostError(f"cannot list the tasks of stack {stack} on {host.name}: {(result.stderr or result.stdout).strip()[-300:]}")
    return swarm_cmds.parse_tasks(result.stdout)


@dataclass(frozen=True)
class Before:
    """The services' last updates before a deploy: one that started since is this deploy's
    (a stack deploy rewrites every service's spec, changed or not: its version says nothing)."""

    updates: Mapping[str, str]  # service name -> when its last update started


def read_before(host: Host, stack: str) -> Before:
    result = host.run(swarm_cmds.services_argv(stack), timeout=60)
    if not result.ok:
        return Before({})
    return Before(swarm_cmds.parse_updates(result.stdout))


def _task_errors(found: Sequence[Task], service: Service, node_names: Mapping[str, str], limit: int = 3) -> str:
    failed = [t for t in found if t.service_id == service.id and (t.failed or t.error)]
    failed.sort(key=lambda t: t.timestamp, reverse=True)
    shown = [f"{node_names.get(t.node_id, t.node_id[:12] or '?')}: {t.state} ({t.error or t.message})" for t in failed[:limit]]
    return "; ".join(shown)


def converged(service: Service, found: Sequence[Task], schedulable: int) -> tuple[bool, str]:
    """Whether ``service`` runs its spec's image in every task it should, and what is missing."""
    mine = [t for t in found if t.service_id == service.id and t.desired == "running"]
    current = [t for t in mine if t.image == service.image]
    running = [t for t in current if t.state == "running"]
    wanted = service.replicas if service.replicas is not None else schedulable
    if service.update_state in (swarm_cmds.UPDATING,):
        return False, f"{service.short}: updating ({len(running)} of {wanted} running the new image)"
    if len(running) < wanted or len(mine) > len(running):
        return False, f"{service.short}: {len(running)} of {wanted} task(s) running"
    return True, f"{service.short}: {len(running)} task(s)"


def watch(
    host: Host,
    stack: str,
    *,
    expected: Mapping[str, str],
    before: Before,
    timeout: float,
    log: Callable[[str], None] = lambda _: None,
) -> str:
    """Wait until every service of ``expected`` (short name -> image) runs that image in all
    its tasks and no update of this deploy is still going on. Raises :class:`UpdateFailed`
    when Swarm rolls an update back or pauses it, when a new service's tasks keep failing,
    or at ``timeout``."""
    deadline = time.monotonic() + timeout
    node_names = {n.id: n.hostname for n in nodes(host)}
    schedulable = sum(1 for n in nodes(host) if n.schedulable)
    last = ""
    while True:
        now = {s.short: s for s in services(host, stack)}
        found = tasks(host, stack)
        waiting = []
        for short, image in sorted(expected.items()):
            service = now.get(short)
            if service is None:
                waiting.append(f"{short}: not created yet")
                continue
            updated = bool(service.update_started) and before.updates.get(service.name) != service.update_started
            if updated and service.rolled_back:
                errors = _task_errors(found, service, node_names)
                raise UpdateFailed(
                    f"Swarm rolled the update of {service.name} back ({service.update_state}: "
                    f"{service.update_message or 'no message'})" + (f"; failed tasks: {errors}" if errors else ""),
                    hint=f"its tasks' errors: `docker service ps --no-trunc {service.name}` on the primary",
                    rolled_back=True,
                )
            if updated and service.update_state == swarm_cmds.PAUSED:
                errors = _task_errors(found, service, node_names)
                raise UpdateFailed(
                    f"the update of {service.name} paused ({service.update_message or 'no message'})"
                    + (f"; failed tasks: {errors}" if errors else ""),
                    hint=f"`docker service ps --no-trunc {service.name}` on the primary says why",
                )
            if service.image != image and not service.rolled_back:
                waiting.append(f"{short}: still on another image")
                continue
            if not updated or service.update_state == "":
                failures = [t for t in found if t.service_id == service.id and t.failed and t.image == image]
                if len(failures) >= FAILED_TASKS_LIMIT:
                    raise UpdateFailed(
                        f"the tasks of {service.name} keep failing: {_task_errors(found, service, node_names)}",
                        hint=f"`docker service logs {service.name}` on the primary",
                    )
            done, detail = converged(service, found, schedulable)
            if not done:
                waiting.append(detail)
        if not waiting:
            return "; ".join(converged(now[short], found, schedulable)[1] for short in sorted(expected))
        state = "; ".join(waiting)
        if state != last:
            log(f"waiting for the stack: {state}")
            last = state
        if time.monotonic() >= deadline:
            raise UpdateFailed(f"the stack {stack} did not converge within {timeout:g}s ({state})",
                               hint=f"`docker stack ps --no-trunc {stack}` on the primary shows its tasks")
        interrupts.sleep(POLL_SECONDS)


def wait_removed(host: Host, stack: str, *, timeout: float = 120.0) -> bool:
    """After ``docker stack rm``: wait until no task container of the stack is left on this node."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = host.run(["docker", "ps", "--all", "--quiet", "--filter", f"label={swarm_cmds.STACK_LABEL}={stack}"], timeout=30)
        if found.ok and not found.stdout.strip():
            return True
        interrupts.sleep(POLL_SECONDS)
    return False
