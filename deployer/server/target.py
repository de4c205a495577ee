"""An environment made concrete: its config, a connected host, and its compose project there.

deployer's own files live in the environment's ``state_dir`` (default: beside the checkout,
``<path>.deployer``): the journal, the lock, the step log, and the compose env file that
holds the secrets. Never inside the checkout: that is the docker build context of every app
built from ``.``, and a ``COPY . .`` would bake them into the image.

Opening a target writes nothing: read-only commands stay read-only. The env file is written
by the commands that change the server (:func:`env_file_write`), under the lock.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Self

from deployer.commands import compose as compose_cmds
from deployer.config import Config, Environment, HostEntry
from deployer.errors import ConfigError, DeployerError, HostError
from deployer.hosts import Host, connect

ENV_FILE = "compose.env"
# With a proxy: a compose file deployer adds after the user's, so that the web service
# publishes no port (the proxy owns it) and two of its containers can run side by side.
PROXY_OVERRIDE_FILE = "compose.proxy.yml"
# On a host that runs only some of the services (one of several hosts): a compose file that
# puts the others in a profile nobody enables, so compose neither starts nor waits for them.
HOST_OVERRIDE_FILE = "compose.host.yml"
ELSEWHERE_PROFILE = "deployer-elsewhere"
# On Swarm: a compose file that puts compose's one-off containers (migrations) on the
# stack's networks, which the stack creates attachable (see deployer.swarm.stack).
SWARM_OVERRIDE_FILE = "compose.swarm.yml"
# Where versions before state_dir kept their files: inside the checkout.
LEGACY_STATE_DIR = ".deployer"
LEGACY_BACKUP_DIR = "backups"


@dataclass(frozen=True)
class Target:
    """Everything a step needs to act on one environment. A context manager: leaving it
    closes the host connection."""

    config: Config
    env: Environment
    host: Host
    compose: compose_cmds.Compose
    entry: HostEntry | None = None  # one of several hosts: which, and what it runs

    @property
    def state_dir(self) -> str:
        return self.env.state_dir

    @property
    def partial(self) -> bool:
        """This host runs only some of the compose services (see :func:`services_here`)."""
        return runs_some(self.entry)

    def services_here(self, services: Iterable[str]) -> tuple[str, ...]:
        """Which of the compose ``services`` run on this host: all on a single host and on a
        primary without roles; a host's ``roles`` when it names them; else every service but
        the db service, which runs on the primary only."""
        names = sorted(services)
        if not self.partial:
            return tuple(names)
        assert self.entry is not None
        if self.entry.roles:
            return tuple(name for name in names if name in self.entry.roles)
        return tuple(name for name in names if name != self.config.app.db_service)

    @property
    def name(self) -> str:
        return self.env.name

    @property
    def env_file(self) -> str:
        return posixpath.join(self.state_dir, ENV_FILE)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.host.close()


def detect_compose(host: Host) -> tuple[str, ...]:
    """Which compose the host has: v2 (``docker compose``) preferred, else v1."""
    if not _engine_answers(host) and not host.run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=30).ok:
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


def _engine_answers(host: Host) -> bool:
    """The engine answers its API (``GET /version``) on the stream later reads reuse: no
    ``docker version`` process; False sends the question to the docker CLI, which says why not."""
    from deployer.hosts.dockerapi import EngineUnavailable

    try:
        return bool((host.engine().get("/version") or {}).get("Version"))
    except EngineUnavailable:
        return False


def runs_some(entry: HostEntry | None) -> bool:
    """Whether a host of several runs only some of the compose services: any but a primary
    without roles."""
    return entry is not None and not (entry.primary and not entry.roles)


def make_compose(config: Config, env: Environment, program: tuple[str, ...] = compose_cmds.V2,
                 *, partial: bool = False) -> compose_cmds.Compose:
    """The compose project of an environment (pure: nothing is probed); ``partial``: on a
    host that runs only some of its services."""
    # On Swarm the stack publishes the ports and runs the services: compose only builds,
    # resolves and runs one-off containers on the stack's networks.
    kind = compose_cmds.SwarmProject if env.swarm else compose_cmds.Compose
    overrides = ((SWARM_OVERRIDE_FILE,) if env.swarm
                 else (PROXY_OVERRIDE_FILE,) * bool(env.proxy) + (HOST_OVERRIDE_FILE,) * partial)
    return kind(
        program=program,
        project=config.app.name,
        # As compose itself: relative paths in the file are relative to the file's folder.
        project_dir=posixpath.dirname(posixpath.join(env.path, config.app.compose_file)),
        files=(posixpath.join(env.path, config.app.compose_file),),
        env_file=posixpath.join(env.state_dir, ENV_FILE) if env.env else None,
        overrides=tuple(posixpath.join(env.state_dir, name) for name in overrides),
    )


def proxy_override_text(web_service: str) -> str:
    """The compose file that leaves the web service's port to the proxy (``!reset``: compose
    2.24 or later)."""
    import json

    return (
        "# Written by deployer: the proxy in front of this service publishes its port, so that\n"
        "# a new container can start beside the old one. See docs/zero-downtime.md.\n"
        f"services:\n  {json.dumps(web_service)}:\n    ports: !reset []\n"
    )


def host_override_text(config: compose_cmds.ComposeConfig, here: Iterable[str]) -> str:
    """The compose file of a host that runs only the services ``here``: the others get a
    profile nobody enables, and a service here that depends on one of them depends on the
    rest only (``!override``: compose 2.24 or later)."""
    import json

    kept = set(here)
    lines = [
        "# Written by deployer: this host runs only some of the services (one of several hosts);",
        "# the others run elsewhere. See docs/many-hosts.md.",
        "services:" if len(kept) < len(config.services) else "services: {}",
    ]
    for name, service in sorted(config.services.items()):
        if name not in kept:
            lines += [f"  {json.dumps(name)}:", f"    profiles: [{json.dumps(ELSEWHERE_PROFILE)}]"]
        elif any(dependency not in kept for dependency in service.depends_on):
            rest = [dependency for dependency in service.depends_on if dependency in kept]
            lines += [f"  {json.dumps(name)}:", f"    depends_on: !override {json.dumps(rest)}"]
    return "\n".join(lines) + "\n"


def swarm_override_text(config: compose_cmds.ComposeConfig, project: str) -> str:
    """The compose file that puts one-off containers on the stack's networks: each network of
    the project, by the name the stack gives it, as an external one."""
    import json

    raw = dict(config.raw.get("networks") or {})
    raw.setdefault("default", {})
    lines = [
        "# Written by deployer: on Swarm the stack owns the networks; compose's one-off",
        "# containers (the migration) join them. See docs/swarm.md.",
        "networks:",
    ]
    for key, value in sorted(raw.items()):
        name = (value or {}).get("name") or f"{project}_{key}"
        lines += [f"  {json.dumps(str(key))}:", "    external: true", f"    name: {json.dumps(str(name))}"]
    return "\n".join(lines) + "\n"


def override_texts(target: Target, config: compose_cmds.ComposeConfig) -> dict[str, str]:
    """path -> text of each compose file deployer gives compose after the user's."""
    texts = {}
    for path in target.compose.overrides:
        name = posixpath.basename(path)
        if name == PROXY_OVERRIDE_FILE:
            texts[path] = proxy_override_text(target.config.app.web_service)
        elif name == SWARM_OVERRIDE_FILE:
            texts[path] = swarm_override_text(config, target.compose.project)
        else:
            texts[path] = host_override_text(config, target.services_here(config.services))
    return texts


