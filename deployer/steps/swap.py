"""``hold`` and ``swap``: a release behind the environment's proxy, without a failed request.

``swap`` starts the new web container beside the old one (the web service publishes no
port: the proxy owns it), waits until it answers healthy on its own address, switches the
proxy to it, lets the old one finish its requests and removes it; the other services are
recreated after the switch. A new container that never becomes healthy never receives a
request: the step fails with the old one still serving, and recovery removes the new one.

``hold`` comes before ``migrate``: when the pending migrations would break the code that
runs now (see :mod:`deployer.proxy.modes`), the proxy holds new requests while the old
containers stop, the migration runs and the new container starts; ``swap`` then releases
them to it. Otherwise it does nothing and the containers overlap.

While either runs, a prober sends a request through the proxy every 50 ms, as a user
would; the release summary and the journal say what it saw.

Recovery needs no undo of its own here: :func:`converge_web` brings the web service to one
container of the checkout's configuration behind the proxy, starting one beside whatever
runs when none fits; recovery calls it once the checkout and images are back. It decides
from what runs (configuration hash and image of each container), so a run killed at any
point converges the same way; the step log's ``swap`` entry (the containers replaced, the
one started, whether the proxy switched) tells a person what the interrupted run did.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from urllib.parse import urlsplit

from deployer.actions import Command, Probe, Read, Skip, Wait
from deployer.commands.compose import ComposeConfig
from deployer.commands.docker import HASH_LABEL, Container
from deployer.errors import CommandError, DeployerError
from deployer.proxy.modes import SwapMode, swap_mode
from deployer.proxy.probe import Prober, ProbeSummary
from deployer.proxy.runtime import Proxy, ProxyError
from deployer.proxy.site import Site, public_address, site_for
from deployer.server import facts as server_facts
from deployer.server import health
from deployer.steps import CONTAINERS, HOST_FILES, ROLLING, Param, StepKind, register
from deployer.steps.context import Context
from deployer.steps.playbook import Step
from deployer.steps.up import guard_schema, up

NUMBER_LABEL = "com.docker.compose.container-number"
# How often a release probes the app through the proxy (each probe a new connection; over
# SSH, a new channel of the one connection): 20 a second, light on the server and on the
# machine running deployer, and no outage that fails a request goes unseen (HAProxy's own
# retries are 1 s apart).
PROBE_INTERVAL = 0.05


class SwapError(DeployerError):
    """The new web container did not become ready, or the proxy could not be switched."""


# --------------------------------------------------------------------------- facts


def site(ctx: Context, compose: ComposeConfig | None = None) -> Site | None:
    """The environment's proxy (None: it has none), read once per run."""
    if "proxy_site" not in ctx.scratch:
        config = compose if compose is not None else ctx.known.compose
        ctx.scratch["proxy_site"] = site_for(ctx.target.config, ctx.env, config)
        ctx.scratch["web_image"] = web_image(ctx, config)
    return ctx.scratch["proxy_site"]


def web_image(ctx: Context, config: ComposeConfig) -> str:
    """The image name the web service's containers are created from."""
    web = ctx.app.web_service
    service = config.services.get(web)
    if service is not None and service.image:
        return service.image
    separator = "-" if ctx.compose.is_v2 else "_"
    return f"{ctx.compose.project}{separator}{web}"


def mode(ctx: Context, where: Site) -> SwapMode:
    """Overlap or pause for this run: the command line's choice, else the environment's,
    and with ``auto`` what the pending migrations (a rollback: its downgrades) do to the
    code that runs during the swap."""
    setting = ctx.options.swap_mode or where.mode
    rollback = ctx.known.rollback
    if rollback is not None and rollback.restore_from is not None and setting == "auto":
        return SwapMode("pause", (f"backup {rollback.restore_from.id} is restored under the running code",), "migrations")
    if ctx.kind == "rollback":
        return swap_mode(ctx.known.pending, setting)
    # Contract migrations run after the switch: the old code never meets them.
    from deployer.steps.migrate import phases

    return swap_mode(phases(ctx, ctx.known.pending)[0], setting)


def web_containers(ctx: Context) -> list[Container]:
    return server_facts.service_containers(ctx.target, ctx.app.web_service)


def _network(ctx: Context, container: Container) -> str:
    preferred = f"{ctx.compose.project}_default"
    if preferred in container.networks:
        return preferred
    if not container.networks:
        raise SwapError(f"the new {ctx.app.web_service} container {container.name} has no network address")
    return sorted(container.networks)[0]


