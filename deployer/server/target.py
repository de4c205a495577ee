"""An environment made concrete: its config, a connected host, and its compose project there."""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from deployer.commands import compose as compose_cmds
from deployer.config import Config, Environment
from deployer.errors import ConfigError, HostError
from deployer.hosts import Host, connect

STATE_DIR = ".deployer"
ENV_FILE = "compose.env"


@dataclass(frozen=True)
class Target:
    """Everything a step needs to act on one environment."""

    config: Config
    env: Environment
    host: Host
    compose: compose_cmds.Compose

    @property
    def state_dir(self) -> str:
        return posixpath.join(self.env.path, STATE_DIR)

    @property
    def name(self) -> str:
        return self.env.name


def detect_compose(host: Host) -> tuple[str, ...]:
    """Which compose the host has: v2 (``docker compose``) preferred, else v1."""
    if not host.run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=30).ok:
        raise HostError(
            f"docker does not answer on {host.name}",
            hint="install Docker and start its daemon there; the user deployer logs in as must be able to run `docker ps`",
        )
    for program in (compose_cmds.V2, compose_cmds.V1):
        if host.run(compose_cmds.version_argv(program), timeout=30).ok:
            return program
    raise HostError(
        f"neither `docker compose` (v2) nor `docker-compose` (v1) is installed on {host.name}",
        hint="install the Docker Compose plugin (https://docs.docker.com/compose/install/)",
    )


def open_target(config: Config, env_name: str, *, host: Host | None = None, prepare: bool = True) -> Target:
    """Connect to the environment's host and probe its compose flavour.

    With ``prepare`` (not for dry runs, which change nothing), the compose env file is
    (re)written from deploy.toml when the checkout exists, so every compose command sees
    the configured variables even on an environment no release has touched yet.
    """
    env = config.environment(env_name)
    host = host or connect(env.host)
    program = detect_compose(host)
    state_dir = posixpath.join(env.path, STATE_DIR)
    compose = compose_cmds.Compose(
        program=program,
        project=config.app.name,
        project_dir=env.path,
        files=(posixpath.join(env.path, config.app.compose_file),),
        env_file=posixpath.join(state_dir, ENV_FILE) if env.env else None,
    )
    target = Target(config=config, env=env, host=host, compose=compose)
    if prepare and compose.env_file and host.run(["test", "-d", env.path]).ok:
        write_env_file(target)
    return target


def env_file_text(variables: Mapping[str, str]) -> str:
    """Compose env-file lines, quoted so spaces, ``#`` and ``$`` survive as written.

    Single quotes are literal in compose env files; a value that itself holds a single
    quote is double-quoted with ``\\`` and ``"`` escaped.
    """
    lines = []
    for key, value in variables.items():
        if "\n" in value or "\r" in value:
            raise ConfigError(f"the value of {key} holds a line break, which a compose env file cannot carry")
        if "'" not in value:
            lines.append(f"{key}='{value}'")
        else:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{key}="{escaped}"')
    return "\n".join(lines) + "\n"


def write_env_file(target: Target) -> None:
    """Write the environment's compose variables (secrets included) with mode 0600."""
    if target.compose.env_file is None:
        return
    target.host.run(["mkdir", "-p", target.state_dir], check=True)
    target.host.write_text(target.compose.env_file, env_file_text(target.env.env), mode=0o600)


def shell(argv: list[str], *, stdin_path: str | None = None, stdout_path: str | None = None) -> list[str]:
    """Wrap an argv in ``sh -c`` to redirect from/to files on the host, quoting every part once."""
    script = "exec " + shlex.join(argv)
    if stdin_path:
        script += " < " + shlex.quote(stdin_path)
    if stdout_path:
        script += " > " + shlex.quote(stdout_path)
    return ["sh", "-c", script]
