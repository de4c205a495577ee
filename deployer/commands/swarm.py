"""Docker Swarm command builders and fact parsers (pure: argv in, facts out).

A stack's services and tasks, the swarm's nodes and the node's own membership are each read
in one round trip (list, then inspect, in one constant script) and parsed from the engine's
JSON; nothing here runs anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

STACK_LABEL = "com.docker.stack.namespace"
SERVICE_NAME_LABEL = "com.docker.swarm.service.name"
TASK_LABEL = "com.docker.swarm.task.id"
GATEWAY_NETWORK = "docker_gwbridge"  # where the host reaches a task container of an overlay network

# Update states the engine reports in a service's UpdateStatus.
UPDATING = "updating"
COMPLETED = "completed"
PAUSED = "paused"
ROLLBACK_STARTED = "rollback_started"
ROLLBACK_PAUSED = "rollback_paused"
ROLLBACK_COMPLETED = "rollback_completed"
ROLLED_BACK = (ROLLBACK_STARTED, ROLLBACK_PAUSED, ROLLBACK_COMPLETED)


def swarm_state_argv() -> list[str]:
    """What this engine knows of its swarm (parse with :func:`parse_swarm_state`)."""
    return ["docker", "info", "--format", "{{json .Swarm}}"]


@dataclass(frozen=True)
class SwarmState:
    state: str  # active, inactive, pending, error, locked
    node_id: str
    manager: bool  # it can run `docker stack deploy` (ControlAvailable)
    cluster_id: str
    address: str  # the address it advertises to the swarm

    @property
    def active(self) -> bool:
        return self.state == "active"


def parse_swarm_state(stdout: str) -> SwarmState:
    info = json.loads(stdout or "{}") or {}
    cluster = info.get("Cluster") or {}
    return SwarmState(
        state=str(info.get("LocalNodeState") or "inactive"),
        node_id=str(info.get("NodeID") or ""),
        manager=bool(info.get("ControlAvailable")),
        cluster_id=str(cluster.get("ID") or ""),
        address=str(info.get("NodeAddr") or ""),
    )


# Lists the nodes and inspects them in one round trip (a manager only).
_NODES_SCRIPT = 'ids=$(docker node ls --quiet) || exit $?; exec docker node inspect $ids'


def nodes_argv() -> list[str]:
    return ["sh", "-c", _NODES_SCRIPT]


@dataclass(frozen=True)
class Node:
    id: str
    hostname: str
    address: str
    state: str  # ready, down, unknown, disconnected
    availability: str  # active, pause, drain
    role: str  # manager, worker

    @property
    def schedulable(self) -> bool:
        """Swarm may place tasks on it (so it needs the release's images)."""
        return self.state == "ready" and self.availability == "active"


def parse_nodes(stdout: str) -> list[Node]:
    nodes = []
    for row in json.loads(stdout or "[]") or []:
        spec, status = row.get("Spec") or {}, row.get("Status") or {}
        nodes.append(Node(
            id=str(row.get("ID", "")),
            hostname=str((row.get("Description") or {}).get("Hostname", "")),
            address=str(status.get("Addr", "")),
            state=str(status.get("State", "")),
            availability=str(spec.get("Availability", "")),
            role=str(spec.get("Role", "")),
        ))
    return nodes


def deploy_argv(stack: str, stack_file: str) -> list[str]:
    """``docker stack deploy`` of ``stack_file``. ``--resolve-image never``: the services name
    their images by id, present on every node; no registry is asked."""
    return ["docker", "stack", "deploy", "--resolve-image", "never", "--compose-file", stack_file, stack]


def remove_argv(stack: str) -> list[str]:
    return ["docker", "stack", "rm", stack]


def scale_argv(service: str, replicas: int) -> list[str]:
    """Set a service's replicas, without waiting (``--detach``)."""
    return ["docker", "service", "scale", "--detach", f"{service}={replicas}"]


# A stack's services, inspected in one round trip; "[]" when the stack has none.
_SERVICES_SCRIPT = (
    'ids=$(docker service ls --quiet --filter "label=com.docker.stack.namespace=$1") || exit $?; '
    '[ -z "$ids" ] && echo "[]" && exit 0; '
    'out=$(docker service inspect $ids 2>/dev/null); [ -n "$out" ] && printf "%s\\n" "$out" || echo "[]"'
)


def services_argv(stack: str) -> list[str]:
    return ["sh", "-c", _SERVICES_SCRIPT, "sh", stack]


@dataclass(frozen=True)
class Service:
    """One service of a stack, as the engine describes it."""

    id: str
    name: str  # <stack>_<service>
    short: str  # the compose service it came from
    image: str
    replicas: int | None  # None: global mode
    update_state: str  # "" (never updated), updating, completed, paused, rollback_*
    update_message: str
    previous_image: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    version: int = 0  # the spec's version: it moves with every change of the service
    update_started: str = ""  # when its last update started ("" never updated)

    @property
    def rolled_back(self) -> bool:
        return self.update_state in ROLLED_BACK


def parse_services(stdout: str, stack: str) -> list[Service]:
    services = []
    for row in json.loads(stdout or "[]") or []:
        spec = row.get("Spec") or {}
        container = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {})
        mode = spec.get("Mode") or {}
        replicated = mode.get("Replicated")
        update = row.get("UpdateStatus") or {}
        previous = ((((row.get("PreviousSpec") or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image"))
        name = str(spec.get("Name", ""))
        services.append(Service(
            id=str(row.get("ID", "")),
            name=name,
            short=name[len(stack) + 1:] if name.startswith(stack + "_") else name,
            image=str(container.get("Image", "")),
            replicas=int(replicated.get("Replicas") or 0) if isinstance(replicated, dict) else None,
            update_state=str(update.get("State") or ""),
            update_message=str(update.get("Message") or ""),
            previous_image=str(previous) if previous else None,
            labels=dict(spec.get("Labels") or {}),
            version=int((row.get("Version") or {}).get("Index") or 0),
            update_started=str(update.get("StartedAt") or ""),
        ))
    return sorted(services, key=lambda s: s.short)


def parse_updates(stdout: str) -> dict[str, str]:
    """service name -> when its last update started ("" never updated)."""
    return {str((row.get("Spec") or {}).get("Name", "")): str((row.get("UpdateStatus") or {}).get("StartedAt") or "")
            for row in json.loads(stdout or "[]") or []}


# A stack's tasks (every state), inspected in one round trip; "[]" when there are none.
_TASKS_SCRIPT = (
    'ids=$(docker stack ps --quiet --no-trunc "$1" 2>/dev/null) || { echo "[]"; exit 0; }; '
    '[ -z "$ids" ] && echo "[]" && exit 0; '
    # A task removed between the two commands is not an error: the others are still printed.
    'out=$(docker inspect --type task $ids 2>/dev/null); [ -n "$out" ] && printf "%s\\n" "$out" || echo "[]"'
)


def tasks_argv(stack: str) -> list[str]:
    return ["sh", "-c", _TASKS_SCRIPT, "sh", stack]


@dataclass(frozen=True)
class Task:
    id: str
    service_id: str
    slot: int | None
    node_id: str
    image: str
    desired: str  # running, shutdown, ready, ...
    state: str  # new, pending, assigned, preparing, starting, running, complete, failed, shutdown, rejected, ...
    error: str
    message: str
    timestamp: str
    container_id: str
    exit_code: int | None

    @property
    def running(self) -> bool:
        return self.desired == "running" and self.state == "running"

    @property
    def failed(self) -> bool:
        return self.state in ("failed", "rejected")


def parse_tasks(stdout: str) -> list[Task]:
    tasks = []
    for row in json.loads(stdout or "[]") or []:
        status = row.get("Status") or {}
        container = status.get("ContainerStatus") or {}
        spec = ((row.get("Spec") or {}).get("ContainerSpec") or {})
        exit_code = container.get("ExitCode")
        tasks.append(Task(
            id=str(row.get("ID", "")),
            service_id=str(row.get("ServiceID", "")),
            slot=int(row["Slot"]) if isinstance(row.get("Slot"), int) else None,
            node_id=str(row.get("NodeID", "")),
            image=str(spec.get("Image", "")),
            desired=str(row.get("DesiredState", "")),
            state=str(status.get("State", "")),
            error=str(status.get("Err", "")),
            message=str(status.get("Message", "")),
            timestamp=str(status.get("Timestamp", "")),
            container_id=str(container.get("ContainerID", "")),
            exit_code=int(exit_code) if isinstance(exit_code, int) else None,
        ))
    return tasks


def gateway_argv() -> list[str]:
    """The addresses task containers have on this node's gateway bridge (JSON)."""
    return ["docker", "network", "inspect", "--format", "{{json .Containers}}", GATEWAY_NETWORK]


def parse_gateway(containers: Mapping[str, Any] | None) -> dict[str, str]:
    """container id -> its address on the gateway bridge (from the network's ``Containers``)."""
    found = {}
    for container_id, entry in (containers or {}).items():
        address = str((entry or {}).get("IPv4Address", "")).partition("/")[0]
        if address:
            found[str(container_id)] = address
    return found


# -- images across nodes ---------------------------------------------------------------

# Every image's id and layer list on a node, one JSON object per line.
_LAYERS_SCRIPT = (
    'ids=$(docker image ls --quiet --no-trunc | sort -u) || exit $?; [ -z "$ids" ] && exit 0; '
    "exec docker image inspect --format '{{json .Id}} {{json .RootFS.Layers}}' $ids"
)


def layers_argv() -> list[str]:
    return ["sh", "-c", _LAYERS_SCRIPT]


def parse_layers(stdout: str) -> dict[str, tuple[str, ...]]:
    """image id -> its layers (diff ids, base first)."""
    found: dict[str, tuple[str, ...]] = {}
    for line in stdout.splitlines():
        image, _, layers = line.strip().partition(" ")
        if image:
            found[json.loads(image)] = tuple(json.loads(layers or "[]") or ())
    return found


def save_manifest_argv(image: str) -> list[str]:
    """The manifest of ``docker save IMAGE`` (which layer file holds which layer)."""
    return ["sh", "-c", 'docker save "$1" | tar -xOf - manifest.json', "sh", image]


def present_prefix(layers: Sequence[str], known: Mapping[str, Sequence[str]]) -> int:
    """How many of ``layers`` (base first) a node already has: the longest run from the
    base that one of its images shares (a layer is the same only with the same layers under it)."""
    best = 0
    for other in known.values():
        shared = 0
        for mine, theirs in zip(layers, other, strict=False):
            if mine != theirs:
                break
            shared += 1
        best = max(best, shared)
    return best
