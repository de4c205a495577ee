"""Facts about a compose project's containers, read with ``docker inspect`` (pure parsing), and the
argv that list and remove image tags."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SERVICE_LABEL = "com.docker.compose.service"
# The configuration hash compose gives a container (`compose config --hash` prints the current one).
HASH_LABEL = "com.docker.compose.config-hash"
ONEOFF_LABEL = "com.docker.compose.oneoff"


@dataclass(frozen=True)
class Container:
    """One container as the engine describes it."""

    id: str
    name: str
    service: str
    image_id: str  # sha256:...
    image: str  # the name it was created from, e.g. recipes-web
    state: str  # running, exited, restarting, created, ...
    health: str  # healthy, unhealthy, starting, or "" without a healthcheck
    restart_count: int
    started_at: str
    ips: tuple[str, ...] = ()
    networks: dict[str, str] = field(default_factory=dict)  # network name -> its address there
    env: dict[str, str] = field(default_factory=dict)
    oneoff: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    exit_code: int | None = None
    health_results: int = 0  # how many results of its healthcheck the engine keeps (0: none ran yet)

    @property
    def is_healthy(self) -> bool:
        return self.state == "running" and self.health in ("", "healthy")

    @property
    def healthcheck_pending(self) -> bool:
        """Running, with a healthcheck that has not run once yet (Docker's first run comes
        one ``interval`` after the start): neither passed nor failed."""
        return self.state == "running" and self.health == "starting" and self.health_results == 0


# Lists a compose project's containers and inspects them in ONE round trip (no compose file
# to load). A constant script: the project name arrives as $1, never formatted into it.
_PROJECT_SCRIPT = (
    'ids=$(docker ps --all --quiet --no-trunc --filter "label=com.docker.compose.project=$2" $1) || exit $?; '
    '[ -z "$ids" ] && echo "[]" && exit 0; exec docker inspect --type container $ids'
)
_SERVICES_ONLY = "--filter=label=com.docker.compose.oneoff=False"


def project_argv(project: str, *, oneoff: bool = False) -> list[str]:
    """argv listing and inspecting a compose project's containers: its services' only, or
    with ``oneoff`` also the one-off containers (``compose run``: migrations)."""
    return ["sh", "-c", _PROJECT_SCRIPT, "sh", "" if oneoff else _SERVICES_ONLY, project]


def parse_inspect(stdout: str) -> list[Container]:
    """Parse ``docker inspect`` JSON for containers."""
    return parse_rows(json.loads(stdout or "[]"))


def parse_rows(rows: Sequence[Mapping[str, Any]]) -> list[Container]:
    """Containers from ``docker inspect`` rows (the engine API's container JSON)."""
    containers = []
    for row in rows:
        state = row.get("State") or {}
        config = row.get("Config") or {}
        labels = config.get("Labels") or {}
        networks = (row.get("NetworkSettings") or {}).get("Networks") or {}
        env = {}
        for item in config.get("Env") or []:
            key, _, value = item.partition("=")
            env[key] = value
        containers.append(
            Container(
                id=row.get("Id", ""),
                name=str(row.get("Name", "")).lstrip("/"),
                service=labels.get(SERVICE_LABEL, ""),
                image_id=row.get("Image", ""),
                image=config.get("Image", ""),
                state=str(state.get("Status", "")),
                health=str((state.get("Health") or {}).get("Status", "")),
                restart_count=int(row.get("RestartCount") or 0),
                started_at=str(state.get("StartedAt", "")),
                ips=tuple(net.get("IPAddress") for net in networks.values() if net.get("IPAddress")),
                networks={str(name): str(net.get("IPAddress")) for name, net in networks.items() if net.get("IPAddress")},
                env=env,
                oneoff=labels.get(ONEOFF_LABEL, "False") == "True",
                labels=dict(labels),
                exit_code=int(state["ExitCode"]) if isinstance(state.get("ExitCode"), int) else None,
                health_results=len((state.get("Health") or {}).get("Log") or []),
            )
        )
    return containers


# --------------------------------------------------------------------------- images

_TAG_FORMAT = "{{.Repository}}:{{.Tag}} {{.ID}}"


def image_tags_argv(repositories: Sequence[str], tag_prefix: str) -> list[str]:
    """argv listing the tags ``REPOSITORY:PREFIX*`` of the given repositories with their
    image ids (one ``name id`` per line: :func:`parse_image_tags`). At least one repository:
    without a filter the engine would list every image it has."""
    if not repositories:
        raise ValueError("no repository to list the tags of")
    argv = ["docker", "image", "ls", "--no-trunc", "--format", _TAG_FORMAT]
    for repository in repositories:
        argv += ["--filter", f"reference={repository}:{tag_prefix}*"]
    return argv


def parse_image_tags(stdout: str) -> dict[str, str]:
    """tag name -> image id, from :func:`image_tags_argv`'s output."""
    found = {}
    for line in stdout.splitlines():
        name, _, image_id = line.strip().partition(" ")
        if name and image_id and not name.endswith(":<none>"):
            found[name] = image_id
    return found


def remove_tags_argv(names: Sequence[str]) -> list[str]:
    """argv removing image tags. Never forced: the engine refuses to remove the last tag of an
    image a container uses (and only untags an image that keeps other tags)."""
    return ["docker", "image", "rm", *names]