def _health_path(ctx: Context) -> tuple[str, str | None]:
    """The path the gate and the prober ask for, and the Host header the health URL names."""
    url = ctx.env.healthcheck_url
    if not url:
        return "/", None
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), parts.netloc


# --------------------------------------------------------------------------- the prober


def start_probe(ctx: Context, where: Site) -> None:
    """Probe the app through the proxy's public port until :func:`stop_probe`."""
    served = ctx.known.running(ctx.app.web_service) is not None or ctx.scratch.get("probe_anyway")
    if ctx.planning or "prober" in ctx.scratch or not served:
        return  # nothing served before this run: no one to fail
    stack = ExitStack()
    path, host_header = _health_path(ctx)
    try:
        here, port = stack.enter_context(ctx.host.forward(*public_address(where)))
        prober = stack.enter_context(Prober(here, port, path, interval=PROBE_INTERVAL, status=ctx.env.healthcheck_status or (),
                                            host_header=host_header, headers=ctx.env.healthcheck_headers))
    except BaseException:
        stack.close()
        raise
    ctx.scratch["prober"] = (prober, stack)
    ctx.scratch.setdefault("cleanups", []).append(stack.close)


def stop_probe(ctx: Context) -> ProbeSummary | None:
    entry = ctx.scratch.pop("prober", None)
    if entry is None:
        return None
    prober, stack = entry
    summary: ProbeSummary = prober.stop()
    stack.close()
    ctx.scratch["served"] = summary
    return summary


# --------------------------------------------------------------------------- the gate


def gate(ctx: Context, where: Site, container: Container, *, timeout: float) -> str:
    """Wait until ``container`` answers healthy on its own address (the health URL's path,
    its expected status and body) and runs the health command, within ``timeout``."""
    env = ctx.env
    deadline = time.monotonic() + timeout
    address = container.networks[_network(ctx, container)]
    path, host_header = _health_path(ctx)
    last = "no answer yet"
    with ctx.host.forward(address, where.web_port) as (here, port):
        url = f"http://{here}:{port}{path}"
        checks = 0
        while True:
            result = health.probe(url, timeout=max(1.0, min(5.0, deadline - time.monotonic())), host_header=host_header,
                                  headers=env.healthcheck_headers, status=env.healthcheck_status, body=env.healthcheck_body)
            if result.ok:
                break
            last = result.detail
            checks += 1
            if checks % 4 == 0:
                _still_running(ctx, container)
            if time.monotonic() >= deadline:
                raise SwapError(
                    f"the new {ctx.app.web_service} container {container.name} did not answer healthy on "
                    f"{address}:{where.web_port}{path} within {timeout:g}s (last: {last}); it never received a request",
                    hint=f"its logs: `docker logs {container.name}` on the host (recovery removes it)",
                )
            time.sleep(0.25)
    proven = f"{container.name} answered {result.detail} on {address}:{where.web_port}{path}"
    if env.healthcheck_command:
        _gate_command(ctx, container, deadline, timeout)
        proven += f"; `{' '.join(env.healthcheck_command)}` exited 0 in it"
    return proven


def _still_running(ctx: Context, container: Container) -> None:
    now = next((c for c in web_containers(ctx) if c.id == container.id), None)
    if now is None or now.state != "running":
        raise SwapError(
            f"the new {ctx.app.web_service} container {container.name} stopped before it answered "
            f"(state {now.state if now else 'removed'}, exit code {now.exit_code if now else '?'}); it never received a request",
            hint=f"its logs: `docker logs {container.name}` on the host",
        )


def _gate_command(ctx: Context, container: Container, deadline: float, timeout: float) -> None:
    command = list(ctx.env.healthcheck_command or ())
    while True:
        try:
            result = ctx.host.run(["docker", "exec", container.id, *command], timeout=max(1.0, deadline - time.monotonic()))
            if result.ok:
                return
            last = f"exited {result.exit_code}: {(result.stderr or result.stdout).strip()[-200:]}"
        except CommandError as error:
            last = error.message
        if time.monotonic() >= deadline:
            raise SwapError(f"the health command did not succeed in the new container {container.name} within {timeout:g}s "
                            f"({last}); it never received a request")
        time.sleep(0.5)


# --------------------------------------------------------------------------- switching


def _proxy(ctx: Context, where: Site, network: str) -> Proxy:
    return Proxy(ctx.host, where.container(network), log=ctx.log)


