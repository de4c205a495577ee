"""The steps of a release, rollback and recovery on Docker Swarm (``engine = "swarm"``).

The playbooks stay the same; the step kinds whose work differs on Swarm call here:

* ``preflight`` — the primary is a manager, every host is a node of its swarm, and every
  node Swarm may place a task on is one of the hosts (it needs the images);
* ``build`` (and a rollback's ``switch``) — the images, built on the primary, are copied
  to the other nodes (:mod:`deployer.swarm.images`: only the layers a node lacks);
* ``database_up`` — a first release deploys the db service alone (plus the proxy), so the
  migration never meets a web task of the new code;
* ``hold`` — pause mode scales the app's services to 0: deployer's proxy holds the
  requests until the new tasks answer;
* ``swap`` / ``up`` — ``docker stack deploy`` of the stack rendered from the compose file
  (:mod:`deployer.swarm.stack`), watched until every service runs its image in every task;
  Swarm's own rollback of a failing update is reported as the step's failure;
* recovery — the previous release's stack file, deployed again (each release's stays on the
  primary); a first release removes the stack.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from deployer.actions import Command, Probe, Read, Skip, Wait, Write
from deployer.commands import swarm as swarm_cmds
from deployer.commands.compose import ComposeConfig
from deployer.config import ProxyConfig
from deployer.errors import ConfigError, DeployerError, HostError, RefusedError
from deployer.proxy.haproxy import ProxySettings, render_swarm_config
from deployer.proxy.site import LISTEN_PORT, Site, site_for
from deployer.swarm import runtime
from deployer.swarm.stack import PROXY_SERVICE, Rendering, SwarmProxy, render

if TYPE_CHECKING:
    from deployer.hosts import Host
    from deployer.steps.context import Context
    from deployer.steps.recovery import Recovery

STACK_DIR = "swarm"
DEPLOY_TIMEOUT = 600.0


def stack_file(state_dir: str, release_id: str) -> str:
    """Where a release's rendered stack is kept on the primary (a recovery deploys it again)."""
    return posixpath.join(state_dir, STACK_DIR, f"{release_id}.yml")


def proxy_file(state_dir: str) -> str:
    return posixpath.join(state_dir, STACK_DIR, "haproxy.cfg")


# --------------------------------------------------------------------------- facts


def site(ctx: Context, compose: ComposeConfig | None = None) -> Site:
    """deployer's proxy in the stack: on Swarm there always is one (every key of the proxy
    table inferred when the table is left out)."""
    if "swarm_site" not in ctx.scratch:
        config = compose if compose is not None else ctx.known.compose
        env = ctx.env if ctx.env.proxy is not None else replace(ctx.env, proxy=ProxyConfig())
        found = site_for(ctx.target.config, env, config)
        assert found is not None
        ctx.scratch["swarm_site"] = replace(found, name=f"{ctx.app.name}_{PROXY_SERVICE}",
                                            publish=found.publish.rpartition(":")[2])
    return ctx.scratch["swarm_site"]


def _proxy_image(ctx: Context) -> str:
    return (ctx.env.proxy or ProxyConfig()).image


def image_names(ctx: Context, compose: ComposeConfig) -> dict[str, str]:
    """service -> the image name it runs: the built ones under the names compose gives them,
    the others as the compose file names them; the proxy's."""
    from deployer.steps.common import built_images

    names = {name: service.image for name, service in compose.services.items() if service.image}
    names.update(built_images(ctx))
    names[PROXY_SERVICE] = _proxy_image(ctx)
    return names


def nodes(ctx: Context) -> list[tuple[str, Host]]:
    """The other nodes' connections (opened by preflight), as (name, host)."""
    return list(ctx.scratch.get("swarm_nodes") or [])


