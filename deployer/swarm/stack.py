"""The stack deployer gives ``docker stack deploy``, rendered from the user's compose file
(pure: the resolved compose configuration in, a stack document out).

The user keeps one compose file for every engine; what Swarm needs differently is added
here, and every change is listed in the notes the dry run prints:

* images by id (``sha256:…``): every node runs exactly the image that was built and copied
  to it, and no node asks a registry for it;
* the web service publishes nothing and runs behind deployer's proxy (a service of the
  stack on every node, publishing the port in host mode, finding the web tasks by DNS):
  two web tasks can then overlap during an update (``order: start-first``), which a port
  published by the tasks themselves would forbid;
* updates roll back on failure (``failure_action: rollback``; Swarm's default, ``pause``,
  leaves half-updated services) and are watched at least as long as a running task's
  healthcheck takes to fail it (a shorter ``monitor`` lets a broken update pass);
* the db service stays on the primary node (its volume lives there), stops before it
  starts again (two servers on one data directory corrupt it) and never runs twice;
* services that publish nothing resolve by DNS round robin (``endpoint_mode: dnsrr``): no
  virtual IP, which needs IPVS in the kernel;
* networks are overlay networks one-off containers may join (``attachable``): the
  migration runs in one, on the primary, with the new image;
* containers are labelled as compose labels its own (project, service), so the readers of
  containers find the stack's on the primary. Nothing that changes from release to release
  goes into a service's spec but its image: a service whose image did not change (the
  database, the proxy) is not touched by a release.

What a stack cannot express is dropped and said: ``build``, ``depends_on`` (a stack does not
order its services: deployer starts the database first and migrates before the update),
``container_name``, ``profiles`` and a published port's host address.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deployer.commands.docker import ONEOFF_LABEL, SERVICE_LABEL

PROJECT_LABEL = "com.docker.compose.project"
PROXY_SERVICE = "deployer-proxy"
PROXY_CONFIG = "deployer_proxy"
STACK_VERSION = "3.8"
PROXY_CONFIG_TARGET = "/usr/local/etc/haproxy/haproxy.cfg"

# Keys of a service a stack (compose file format 3.8) takes as they are.
_KEPT = {
    "cap_add", "cap_drop", "command", "configs", "deploy", "dns", "dns_search", "entrypoint", "environment",
    "expose", "extra_hosts", "healthcheck", "hostname", "image", "init", "isolation", "labels", "logging",
    "networks", "ports", "read_only", "secrets", "stop_grace_period", "stop_signal", "sysctls", "tmpfs", "tty",
    "stdin_open", "ulimits", "user", "volumes", "working_dir",
}
# Dropped, with the reason the dry run gives.
_DROPPED = {
    "build": "built by deployer on the primary, then copied to every node",
    "depends_on": "a stack does not order its services: deployer starts the database and migrates first",
    "container_name": "Swarm names the tasks",
    "restart": "Swarm restarts tasks (deploy.restart_policy)",
    "profiles": "a stack has no profiles",
    "pull_policy": "images are copied to the nodes, never pulled",
    "env_file": "already read into environment",
    "links": "services reach each other by name on the stack's networks",
    "platform": "not part of a stack",
}


@dataclass(frozen=True)
class SwarmProxy:
    """deployer's proxy in the stack: where it publishes and where the web tasks listen."""

    image: str  # by id
    published: int  # on every node (host mode)
    web_port: int
    config_file: str  # haproxy.cfg on the primary, given to the stack as a config
    config_name: str  # the config's name: changes with its content (configs are immutable)
    listen_port: int = 8080


@dataclass(frozen=True)
class Rendering:
    """What to render: the configuration, the images and where things go."""

    project: str
    web: str
    db: str  # "" without a db service
    images: Mapping[str, str]  # service -> the image it runs (an id)
    primary_node: str  # the swarm id of the primary node: the db service runs there
    release: str
    proxy: SwarmProxy | None
    batch: int = 1  # tasks updated at a time
    pause: float = 0.0  # seconds between them
    only: tuple[str, ...] | None = None  # these services only (the database before the first migration)
    notes: list[str] = field(default_factory=list, compare=False)


