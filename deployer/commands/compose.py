"""docker compose command builders and fact parsers (pure: argv in, facts out).

Supports Compose v2 (``docker compose``) and v1 (``docker-compose``); which one a host has
is a fact probed once (:func:`detect_argvs` + :func:`parse_version`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

V2: tuple[str, ...] = ("docker", "compose")
V1: tuple[str, ...] = ("docker-compose",)


def version_argv(program: Sequence[str]) -> list[str]:
    """The argv that prints the version of one compose flavour."""
    return [*program, "version", "--short"]


def parse_version(stdout: str) -> str:
    """Extract ``2.40.3`` from ``v2.40.3`` / ``2.40.3`` / ``docker-compose version 1.29.2, build ...``."""
    match = re.search(r"v?(\d+\.\d+(?:\.\d+)?)", stdout)
    if not match:
        raise ValueError(f"cannot read a compose version from {stdout.strip()!r}")
    return match.group(1)


@dataclass(frozen=True)
class Compose:
    """One compose project on one host: every method returns an argv, nothing runs here."""

    program: tuple[str, ...]
    project: str
    project_dir: str
    files: tuple[str, ...]
    env_file: str | None = None

    @property
    def is_v2(self) -> bool:
        return self.program == V2

    def base(self) -> list[str]:
        argv = [*self.program, "--project-name", self.project, "--project-directory", self.project_dir]
        for file in self.files:
            argv += ["--file", file]
        if self.env_file:
            argv += ["--env-file", self.env_file]
        return argv

    def build(self, services: Sequence[str] = (), *, pull: bool = False) -> list[str]:
        argv = [*self.base(), "build"]
        if pull:
            argv.append("--pull")
        return argv + list(services)

    def up(
        self,
        services: Sequence[str] = (),
        *,
        no_deps: bool = False,
        no_build: bool = True,
        force_recreate: bool = False,
        wait: bool = False,
        wait_timeout: int | None = None,
        remove_orphans: bool = False,
    ) -> list[str]:
        argv = [*self.base(), "up", "--detach"]
        if no_build:
            argv.append("--no-build")
        if no_deps:
            argv.append("--no-deps")
        if force_recreate:
            argv.append("--force-recreate")
        if remove_orphans:
            argv.append("--remove-orphans")
        if wait and self.is_v2:
            argv.append("--wait")
            if wait_timeout is not None:
                argv += ["--wait-timeout", str(wait_timeout)]
        return argv + list(services)

    def run(
        self,
        service: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        no_deps: bool = True,
        name: str | None = None,
    ) -> list[str]:
        """A one-off container of ``service`` running ``command``, removed afterwards.

        A ``name`` lets the caller remove the container if the compose client is killed
        (a timed-out migration must not go on running behind our back).
        """
        argv = [*self.base(), "run", "--rm", "-T"]
        if name:
            argv += ["--name", name]
        if no_deps:
            argv.append("--no-deps")
        for key, value in (env or {}).items():
            argv += ["-e", f"{key}={value}"]
        return [*argv, service, *command]

    def exec(self, service: str, command: Sequence[str]) -> list[str]:
        return [*self.base(), "exec", "-T", service, *command]

    def stop(self, services: Sequence[str] = (), *, timeout: int | None = None) -> list[str]:
        argv = [*self.base(), "stop"]
        if timeout is not None:
            argv += ["--timeout", str(timeout)]
        return argv + list(services)

    def down(self, *, volumes: bool = False) -> list[str]:
        argv = [*self.base(), "down", "--remove-orphans"]
        if volumes:
            argv.append("--volumes")
        return argv

    def ps(self) -> list[str]:
        """All containers of the project, stopped ones included, one JSON per line (v2)."""
        if self.is_v2:
            return [*self.base(), "ps", "--all", "--format", "json"]
        return [*self.base(), "ps", "--all", "-q"]

    def ps_ids(self, services: Sequence[str] = ()) -> list[str]:
        """Container ids of the project (stopped ones included), one per line."""
        return [*self.base(), "ps", "--all", "-q", *services]

    def config_images(self) -> list[str]:
        """The image name compose gives each service (v2: ``config --images``)."""
        return [*self.base(), "config", "--images"]

    def config_services(self) -> list[str]:
        return [*self.base(), "config", "--services"]


@dataclass(frozen=True)
class ServiceState:
    """One container of the project as ``compose ps`` reports it."""

    service: str
    name: str
    state: str  # running, exited, restarting, ...
    health: str  # healthy, unhealthy, starting, or "" without a healthcheck
    image: str
    exit_code: int | None = None

    @property
    def is_up(self) -> bool:
        return self.state == "running" and self.health in ("", "healthy")


def parse_ps(stdout: str) -> list[ServiceState]:
    """Parse ``compose ps --format json``: a JSON array (older v2) or one object per line."""
    text = stdout.strip()
    if not text:
        return []
    if text.startswith("["):
        rows = json.loads(text)
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    states = []
    for row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"unexpected compose ps row: {row!r}")
        exit_code = row.get("ExitCode")
        states.append(
            ServiceState(
                service=str(row.get("Service", "")),
                name=str(row.get("Name", "")),
                state=str(row.get("State", "")).lower(),
                health=str(row.get("Health", "") or "").lower(),
                image=str(row.get("Image", "")),
                exit_code=int(exit_code) if isinstance(exit_code, int) else None,
            )
        )
    return sorted(states, key=lambda s: (s.service, s.name))


def parse_lines(stdout: str) -> list[str]:
    """Non-empty stripped lines: ``config --services`` / ``config --images`` output."""
    return [line.strip() for line in stdout.splitlines() if line.strip()]