def check(ctx: Context) -> str:
    """Preflight on Swarm: the primary is a manager; every host is a node of its swarm; every
    node Swarm may place a task on is a host. The other hosts' connections are kept for the
    images. Refuses, naming the host and the fix."""
    from deployer.hosts import connect

    env, app = ctx.env, ctx.app
    if not app.has_db_service:
        raise ConfigError(
            'engine = "swarm" needs a db service: a SQLite file in a volume lives on one node only',
            hint="run the database as a service of the compose file (e.g. postgres), or use engine = \"compose\"",
        )
    primary = runtime.swarm_state(ctx.host)
    if not primary.active:
        raise RefusedError(f"{ctx.host.name} is not part of a swarm (its state: {primary.state})",
                           hint=f"on {ctx.host.name}: `docker swarm init`, then `docker swarm join` the other hosts")
    if not primary.manager:
        raise RefusedError(f"{ctx.host.name} is a worker of its swarm, not a manager: only a manager deploys a stack",
                           hint="make the primary (the first of hosts, or primary = true) a manager node")
    found = runtime.nodes(ctx.host)
    known = {n.id: n for n in found}
    members: list[tuple[str, Host]] = list(ctx.scratch.get("swarm_nodes") or [])
    if not members and env.nodes:
        with ThreadPoolExecutor(max_workers=min(8, len(env.nodes)), thread_name_prefix="swarm-connect") as pool:
            futures = [(entry, pool.submit(connect, entry.spec)) for entry in env.nodes]
            failures = []
            for entry, future in futures:
                try:
                    members.append((str(entry.spec), future.result()))
                except DeployerError as error:
                    failures.append((entry, error))
        ctx.scratch["swarm_nodes"] = members
        ctx.scratch.setdefault("cleanups", []).append(lambda: _close(members))
        if failures:
            entry, failure = failures[0]
            failure.message = f"host {entry.spec} of {env.name}: {failure.message}"
            raise failure
    ids = {primary.node_id: ctx.host.name}
    for name, host in members:
        state = runtime.swarm_state(host)
        if not state.active or state.node_id not in known:
            raise RefusedError(f"host {name} is not a node of the swarm {ctx.host.name} manages",
                               hint=f"join it: `docker swarm join-token worker` on {ctx.host.name} prints the command")
        ids[state.node_id] = name
    unlisted = [n for n in found if n.schedulable and n.id not in ids]
    if unlisted:
        listed = ", ".join(f"{n.hostname} ({n.address})" for n in unlisted)
        raise RefusedError(
            f"Swarm may place tasks on {listed}, which {'is' if len(unlisted) == 1 else 'are'} not in the hosts of "
            f"{env.name}: the release's images would not be there",
            hint="add it to hosts in deploy.toml, or drain it (`docker node update --availability drain NODE`)",
        )
    ctx.scratch["swarm_primary_node"] = primary.node_id
    # What the stack had before this run: a failed first release removes only what it added.
    ctx.scratch["swarm_services"] = [s.short for s in runtime.services(ctx.host, ctx.app.name)]
    ctx.scratch["swarm_node_names"] = {n.id: n.hostname for n in found}
    managers = sum(1 for n in found if n.role == "manager")
    return f"swarm of {len(found)} node(s) ({managers} manager(s)), {ctx.host.name} a manager"


def _close(members: list[tuple[str, Host]]) -> None:
    for _, host in members:
        host.close()


# --------------------------------------------------------------------------- images


def _send_all(ctx: Context, names: dict[str, str]) -> str:
    """Copy each image to each node that lacks it, nodes side by side."""
    from deployer.swarm.images import send

    members = nodes(ctx)
    if not members:
        return "one node: nothing to copy"
    # The db service runs on the primary only: its image stays there.
    images = sorted({image for service, image in names.items() if service != ctx.app.db_service})

    def one(member: tuple[str, Host]) -> list[str]:
        name, host = member
        done = []
        for image in images:
            sent = send(ctx.host, host, image, log=ctx.log)
            done.append(f"{image} to {name}: " + (sent.describe() if sent is not None else "already there"))
        return done

    with ThreadPoolExecutor(max_workers=min(4, len(members)), thread_name_prefix="swarm-images") as pool:
        reports = [line for lines in pool.map(one, members) for line in lines]
    return f"images on {len(members) + 1} node(s): " + "; ".join(reports)


def distribute(ctx: Context, compose: ComposeConfig | None = None):  # noqa: ANN201 - generator of actions
    """The stack's images on every node (the db's on the primary only)."""
    config = compose or ctx.known.compose
    names = image_names(ctx, config)
    detail = yield Wait(f"copy {', '.join(sorted(set(names.values())))} to "
                        f"{', '.join(name for name, _ in nodes(ctx)) or 'no other node'} (the layers each lacks)",
                        lambda c: _send_all(c, names))
    return detail or f"images to {len(nodes(ctx))} other node(s)"


