"""The running release, from the outside: a one-off command in its image (``deployer exec``)
and its services' logs (``deployer logs``). Neither takes the deploy lock: they change
nothing deployer keeps (a one-off container is removed when its command ends).

``exec`` runs ``docker compose run --rm`` of the service — its configuration, networks,
variables — in the image its running container was started from, never a rebuild: when the
service's image name no longer points at that image (a build since, by hand or by a release
that was interrupted), a compose file deployer writes for the command's duration pins the
image by its id.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from deployer.errors import ConfigError, DeployerError

if TYPE_CHECKING:
    from deployer.commands.compose import Compose
    from deployer.commands.docker import Container
    from deployer.hosts.base import Result
    from deployer.server.target import Target

EXEC_OVERRIDE_PREFIX = "compose.exec-"  # <state_dir>/compose.exec-<token>.yml, while a command runs

_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")
_TIMESTAMP = re.compile(r"^\d+(\.\d+)?$")


@dataclass(frozen=True)
class OneOff:
    """How ``deployer exec`` runs a command: the argv for the host, the image it runs in, and
    the compose file that pins that image (None: the service's image name points at it)."""

    argv: list[str]
    service: str
    container: str  # the running container whose image it is
    image: str  # the image's name as the container was created from it
    image_id: str
    pin: tuple[str, str] | None = None  # (path, text) of the compose file written for the command's duration


def _services(target: Target) -> dict[str, list[Container]]:
    """service -> its containers (one-off ones left out)."""
    from deployer.server import facts

    found: dict[str, list[Container]] = {}
    for container in facts.service_containers(target):
        found.setdefault(container.service, []).append(container)
    return found


def _unknown(target: Target, service: str, known: Sequence[str]) -> ConfigError:
    return ConfigError(
        f"no container of a service named {service!r} exists for {target.name} on {target.host.name} "
        f"(services: {', '.join(sorted(known)) or 'none: nothing is deployed'})",
        hint="name one of those services",
    )


def one_off(target: Target, service: str, command: Sequence[str], *, tty: bool) -> OneOff:
    """The command ``deployer exec`` runs (reads only: the service's containers and its image)."""
    from deployer.server import facts

    if not command:
        raise ConfigError("no command to run", hint="put it after --: deployer exec ENV -- flask shell")
    found = _services(target)
    if service not in found:
        raise _unknown(target, service, list(found))
    container = facts.running(found[service], service)
    if container is None:
        raise DeployerError(
            f"the {service} service of {target.name} has no running container on {target.host.name}: "
            "there is no running release's image to run the command in",
            hint=f"`deployer status {target.name}` shows what runs; a release or rollback starts it again",
        )
    named = target.host.run(["docker", "image", "inspect", "--format", "{{.Id}}", container.image], timeout=60)
    compose: Compose = target.compose
    pin = None
    if not (named.ok and named.stdout.strip() == container.image_id):
        import json
        import posixpath

        path = posixpath.join(target.state_dir, f"{EXEC_OVERRIDE_PREFIX}{secrets.token_hex(4)}.yml")
        text = ("# Written by deployer for the duration of `deployer exec`: the image the running container\n"
                f"# runs, by its id ({container.image} names another image now).\n"
                f"services:\n  {json.dumps(service)}:\n    image: {json.dumps(container.image_id)}\n")
        pin = (path, text)
        compose = replace(compose, overrides=(*compose.overrides, path))
    argv = compose.run(service, list(command), tty=tty)
    return OneOff(argv, service, container.name, container.image, container.image_id, pin)


def run_one_off(target: Target, plan: OneOff, *, tty: bool, capture: bool = False) -> int | Result:
    """Run ``plan`` attached to this terminal (its exit status), or with ``capture`` as a
    :class:`~deployer.hosts.base.Result` (``--json``)."""
    host = target.host
    if plan.pin is not None:
        host.write_text(plan.pin[0], plan.pin[1], mode=0o600)
    try:
        if capture:
            return host.run(plan.argv, timeout=None)
        return host.attach(plan.argv, tty=tty)
    finally:
        if plan.pin is not None:
            host.run(["rm", "-f", plan.pin[0]], timeout=30)


def check_since(since: str) -> str:
    """``--since`` as compose reads it: a duration (``10m``, ``1h30m``), a date or time
    (``2026-01-31``, ``2026-01-31T12:00:00Z``) or a Unix timestamp; else a ConfigError."""
    value = since.strip()
    if _DURATION.match(value) or _DATE.match(value) or _TIMESTAMP.match(value):
        return value
    raise ConfigError(f"--since {since!r} is not a time",
                      hint="give a duration (10m, 2h, 1h30m), a date (2026-01-31) or a time (2026-01-31T12:00:00Z)")


def check_tail(tail: str) -> str:
    """``--tail``: a number of lines, or ``all``."""
    value = tail.strip().lower()
    if value == "all" or value.isdigit():
        return value
    raise ConfigError(f"--tail {tail!r} is not a number of lines", hint="give a number (--tail 200) or --tail all")


def logs_argv(target: Target, services: Sequence[str], *, follow: bool, since: str | None, tail: str | None,
              color: bool) -> list[str]:
    """``docker compose logs`` of the named services (all without one), each checked to exist."""
    if since and not target.compose.is_v2:
        raise ConfigError(f"docker-compose (v1) on {target.host.name} cannot show logs --since a time",
                          hint="use --tail N instead, or install the compose plugin (v2) on the host")
    if services:
        found = _services(target)
        for service in services:
            if service not in found:
                raise _unknown(target, service, list(found))
    return target.compose.logs(services, follow=follow, since=check_since(since) if since else None,
                               tail=check_tail(tail) if tail is not None else None, color=color)