def seconds(value: object) -> float:
    """A compose duration (``"1m30s"``, ``"500ms"``, a number of seconds) in seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value or "").strip()
    if not text:
        return 0.0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    total = 0.0
    matched = ""
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", text):
        total += float(number) * units[unit]
        matched += f"{number}{unit}"
    if matched != text:
        raise ValueError(f"not a duration: {text!r}")
    return total


def health_window(service: Mapping[str, Any]) -> float:
    """How long a running task's healthcheck takes to call it unhealthy: ``retries`` failed
    checks ``interval`` apart, the last up to ``timeout`` (Docker's defaults: 30 s, 30 s, 3).

    Swarm calls a task with a healthcheck running only once it reported healthy (its start
    period is over by then, and its address joins the service's DNS only then), and the
    ``monitor`` of an update starts there: a monitor shorter than this window lets a task that
    turns unhealthy right after it started pass."""
    check = service.get("healthcheck") or {}
    if not check or check.get("disable"):
        return 0.0
    interval = seconds(check.get("interval") or "30s")
    timeout = seconds(check.get("timeout") or "30s")
    retries = int(check.get("retries") or 3)
    return retries * interval + timeout


def _duration(value: float) -> str:
    return f"{max(0, round(value))}s"


def _ports(service_name: str, ports: Sequence[Any], notes: list[str]) -> list[dict[str, Any]]:
    out = []
    for entry in ports:
        if not isinstance(entry, Mapping):
            out.append(entry)
            continue
        port = {k: v for k, v in entry.items() if k in ("target", "published", "protocol", "mode")}
        if "published" in port and str(port["published"]).isdigit():
            port["published"] = int(port["published"])
        if entry.get("host_ip"):
            notes.append(f"{service_name}: Swarm publishes on every address of a node, not on {entry['host_ip']} only")
        out.append(port)
    return out


def _volumes(volumes: Sequence[Any]) -> list[Any]:
    out = []
    for entry in volumes:
        if isinstance(entry, Mapping):
            volume = dict(entry)
            bind = dict(volume.get("bind") or {})
            bind.pop("create_host_path", None)  # compose's, not a stack's
            bind.pop("selinux", None)
            if bind:
                volume["bind"] = bind
            else:
                volume.pop("bind", None)
            if not volume.get("volume"):
                volume.pop("volume", None)
            out.append(volume)
        else:
            out.append(entry)
    return out


def _merge(defaults: Mapping[str, Any], user: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**defaults, **(user or {})}


def _service(name: str, raw: Mapping[str, Any], plan: Rendering) -> dict[str, Any]:
    notes = plan.notes
    service: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if key in _KEPT:
            service[key] = value
        elif key == "restart" and value in ("always", "unless-stopped"):
            continue  # what Swarm does anyway
        elif key in _DROPPED:
            notes.append(f"{name}: {key} left out ({_DROPPED[key]})")
        else:
            notes.append(f"{name}: {key} left out (not part of a stack)")
    image = plan.images.get(name)
    if image:
        service["image"] = image
    service["labels"] = {**{str(k): str(v) for k, v in (raw.get("labels") or {}).items()},
                         PROJECT_LABEL: plan.project, SERVICE_LABEL: name, ONEOFF_LABEL: "False"}
    if "volumes" in service:
        service["volumes"] = _volumes(service["volumes"])
    deploy = dict(service.get("deploy") or {})
    restart = raw.get("restart")
    if restart in ("no", "on-failure") and "restart_policy" not in deploy:
        deploy["restart_policy"] = {"condition": "none" if restart == "no" else "on-failure"}
    if name == plan.web and plan.proxy is not None:
        if service.pop("ports", None):
            notes.append(f"{name}: its ports are published by deployer's proxy ({PROXY_SERVICE}), which finds its tasks by DNS")
    elif service.get("ports"):
        service["ports"] = _ports(name, service["ports"], notes)
    if not service.get("ports"):
        deploy.setdefault("endpoint_mode", "dnsrr")
    window = health_window(raw)
    if name == plan.db:
        deploy = _database(name, deploy, plan)
    else:
        update = dict(deploy.get("update_config") or {})
        if update.get("failure_action") in (None, "pause"):
            if update.get("failure_action") == "pause":
                notes.append(f"{name}: update_config.failure_action pause -> rollback (a paused update leaves the service half updated)")
            update["failure_action"] = "rollback"
        monitor = max(window + 5.0, 10.0)
        if "monitor" in update and seconds(update["monitor"]) < monitor:
            notes.append(f"{name}: update_config.monitor {update['monitor']} -> {_duration(monitor)} "
                         "(shorter than its healthcheck takes to fail, a broken update would pass)")
            update["monitor"] = _duration(monitor)
        defaults = {"order": "start-first", "parallelism": plan.batch, "delay": _duration(plan.pause),
                    "monitor": _duration(monitor)}
        deploy["update_config"] = _merge(defaults, update)
        deploy["rollback_config"] = _merge({"order": deploy["update_config"]["order"], "parallelism": plan.batch},
                                           deploy.get("rollback_config"))
    service["deploy"] = deploy
    return service


def _database(name: str, deploy: dict[str, Any], plan: Rendering) -> dict[str, Any]:
    notes = plan.notes
    if deploy.get("mode") in ("global", "global-job", "replicated-job") or int(deploy.get("replicas") or 1) != 1:
        raise ValueError(f"the db service {name} must run exactly one task (deploy.mode replicated, replicas 1): "
                         "two database servers would each keep part of the writes")
    deploy["replicas"] = 1
    placement = dict(deploy.get("placement") or {})
    constraints = [c for c in placement.get("constraints") or [] if not str(c).replace(" ", "").startswith("node.id==")]
    placement["constraints"] = [*constraints, f"node.id == {plan.primary_node}"]
    placement.pop("max_replicas_per_node", None)
    deploy["placement"] = placement
    update = dict(deploy.get("update_config") or {})
    if update.get("order") == "start-first":
        notes.append(f"{name}: update_config.order start-first -> stop-first (two servers on one data directory corrupt it)")
    update["order"] = "stop-first"
    update.setdefault("failure_action", "rollback")
    deploy["update_config"] = update
    deploy["rollback_config"] = {**dict(deploy.get("rollback_config") or {}), "order": "stop-first"}
    return deploy


def _networks(raw: Mapping[str, Any]) -> dict[str, Any]:
    networks: dict[str, Any] = {}
    for key, value in (raw.get("networks") or {"default": {}}).items():
        value = dict(value or {})
        if value.get("external"):
            networks[key] = {k: v for k, v in value.items() if k in ("external", "name")}
            continue
        network: dict[str, Any] = {"driver": "overlay", "attachable": True}
        for option in ("name", "driver_opts", "labels", "internal"):
            if value.get(option):
                network[option] = value[option]
        if value.get("driver") not in (None, "bridge", "overlay"):
            network["driver"] = value["driver"]
        networks[key] = network
    networks.setdefault("default", {"driver": "overlay", "attachable": True})
    return networks


def _proxy(plan: Rendering, web: Mapping[str, Any]) -> dict[str, Any]:
    proxy = plan.proxy
    assert proxy is not None
    networks = web.get("networks") or {"default": None}
    return {
        "image": proxy.image,
        "ports": [{"target": proxy.listen_port, "published": proxy.published, "protocol": "tcp", "mode": "host"}],
        "networks": list(networks) if isinstance(networks, Mapping) else list(networks),
        "configs": [{"source": PROXY_CONFIG, "target": PROXY_CONFIG_TARGET}],
        "labels": {PROJECT_LABEL: plan.project, SERVICE_LABEL: PROXY_SERVICE, ONEOFF_LABEL: "False"},
        "deploy": {"mode": "global", "update_config": {"order": "stop-first", "failure_action": "rollback"},
                   "restart_policy": {"condition": "any", "delay": "1s"}},
    }


def render(raw: Mapping[str, Any], plan: Rendering) -> dict[str, Any]:
    """The stack document for ``raw`` (``docker compose config``, parsed); ``plan.notes``
    receives what was changed and why."""
    services = raw.get("services") or {}
    if plan.web not in services:
        raise ValueError(f"the compose file has no service {plan.web} (app.web_service)")
    chosen = [name for name in services if plan.only is None or name in plan.only]
    out: dict[str, Any] = {"version": STACK_VERSION, "services": {}}
    for name in sorted(chosen):
        out["services"][name] = _service(name, services[name] or {}, plan)
    if plan.proxy is not None and (plan.only is None or PROXY_SERVICE in plan.only):
        out["services"][PROXY_SERVICE] = _proxy(plan, services[plan.web] or {})
        out["configs"] = {PROXY_CONFIG: {"file": plan.proxy.config_file, "name": plan.proxy.config_name}}
    out["networks"] = _networks(raw)
    volumes = {key: {k: v for k, v in (value or {}).items() if k in ("name", "external", "driver", "driver_opts", "labels")}
               for key, value in (raw.get("volumes") or {}).items()}
    if volumes:
        out["volumes"] = volumes
    for kind in ("secrets", "configs"):
        for key, value in (raw.get(kind) or {}).items():
            entry = {k: v for k, v in (value or {}).items() if k in ("file", "external", "name")}
            out.setdefault(kind, {})[key] = entry
    return out


def unchanged_notes(notes: Sequence[str]) -> list[str]:
    """The notes once each, in order."""
    return list(dict.fromkeys(notes))