def resolve_images(ctx: Context, compose: ComposeConfig):  # noqa: ANN201 - generator -> dict[str, str]
    """service -> image id on the primary, for every service of the stack and the proxy."""
    names = image_names(ctx, compose)
    ids: dict[str, str] = {}
    for service, image in sorted(names.items()):
        found = yield Probe(("docker", "image", "inspect", "--format", "{{.Id}}", image), what=f"the image of {service}",
                           check=False, timeout=60)
        if found is not None and found.ok and found.stdout.strip():
            ids[service] = found.stdout.strip()
        elif not ctx.planning:
            raise DeployerError(f"the image {image} of {service} is not on {ctx.host.name}",
                                hint=f"on {ctx.host.name}: `docker pull {image}` (or load it), then release again")
        else:
            ids[service] = f"<id of {image}>"
    return ids


# --------------------------------------------------------------------------- the stack


def _settings(ctx: Context, where: Site) -> tuple[str, str]:
    """The proxy's haproxy.cfg and the name of the stack config that carries it."""
    from deployer.steps.swap import _health_path

    path, host_header = _health_path(ctx) if ctx.env.healthcheck_url else (None, None)
    text = render_swarm_config(ProxySettings(listen_port=LISTEN_PORT, pause_timeout=max(1, round(where.pause_timeout))),
                               ctx.app.web_service, where.web_port, health_path=path, health_host=host_header)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return text, f"{ctx.app.name}_proxy_{digest}"


def rendering(ctx: Context, compose: ComposeConfig, ids: dict[str, str], *, only: tuple[str, ...] | None = None) -> tuple[str, list[str], dict[str, str], str]:
    """(stack text, notes, expected images by service, proxy config text)."""
    import yaml

    where = site(ctx, compose)
    proxy_text, config_name = _settings(ctx, where)
    plan = Rendering(
        project=ctx.app.name, web=ctx.app.web_service, db=ctx.app.db_service,
        images={s: i for s, i in ids.items() if s != PROXY_SERVICE},
        primary_node=str(ctx.scratch.get("swarm_primary_node") or ""), release=ctx.run_id,
        proxy=SwarmProxy(image=ids[PROXY_SERVICE], published=int(where.publish), web_port=where.web_port,
                         config_file=proxy_file(ctx.state_dir), config_name=config_name),
        batch=ctx.env.rollout.batch, pause=ctx.env.rollout.pause, only=only,
    )
    try:
        document = render(compose.raw, plan)
    except ValueError as error:
        raise ConfigError(f"{ctx.app.compose_file} cannot run as a Swarm stack: {error}") from None
    expected = {name: str(service.get("image")) for name, service in document["services"].items()}
    text = ("# Written by deployer: the stack of release " + ctx.run_id + ", rendered from "
            + ctx.app.compose_file + " (see docs/swarm.md). Deployed again to go back to it.\n"
            + yaml.safe_dump(document, sort_keys=False))
    return text, list(dict.fromkeys(plan.notes)), expected, proxy_text


def deploy_file(ctx: Context, path: str, expected: dict[str, str], what: str, timeout: float):  # noqa: ANN201 - generator
    """``docker stack deploy`` of ``path``, then wait until ``expected`` runs everywhere."""
    stack = ctx.app.name
    before = yield Read("the services' last updates before the deploy", lambda c: runtime.read_before(c.host, stack))
    yield Command(tuple(swarm_cmds.deploy_argv(stack, path)), what=what, timeout=300)
    detail = yield Wait(f"every service of {stack} runs its image in all its tasks (at most {timeout:g}s; "
                        "an update Swarm rolls back fails the step)",
                        lambda c: runtime.watch(c.host, stack, expected=expected, before=before or runtime.Before({}),
                                                timeout=timeout, log=c.log))
    return detail or f"the stack {stack} deployed"