def open_target(config: Config, env_name: str, *, host: Host | None = None, probe_compose: bool = True,
                entry: HostEntry | None = None) -> Target:
    """Connect to the environment's host (``entry``: that one of its hosts; by default the
    primary) and (unless told not to) probe its compose flavour.

    Writes nothing on the host.
    """
    env = config.environment(env_name)
    if entry is None and env.many_hosts:
        entry = env.hosts[0]  # a command of one host (backups, lock, migrations) acts on the primary
    if entry is not None:
        env = env.on(entry)
    host = host or connect(env.host)
    try:
        program = detect_compose(host) if probe_compose else compose_cmds.V2
    except BaseException:
        host.close()
        raise
    compose = make_compose(config, env, program, partial=runs_some(entry))
    return Target(config=config, env=env, host=host, compose=compose, entry=entry)


def open_targets(config: Config, env_name: str) -> list[Target]:
    """One target per host of the environment, the primary first, connected side by side.
    A host that cannot be reached closes the others and raises, naming it."""
    from concurrent.futures import ThreadPoolExecutor

    env = config.environment(env_name)
    with ThreadPoolExecutor(max_workers=min(8, len(env.hosts)), thread_name_prefix="connect") as pool:
        futures = [pool.submit(open_target, config, env_name, entry=entry) for entry in env.hosts]
        opened, failures = [], []
        for entry, future in zip(env.hosts, futures, strict=True):
            try:
                opened.append(future.result())
            except DeployerError as failed:
                failures.append((entry, failed))
    if failures:
        for target in opened:
            target.host.close()
        entry, error = failures[0]
        others = f" (and {len(failures) - 1} other host(s))" if len(failures) > 1 else ""
        error.message = f"host {entry.spec} of {env_name}{others}: {error.message}"
        raise error
    return opened


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


# Moves the files of a deployment made before state_dir existed out of its checkout, without
# losing one: each file is moved only where nothing has that name yet; a name present in both
# places is kept in both, and reported. $1 the old state dir, $2 the new one, $3 the old
# backup dir ("" when it was configured explicitly), $4 the new backup dir.
MIGRATE_SCRIPT = r"""
set -u
old=$1 new=$2 oldb=$3 newb=$4
moved=0 kept=0
move_all() {  # move_all FROM TO PATTERN
    [ -d "$1" ] || return 0
    mkdir -p "$2" || exit 1
    chmod 700 "$2"
    for f in "$1"/$3; do
        [ -e "$f" ] || continue
        name=$(basename "$f")
        if [ -e "$2/$name" ]; then kept=$((kept + 1)); echo "kept $f"; continue; fi
        mv "$f" "$2/$name" || exit 1
        moved=$((moved + 1))
    done
    rmdir "$1" 2>/dev/null
    return 0
}
if [ -d "$old/lock" ]; then echo "legacy-lock $old/lock"; exit 3; fi
# Only the dumps deployer made (their ids are UTC times) leave the old backup folder.
if [ -n "$oldb" ]; then move_all "$oldb" "$newb" '[0-9]*T[0-9]*Z.*'; fi
move_all "$old" "$new" '*'

echo "moved $moved kept $kept"
"""


def migrate_state_argv(target: Target) -> list[str] | None:
    """The command that moves a legacy in-checkout state (and default backups) to state_dir.

    None when the environment's state_dir is the legacy place (configured so): nothing moves.
    """
    old = posixpath.join(target.env.path, LEGACY_STATE_DIR)
    if posixpath.normpath(target.state_dir) == posixpath.normpath(old):
        return None
    old_backups = posixpath.join(target.env.path, LEGACY_BACKUP_DIR)
    explicit = posixpath.normpath(target.env.backup_dir) == posixpath.normpath(old_backups)
    return ["sh", "-c", MIGRATE_SCRIPT, "sh", old, target.state_dir, "" if explicit else old_backups, target.env.backup_dir]
