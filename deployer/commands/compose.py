"""docker compose command builders and fact parsers (pure: argv in, facts out).

Supports Compose v2 (``docker compose``) and v1 (``docker-compose``); which one a host has
is probed once per connection (:func:`deployer.server.target.detect_compose`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

V2: tuple[str, ...] = ("docker", "compose")
V1: tuple[str, ...] = ("docker-compose",)


def version_argv(program: Sequence[str]) -> list[str]:
    """The argv that prints the version of one compose flavour."""
    return [*program, "version", "--short"]


@dataclass(frozen=True)
class Compose:
    """One compose project on one host: every method returns an argv, nothing runs here."""

    program: tuple[str, ...]
    project: str
    project_dir: str
    files: tuple[str, ...]
    env_file: str | None = None
    # Files deployer adds after the user's (the proxy's: the web service publishes no port).
    # Left out of :meth:`config`, which reads what the user's files say.
    overrides: tuple[str, ...] = ()

    @property
    def is_v2(self) -> bool:
        return self.program == V2

    def base(self, *, overrides: bool = True) -> list[str]:
        argv = [*self.program, "--project-name", self.project, "--project-directory", self.project_dir]
        for file in (*self.files, *(self.overrides if overrides else ())):
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
        no_recreate: bool = False,
        scale: Mapping[str, int] | None = None,
    ) -> list[str]:
        argv = [*self.base(), "up", "--detach"]
        if no_build:
            argv.append("--no-build")
        if no_deps:
            argv.append("--no-deps")
        if no_recreate:
            argv.append("--no-recreate")
        for service, count in (scale or {}).items():
            argv += ["--scale", f"{service}={count}"]
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
        labels: Mapping[str, str] | None = None,
        tty: bool = False,
    ) -> list[str]:
        """A one-off container of ``service`` running ``command``, removed afterwards.

        A ``name`` lets the caller remove the container if the compose client is killed
        (a timed-out migration must not go on running behind our back). ``tty``: on a
        pseudo-terminal (compose's default when its stdin is one); else ``-T``.
        """
        argv = [*self.base(), "run", "--rm"] + ([] if tty else ["-T"])
        if name:
            argv += ["--name", name]
        if no_deps:
            argv.append("--no-deps")
        for key, value in (labels or {}).items():
            argv += ["--label", f"{key}={value}"]
        for key, value in (env or {}).items():
            argv += ["-e", f"{key}={value}"]
        return [*argv, service, *command]

    def exec(self, service: str, command: Sequence[str], *, env: Mapping[str, str] | None = None) -> list[str]:
        """``command`` in the running container of ``service`` (no TTY)."""
        argv = [*self.base(), "exec", "-T"]
        for key, value in (env or {}).items():
            argv += ["-e", f"{key}={value}"]
        return [*argv, service, *command]

    def logs(self, services: Sequence[str] = (), *, follow: bool = False, since: str | None = None,
             tail: str | None = None, color: bool = False) -> list[str]:
        """The services' container logs (all services when none is named), each line prefixed
        with its container; ``tail``: lines per container (a number or ``all``)."""
        argv = [*self.base(), "logs"]
        if follow:
            argv.append("--follow")
        if since:
            argv += ["--since", since]
        if tail is not None:
            argv += ["--tail", tail]
        if not color:
            argv.append("--no-color")
        return [*argv, *services]

    def stop(self, services: Sequence[str] = (), *, timeout: int | None = None) -> list[str]:
        argv = [*self.base(), "stop"]
        if timeout is not None:
            argv += ["--timeout", str(timeout)]
        return argv + list(services)

    def start(self, services: Sequence[str] = ()) -> list[str]:
        return [*self.base(), "start", *services]

    def rm(self, services: Sequence[str], *, stop: bool = False) -> list[str]:
        """Remove the containers of ``services`` (stopping them first with ``stop``)."""
        argv = [*self.base(), "rm", "--force"]
        if stop:
            argv.append("--stop")
        return argv + list(services)

    def down(self, *, volumes: bool = False) -> list[str]:
        argv = [*self.base(), "down", "--remove-orphans"]
        if volumes:
            argv.append("--volumes")
        return argv

    def config(self) -> list[str]:
        """The resolved configuration of the checkout, as YAML (parse with :func:`parse_config`)."""
        return [*self.base(overrides=False), "config"]

    def config_hash(self, service: str) -> list[str]:
        """argv printing ``SERVICE HASH``: the configuration hash compose labels the
        service's containers with (``com.docker.compose.config-hash``); a container whose
        label differs runs an older configuration."""
        return [*self.base(), "config", "--hash", service]

    def config_of(self, compose_file: str, variables: str | None) -> tuple[list[str], bytes]:
        """argv and stdin that resolve ``compose_file`` (a file's text) on the host, read-only.

        Preflight resolves the compose file of the commit about to ship, with the variables
        deploy.toml gives it, before anything on the host changed: both travel on stdin
        (the variables first, ``len`` bytes, into a private temporary file the script
        removes), never on a command line. ``variables`` None: compose reads the project
        directory's ``.env`` as it would for every other command.
        """
        argv = [*self.program, "--project-name", self.project, "--project-directory", self.project_dir, "--file", "-"]
        body = compose_file.encode("utf-8")
        if variables is None:
            return [*argv, "config"], body
        head = variables.encode("utf-8")
        return ["sh", "-c", _CONFIG_WITH_VARIABLES, "sh", str(len(head)), *argv], head + body


# $1: the length of the env file at the front of stdin; the rest of the arguments are the
# compose command, to which --env-file and `config` are added; compose reads the rest of stdin.
_CONFIG_WITH_VARIABLES = (
    'set -e; umask 077; d=$(mktemp -d); trap \'rm -rf "$d"\' EXIT; n=$1; shift; '
    'head -c "$n" > "$d/env"; "$@" --env-file "$d/env" config'
)


@dataclass(frozen=True)
class ServiceConfig:
    """One service of a resolved compose configuration."""

    name: str
    image: str = ""
    environment: Mapping[str, str] = field(default_factory=dict)
    build_context: str | None = None  # absolute on the host after `compose config`
    dockerfile: str | None = None
    depends_on: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()  # named volumes it mounts (their keys in `volumes:`)
    has_healthcheck: bool = False
    publishes_ports: bool = False
    ports: tuple[PublishedPort, ...] = ()  # what it publishes on the host


@dataclass(frozen=True)
class PublishedPort:
    """One ``ports`` entry: ``host_ip:published:target``."""

    target: int  # inside the container
    published: int | None  # on the host (None: an ephemeral port)
    host_ip: str = ""  # "" : every address


@dataclass(frozen=True)
class ComposeConfig:
    """What ``compose config`` says: services, and the named volumes with their engine names."""

    services: Mapping[str, ServiceConfig]
    volumes: Mapping[str, str] = field(default_factory=dict)  # key -> the docker volume's name
    # The whole resolved document (a Swarm stack is rendered from it); kept out of repr and
    # comparisons: it holds the resolved secrets.
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def build_contexts(self) -> dict[str, str]:
        """service -> build context, for the services compose builds."""
        return {name: s.build_context for name, s in self.services.items() if s.build_context}


def parse_config(text: str, project: str) -> ComposeConfig:
    """Parse ``compose config`` YAML (v1 or v2); ``project`` names volumes without a ``name:``."""
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"compose config printed something that is not YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError("compose config printed no mapping")
    services: dict[str, ServiceConfig] = {}
    for name, raw in (data.get("services") or {}).items():
        raw = raw or {}
        environment = raw.get("environment") or {}
        if isinstance(environment, list):  # KEY=VALUE items (older output)
            environment = dict(item.partition("=")[::2] for item in environment)
        build = raw.get("build")
        if isinstance(build, str):
            build = {"context": build}
        depends = raw.get("depends_on") or ()
        mounts = []
        for volume in raw.get("volumes") or ():
            if isinstance(volume, dict) and volume.get("type", "volume") == "volume" and volume.get("source"):
                mounts.append(str(volume["source"]))
            elif isinstance(volume, str) and ":" in volume and not volume.startswith(("/", ".", "~")):
                mounts.append(volume.split(":", 1)[0])
        services[str(name)] = ServiceConfig(
            name=str(name),
            image=str(raw.get("image") or ""),
            environment={str(k): "" if v is None else str(v) for k, v in environment.items()},
            build_context=str(build["context"]) if isinstance(build, dict) and build.get("context") else None,
            dockerfile=str(build.get("dockerfile")) if isinstance(build, dict) and build.get("dockerfile") else None,
            depends_on=tuple(sorted(depends)) if isinstance(depends, (dict, list)) else (),
            volumes=tuple(mounts),
            has_healthcheck=bool(raw.get("healthcheck")) and not (raw.get("healthcheck") or {}).get("disable"),
            publishes_ports=bool(raw.get("ports")),
            ports=published_ports(raw.get("ports") or ()),
        )
    volumes = {}
    for key, raw in (data.get("volumes") or {}).items():
        raw = raw or {}
        external = raw.get("external")
        default = str(key) if external else f"{project}_{key}"
        volumes[str(key)] = str(raw.get("name") or default)
    return ComposeConfig(services=services, volumes=volumes, raw=data)


def published_ports(raw: object) -> tuple[PublishedPort, ...]:
    """``ports`` as compose config prints them (long syntax; v1 may print short strings)."""
    ports = []
    for entry in raw if isinstance(raw, list) else ():
        if isinstance(entry, dict) and str(entry.get("target", "")).isdigit():
            published = str(entry.get("published") or "")
            ports.append(PublishedPort(int(entry["target"]), int(published) if published.isdigit() else None,
                                       str(entry.get("host_ip") or "")))
        elif isinstance(entry, (str, int)):
            parts = str(entry).split("/")[0].rsplit(":", 2)
            if parts[-1].isdigit():
                published = parts[-2] if len(parts) >= 2 else ""
                ports.append(PublishedPort(int(parts[-1]), int(published) if published.isdigit() else None,
                                           parts[0] if len(parts) == 3 else ""))
    return tuple(ports)


# Runs a command in the running task container of a Swarm service on this node: $1 the
# service (<stack>_<name>), then KEY=VALUE variables, "--", and the command.
_TASK_EXEC = (
    'c=$(docker ps --quiet --filter "label=com.docker.swarm.service.name=$1" --filter status=running | head -n 1); '
    '[ -n "$c" ] || { echo "no running task of $1 on this node" >&2; exit 125; }; shift; '
    'variables=1; fresh=1; '
    'for a in "$@"; do '
    '[ "$fresh" = 1 ] && { set --; fresh=0; }; '
    'if [ "$variables" = 1 ]; then '
    'if [ "$a" = "--" ]; then variables=0; set -- "$@" "$c"; else set -- "$@" -e "$a"; fi; '
    'else set -- "$@" "$a"; fi; '
    'done; exec docker exec -i "$@"'
)


@dataclass(frozen=True)
class SwarmProject(Compose):
    """A compose project whose services run as a Swarm stack of the same name (see
    :mod:`deployer.swarm.stack`): compose still resolves the file, builds the images and runs
    one-off containers (on the stack's attachable networks, through deployer's override);
    the services' containers are Swarm's tasks, reached here with the docker CLI."""

    def service_name(self, service: str) -> str:
        return f"{self.project}_{service}"

    def exec(self, service: str, command: Sequence[str], *, env: Mapping[str, str] | None = None) -> list[str]:
        """``command`` in the service's running task on this node (the db service runs on the primary)."""
        variables = [f"{key}={value}" for key, value in (env or {}).items()]
        return ["sh", "-c", _TASK_EXEC, "sh", self.service_name(service), *variables, "--", *command]

    def stop(self, services: Sequence[str] = (), *, timeout: int | None = None) -> list[str]:
        """Scale the services to 0 (their tasks stop; :meth:`start` undoes it)."""
        return ["docker", "service", "scale", "--detach", *[f"{self.service_name(s)}=0" for s in services]]

    def start(self, services: Sequence[str] = ()) -> list[str]:
        """Undo :meth:`stop`: each service back to its spec before (``docker service rollback``)."""
        script = 'for s in "$@"; do docker service rollback --detach "$s" >/dev/null || exit $?; done'
        return ["sh", "-c", script, "sh", *[self.service_name(s) for s in services]]

    def rm(self, services: Sequence[str], *, stop: bool = False) -> list[str]:
        return ["docker", "service", "rm", *[self.service_name(s) for s in services]]

    def up(self, services: Sequence[str] = (), **_: object) -> list[str]:
        raise NotImplementedError("on Swarm the stack is deployed (deployer.swarm), not brought up by compose")


# --- a compose file as its author wrote it (before `compose config`) ---------------------


@dataclass(frozen=True)
class Variable:
    """One ``${NAME...}`` (or ``$NAME``) of a compose file, as compose reads it."""

    name: str
    default: str | None = None  # ${NAME:-default} / ${NAME-default}
    required: bool = False  # ${NAME:?message} / ${NAME?message}: compose refuses to run without it
    message: str = ""  # the required variable's message


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


def read_file(text: str) -> dict[str, Any]:
    """A compose file's YAML (anchors and merge keys resolved); ValueError names what is wrong."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise ValueError("not a compose file: its top level is not a mapping")
    services = data.get("services")
    if not isinstance(services, dict) or not services:
        raise ValueError("not a compose file: it has no services")
    return data


def interpolate(text: str, values: Mapping[str, str], found: list[Variable] | None = None) -> str:
    """``text`` with compose's variable syntax resolved from ``values``: ``$$`` is ``$``;
    ``${NAME}`` / ``$NAME``; ``:-`` / ``-`` defaults (nested ones too), ``:?`` / ``?``
    required, ``:+`` / ``+`` alternatives. An unset variable without a default is empty, as
    compose makes it (and warns). Every variable met is appended to ``found``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt != "{":
            bare = _NAME.match(text, i + 1)
            if bare is None:
                out.append(char)
                i += 1
                continue
            if found is not None:
                found.append(Variable(bare.group()))
            out.append(values.get(bare.group(), ""))
            i = bare.end()
            continue
        name = _NAME.match(text, i + 2)
        end = _closing(text, i + 2)
        if name is None or end is None:  # not a variable compose would read: kept as written
            out.append(char)
            i += 1
            continue
        rest = text[name.end():end]
        operator = next((op for op in _OPERATORS if rest.startswith(op)), "")
        if rest and not operator:
            out.append(char)
            i += 1
            continue
        argument = interpolate(rest[len(operator):], values, found) if operator else ""
        value = values.get(name.group())
        set_, non_empty = value is not None, bool(value)
        if found is not None:
            found.append(Variable(name.group(), default=argument if operator in (":-", "-") else None,
                                  required=operator in (":?", "?"), message=argument if "?" in operator else ""))
        if operator in (":-", "-"):
            use_default = not non_empty if operator == ":-" else not set_
            out.append(argument if use_default else value or "")
        elif operator in (":+", "+"):
            out.append(argument if (non_empty if operator == ":+" else set_) else "")
        else:
            out.append(value or "")
        i = end + 1
    return "".join(out)


def _closing(text: str, start: int) -> int | None:
    """The index of the ``}`` that closes a ``${`` whose name starts at ``start``."""
    depth = 0
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return None


def interpolate_tree(node: object, values: Mapping[str, str], found: list[Variable] | None = None) -> object:
    """Every string value of a compose file (as :func:`read_file` returns it) interpolated;
    keys are not, as compose does not."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, values, found) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, values, found) for item in node]
    if isinstance(node, str):
        return interpolate(node, values, found)
    return node


def variables(data: object) -> list[Variable]:
    """Every variable a compose file (as :func:`read_file` returns it) reads, in order."""
    found: list[Variable] = []
    interpolate_tree(data, {}, found)
    return found