def deploy_stack(ctx: Context, *, only: tuple[str, ...] | None = None, timeout: float = DEPLOY_TIMEOUT):  # noqa: ANN201
    """Render this run's stack (``only``: some services), write it and the proxy's
    configuration, deploy it and wait for it. Returns (detail, notes)."""
    compose = ctx.known.compose
    ids = yield from resolve_images(ctx, compose)
    text, notes, expected, proxy_text = rendering(ctx, compose, ids, only=only)
    said = ctx.scratch.setdefault("stack_notes", set())
    for note in notes:
        if note not in said:  # once per run: the first deploy of a first release says them
            said.add(note)
            ctx.log(f"  stack: {note}")
    path = stack_file(ctx.state_dir, ctx.run_id if only is None else f"{ctx.run_id}.database")
    yield Command(("mkdir", "-p", posixpath.dirname(path)), what="the folder of the stack files")
    yield Write(proxy_file(ctx.state_dir), proxy_text, mode=0o644, what="the proxy's configuration (finds the web tasks by DNS)")
    yield Write(path, text, mode=0o600, what="the stack rendered from the compose file (secrets included)")
    detail = yield from deploy_file(ctx, path, expected, f"deploy the stack {ctx.app.name}", timeout)
    return detail, notes


# --------------------------------------------------------------------------- steps


def database_up(ctx: Context, timeout: float):  # noqa: ANN201 - generator
    """The db service runs (a first release: the stack with the db service and the proxy
    only), and answers."""
    from deployer.steps.database_up import wait_for_database

    db = ctx.app.db_service
    present = yield Read(f"the services of {ctx.app.name}", lambda c: runtime.services(c.host, c.app.name), plan=True)
    names = {s.short for s in present or ()}
    if db not in names:
        yield from deploy_stack(ctx, only=(db, PROXY_SERVICE), timeout=float(timeout) + 120)
    detail = yield Wait(f"{db} accepts connections (at most {timeout:.0f}s)", lambda c: wait_for_database(c, timeout))
    return detail


def app_services(ctx: Context, present: list[Any]) -> list[str]:
    """The stack's services that run the app's code (not the database, not the proxy)."""
    return sorted(s.short for s in present if s.short not in (ctx.app.db_service, PROXY_SERVICE))


def hold(ctx: Context, where: Site, chosen: Any):  # noqa: ANN201 - generator
    """Pause mode: the app's services scaled to 0; the proxy holds requests (its backup
    server refuses at once, each request retried a second apart) until the new tasks answer."""
    from deployer.steps.swap import start_probe

    present = yield Read(f"the services of {ctx.app.name}", lambda c: runtime.services(c.host, c.app.name), plan=True)
    stopping = app_services(ctx, present or [])
    if not stopping:
        raise Skip(f"{chosen.describe()}; but no service of the app runs: nothing to hold")
    _start_probe(ctx, where, start_probe)
    yield Command(tuple(ctx.compose.stop(stopping)), what=f"scale {', '.join(stopping)} to 0: the old code stops")
    yield Wait(f"the tasks of {', '.join(stopping)} are gone", lambda c: _gone(c, stopping))
    return f"{chosen.describe()}; the proxy holds requests (each up to {where.pause_timeout:g}s); {', '.join(stopping)} scaled to 0"


def _gone(ctx: Context, names: list[str]) -> str:
    import time

    from deployer import interrupts

    deadline = time.monotonic() + 120
    while True:
        wanted = {s.id for s in runtime.services(ctx.host, ctx.app.name) if s.short in names}
        left = [t for t in runtime.tasks(ctx.host, ctx.app.name) if t.service_id in wanted and t.state in ("running", "starting")]
        if not left:
            return "stopped"
        if time.monotonic() > deadline:
            raise DeployerError(f"{len(left)} task(s) of {', '.join(names)} still run 120 s after scaling to 0")
        interrupts.sleep(0.5)


def _start_probe(ctx: Context, where: Site, start: Callable[..., None]) -> None:
    if ctx.known.previous_release is not None:
        ctx.scratch["probe_anyway"] = True
        start(ctx, where)


def deploy(ctx: Context, step: Any):  # noqa: ANN201 - generator; swap and up on Swarm
    from deployer.steps.swap import mode, start_probe, stop_probe
    from deployer.steps.up import guard_schema

    yield Read("the database revision, known to the new code", guard_schema)
    where = site(ctx)
    chosen = ctx.scratch.get("swap_mode") or mode(ctx, where)
    _start_probe(ctx, where, start_probe)
    timeout = float(step.params.get("timeout", DEPLOY_TIMEOUT))
    detail, notes = yield from deploy_stack(ctx, timeout=timeout)
    served = stop_probe(ctx)
    parts = [chosen.describe(), detail]
    if notes:
        parts.append(f"{len(notes)} change(s) to the compose file for Swarm (listed by --dry-run)")
    if served is not None:
        parts.append(served.describe())
    return "; ".join(parts)