def route(ctx: Context, where: Site, container: Container, others: Sequence[Container]) -> str:
    """The proxy runs and sends new requests to ``container``; the ones in flight on the
    others finish (up to the drain timeout)."""
    network = _network(ctx, container)
    proxy = _proxy(ctx, where, network)
    moved = ""
    try:
        proxy.ensure()
    except (ProxyError, CommandError) as error:
        # The first release behind the proxy: an old web container still publishes the port.
        publishing = [c for c in others if c.state == "running"]
        if not publishing:
            raise SwapError(f"the proxy {where.name} cannot start: {error.message}",
                            hint=f"is {where.publish} free on the host? `docker logs {where.name}`") from error
        started = time.monotonic()
        ctx.host.run(["docker", "stop", *[c.id for c in publishing]], check=True, timeout=120)
        proxy.ensure()
        moved = f"; the port moved from the old container to the proxy ({time.monotonic() - started:.1f}s without a listener)"
    switched = proxy.switch(container.networks[network], where.web_port, drain_timeout=where.drain_timeout)
    if ctx.record is not None and ctx.record.swap.get("new") == container.id:
        ctx.note(swap={**ctx.record.swap, "switched": True})
    drained = "" if not switched.drained else (
        f"; the old one drained in {switched.drain_seconds:.1f}s" + ("" if switched.drained_cleanly else " (timed out)"))
    return f"the proxy routes to {container.name}" + drained + moved


def hold_requests(ctx: Context, where: Site, running: Sequence[Container]) -> str:
    network = _network(ctx, running[0])
    proxy = _proxy(ctx, where, network)
    if not proxy.running():
        return "the proxy does not run yet: nothing to hold"
    proxy.hold()
    return f"the proxy holds new requests (each up to {where.pause_timeout:g}s)"


def _number(container: Container) -> int:
    value = container.labels.get(NUMBER_LABEL, "0")
    return int(value) if value.isdigit() else 0


def converge_web(ctx: Context, where: Site, *, timeout: float, note: bool = True):  # noqa: ANN201 - generator of actions
    """One web container of the checkout's configuration, behind the proxy, answering.

    A running container already built from this configuration is kept (the newest one);
    otherwise a new one starts beside the running ones. It is gated on its own address,
    the proxy switches to it, and every other web container is drained and removed.
    """
    web = ctx.app.web_service
    before = yield Read(f"the {web} containers now", web_containers, plan=True)
    removed = set(ctx.scratch.get("held") or ())  # by hold (a dry run did not remove them)
    before = [c for c in before or () if c.id not in removed]
    running = [c for c in before if c.state == "running"]
    current: list[Container] = []
    if running:
        # Kept: a container of this configuration and this image (compose itself would keep it).
        hashed = yield Probe(tuple(ctx.compose.config_hash(web)), what=f"the configuration hash of {web}",
                             check=False, timeout=120)
        expected = hashed.stdout.split()[-1] if hashed is not None and hashed.ok and hashed.stdout.split() else None
        image = ctx.scratch.get("web_image")
        found_image = yield Probe(("docker", "image", "inspect", "--format", "{{.Id}}", image or web),
                                  what=f"the image {web} runs", check=False, timeout=60)
        image_id = found_image.stdout.strip() if image and found_image is not None and found_image.ok else None
        current = sorted((c for c in running if expected and c.labels.get(HASH_LABEL) == expected
                          and image_id and c.image_id == image_id), key=_number)
    if current:
        chosen = current[-1]
        started = False
    else:
        stale = [c for c in before if c.state != "running"]
        if stale:  # compose would start these again instead of creating one
            yield Command(("docker", "rm", "--force", *[c.id for c in stale]), what=f"remove stopped {web} containers")
        yield Command(tuple(ctx.compose.up([web], no_deps=True, no_recreate=True, scale={web: len(running) + 1})),
                      what=f"start the new {web} container beside the old one", timeout=600)
        found = yield Read(f"the new {web} container", lambda c: _new_container(c, before))
        chosen = found
        started = True
        if note and chosen is not None:
            ctx.note(swap={"old": [c.id for c in running], "new": chosen.id, "switched": False})
    others = [c for c in running if chosen is None or c.id != chosen.id]
    if chosen is not None or ctx.planning:
        target_name = chosen.name if chosen is not None else f"the new {web} container"
        yield Wait(f"{target_name} answers healthy on its own address (at most {timeout:g}s)",
                   lambda c: gate(c, where, chosen, timeout=timeout))
        switched = yield Wait(f"the proxy routes to {target_name}; the old one drains (at most {where.drain_timeout:g}s)",
                              lambda c: route(c, where, chosen, others))
    else:
        switched = ""
    if others:
        ids = [c.id for c in others]
        yield Command(("docker", "stop", "--time", "30", *ids), what=f"stop the old {web} container", timeout=120)
        yield Command(("docker", "rm", "--force", *ids), what=f"remove the old {web} container", timeout=120)
    name = chosen.name if chosen is not None else web
    if not started:
        return f"{name} already runs this configuration and image; {switched}"
    return f"started {name}; {switched}" if switched else f"started {name}"