def running_images(ctx: Context) -> dict[str, str]:
    """service -> the image its Swarm service runs."""
    return {s.short: s.image for s in runtime.services(ctx.host, ctx.app.name)}


# --------------------------------------------------------------------------- recovery


def restart(ctx: Context, recovery: Recovery):  # noqa: ANN201 - generator
    """The previous release's stack, deployed again from its file (or a first release's
    stack removed)."""
    if recovery.first_release:
        yield from teardown(ctx, recovery)
        return
    if recovery.code_stays:
        recovery.left.append("the new release's services keep running: they match the schema")
        return
    if recovery.left:
        recovery.left.append("deploy the previous release's stack once the above is done")
        return
    previous = recovery.record.source.release
    path = stack_file(ctx.state_dir, previous) if previous else None
    exists = yield Probe(("test", "-f", path or "/nonexistent"), what="the previous release's stack file", check=False)
    if path is None or (exists is not None and not exists.ok and not ctx.planning):
        recovery.left.append(f"deploy the previous release's stack: its file {path or '(no release recorded)'} is not on the primary")
        return
    expected = yield Read("the images of the previous release's stack", lambda c: _expected_from(c, path), plan=True)
    try:
        detail = yield from deploy_file(ctx, path, expected or {}, f"deploy the stack of {previous} again", DEPLOY_TIMEOUT)
    except DeployerError as error:
        recovery.left.append(f"deploy the stack of {previous}: {error.message}")
        return
    recovery.done.append(f"stack of {previous} deployed again ({detail})")


def _expected_from(ctx: Context, path: str) -> dict[str, str]:
    import yaml

    document = yaml.safe_load(ctx.host.read_text(path)) or {}
    return {name: str(service.get("image")) for name, service in (document.get("services") or {}).items()}


def teardown(ctx: Context, recovery: Recovery):  # noqa: ANN201 - generator
    """A failed first release: the stack removed, with the volumes it created on the primary."""
    if recovery.torn_down:
        return
    recovery.torn_down = True
    stack = ctx.app.name
    kept = list(recovery.record.source.running)
    if kept:
        # The stack was there before (deployed without deployer): only the services this run added go.
        present = yield Read(f"the services of {stack}", lambda c: runtime.services(c.host, stack), plan=True)
        added = [s.name for s in present or () if s.short not in kept]
        if added:
            yield Command(("docker", "service", "rm", *added), what="remove the services this first release added",
                          check=False, timeout=300)
        recovery.done.append("first release: " + (f"services removed ({', '.join(added)})" if added else "no service was added")
                             + f"; {', '.join(kept)} kept as found")
        return
    yield Command(tuple(swarm_cmds.remove_argv(stack)), what=f"remove the stack {stack} this first release deployed",
                  check=False, timeout=300)
    gone = yield Wait("the stack's containers on the primary are gone", lambda c: "gone" if runtime.wait_removed(c.host, stack)
                      else "some remain")
    source = recovery.record.source
    created = yield Read("the volumes of the stack", lambda c: _stack_volumes(c), plan=True)
    created = [v for v in created or () if v not in source.volumes]
    if created:
        yield Command(("docker", "volume", "rm", "--force", *created), what="remove the volumes this first release created",
                      check=False, timeout=120)
    recovery.done.append("first release: the stack removed" + (f", volumes removed ({', '.join(created)})" if created else "")
                         + ("" if gone == "gone" else " (some containers were still stopping)"))


def _stack_volumes(ctx: Context) -> list[str]:
    found = ctx.host.run(["docker", "volume", "ls", "--quiet", "--filter", f"label={swarm_cmds.STACK_LABEL}={ctx.app.name}"],
                         timeout=30)
    if not found.ok:
        raise HostError(f"cannot list the volumes on {ctx.host.name}: {found.stderr.strip()[-200:]}")
    return sorted(found.stdout.split())