def _new_container(ctx: Context, before: Sequence[Container]) -> Container:
    known = {c.id for c in before}
    new = [c for c in web_containers(ctx) if c.id not in known]
    if not new:
        raise SwapError(f"docker compose started no new {ctx.app.web_service} container")
    return sorted(new, key=_number)[-1]


# --------------------------------------------------------------------------- the steps


def hold(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    if ctx.kind == "rollback":
        from deployer.steps.sync import compose_files

        yield from compose_files(ctx)
    if ctx.env.swarm:
        from deployer.steps import swarm

        on_swarm = swarm.site(ctx)
        chosen = mode(ctx, on_swarm)
        ctx.scratch["swap_mode"] = chosen
        if chosen.mode != "pause":
            raise Skip(chosen.describe())
        return (yield from swarm.hold(ctx, on_swarm, chosen))
    where = site(ctx)
    if where is None:
        raise Skip("no proxy: nothing to hold")
    chosen = mode(ctx, where)
    ctx.scratch["swap_mode"] = chosen
    if chosen.mode != "pause":
        raise Skip(chosen.describe())
    running = [c for c in ctx.known.containers if c.state == "running" and not c.oneoff and c.service != ctx.app.db_service]
    web = [c for c in running if c.service == ctx.app.web_service]
    if not web:
        raise Skip(f"{chosen.describe()}; but no {ctx.app.web_service} container runs: nothing to hold")
    start_probe(ctx, where)
    held = yield Wait(f"the proxy holds new requests (up to {where.pause_timeout:g}s each); those in flight finish",
                      lambda c: hold_requests(c, where, web))
    ctx.scratch["held"] = [c.id for c in running]
    # The web container has no request left (drained): removed at once, while the others
    # (workers) stop gracefully.
    yield Command(("docker", "rm", "--force", *[c.id for c in web]), what=f"remove the old {ctx.app.web_service} container")
    workers = [c.id for c in running if c not in web]
    if workers:
        yield Command(("docker", "stop", "--time", "30", *workers), what="stop the other services", timeout=120)
    return f"{chosen.describe()}; {held or 'requests held'}; stopped {', '.join(sorted({c.service for c in running}))}"


def swap(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    if ctx.env.swarm:
        from deployer.steps import swarm

        return (yield from swarm.deploy(ctx, step))
    where = site(ctx)
    if where is None:
        return (yield from up(ctx, step))
    yield Read("the database revision, known to the new code", guard_schema)
    chosen = ctx.scratch.get("swap_mode") or mode(ctx, where)
    ctx.scratch["swap_mode"] = chosen
    start_probe(ctx, where)
    timeout = float(step.params.get("timeout", ctx.env.health_timeout))
    detail = yield from converge_web(ctx, where, timeout=timeout)
    others = [s for s in ctx.known.services if s != ctx.app.web_service]
    if others:
        yield Command(tuple(ctx.compose.up(others, no_deps=True)), what="recreate the other services", timeout=600)
    served = stop_probe(ctx)
    parts = [chosen.describe(), detail]
    if others:
        parts.append(f"{', '.join(others)} recreated")
    if served is not None:
        parts.append(served.describe())
    return "; ".join(parts)


register(StepKind(
    name="hold",
    summary="behind the proxy, when the migrations would break the running code: hold requests, stop the old code",
    run=hold,
    changes=frozenset({CONTAINERS, HOST_FILES}),
    once=True,
))
register(StepKind(
    name="swap",
    scope=ROLLING,
    summary="start the new web container beside the old one, gate it, switch the proxy, drain and remove the old",
    run=swap,
    params={"timeout": Param((int,), "seconds the new container gets to answer healthy", positive=True)},
    changes=frozenset({CONTAINERS}),
    once=True,
))
