"""Recovery: undo what a run changed, in reverse order, from its step log.

The same code serves a step that failed in this process and a run that died (killed,
disconnected): both start from the :class:`~deployer.server.runlog.RunRecord` on the host.
Each step kind that changes the server knows how to undo itself (its ``undo`` in the
registry); undoing them newest first puts things back in the only order that works — the
schema first, with the new image that knows the newer scripts, then the old images and the
old checkout — and finally the previous release's containers are started and must answer.

A schema that cannot go back (no working downgrade, and a restore that would discard writes
made since the backup) keeps the new code and images where they are (never old code on a
newer schema) and says exactly what is left, and the choice: ``deployer recover ENV
--restore-backup`` (discarding those writes) or ``--forward``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deployer.actions import Command, Read, Wait

if TYPE_CHECKING:
    from deployer.commands.compose import ComposeConfig
    from deployer.db.url import DatabaseLocation
    from deployer.server.runlog import RunRecord
    from deployer.steps.context import Context

CONTAINER_KINDS = {"stop", "up", "database_up", "switch", "schema", "migrate", "hold", "swap"}


@dataclass
class Recovery:
    """What recovery knows and has done so far."""

    record: RunRecord
    failure: str
    database: DatabaseLocation | None  # None: the database cannot be located (no checkout)
    compose: ComposeConfig | None
    restore_backup: bool = False  # the user chose to restore the backup, whatever it discards
    done: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    code_stays: bool = False  # the schema stayed new: keep the new code and images with it
    torn_down: bool = False
    schema_back: bool = True

    @property
    def first_release(self) -> bool:
        return self.record.source.commit is None

    @property
    def report(self) -> str:
        return "; ".join(self.done) or "nothing had changed"


def database_volumes(recovery: Recovery, db_service: str, project: str) -> list[str]:
    """The docker volumes the db service mounts (its data)."""
    config = recovery.compose
    if config is None or not db_service or db_service not in config.services:
        return []
    return [config.volumes.get(v, f"{project}_{v}") for v in config.services[db_service].volumes]


def database_created_by_run(ctx: Context, recovery: Recovery) -> bool:
    """A first release that created the database (its volumes did not exist): nothing to keep."""
    if not recovery.first_release:
        return False
    volumes = database_volumes(recovery, ctx.app.db_service, ctx.compose.project)
    return bool(volumes) and not any(v in recovery.record.source.volumes for v in volumes)


def teardown_first_release(ctx: Context, recovery: Recovery):  # noqa: ANN201
    """Leave the server as a failed first release found it: remove the containers it started
    (a database that was running before stays), and the volumes it created."""
    if ctx.env.swarm:
        from deployer.steps import swarm

        yield from swarm.teardown(ctx, recovery)
        return
    if recovery.torn_down:
        return
    recovery.torn_down = True
    source = recovery.record.source
    config = recovery.compose
    services = list(ctx.target.services_here(config.services)) if config else []
    started = [s for s in services if s not in source.running]
    if started:
        yield Command(tuple(ctx.compose.rm(started, stop=True)), what="remove the containers this first release started",
                      check=False, timeout=300)
    if ctx.env.proxy is not None:
        from deployer.proxy.site import CONTAINER_PREFIX

        yield Command(("docker", "rm", "--force", CONTAINER_PREFIX + ctx.app.name),
                      what="remove the proxy this first release started", check=False, timeout=120)
    created = [v for v in _project_volumes(recovery, ctx) if v not in source.volumes]
    if created:
        yield Command(("docker", "volume", "rm", "--force", *created), what="remove the volumes this first release created",
                      check=False, timeout=120)
    kept = list(source.running)
    recovery.done.append(
        "first release: nothing deployed — "
        + (f"containers removed ({', '.join(started)})" if started else "no container was started")
        + (f", volumes removed ({', '.join(created)})" if created else "")
        + (f"; {', '.join(kept)} kept running as found" if kept else "")
    )


def _project_volumes(recovery: Recovery, ctx: Context) -> list[str]:
    config = recovery.compose
    if config is None:
        return []
    return sorted(set(config.volumes.values()))


def undo_all(ctx: Context, recovery: Recovery):  # noqa: ANN201
    """Undo every step the run touched, newest first, then bring the previous release back."""
    from deployer.steps import kind as step_kind
    from deployer.steps.playbook import Step

    touched = recovery.record.touched()
    for label, name in reversed(touched):
        undo = step_kind(name).undo
        if undo is not None:
            yield from undo(ctx, Step(name, {"name": label}), recovery)
    yield from restart(ctx, recovery, [name for _, name in touched])


def restart(ctx: Context, recovery: Recovery, touched: Sequence[str]):  # noqa: ANN201
    """The previous release's containers, started and answering (or the first release undone)."""
    if not CONTAINER_KINDS & set(touched):
        return
    if ctx.env.swarm:
        from deployer.steps import swarm

        yield from swarm.restart(ctx, recovery)
        return
    if recovery.first_release:
        yield from teardown_first_release(ctx, recovery)
        return
    behind_proxy = _proxy_site(ctx, recovery)
    if recovery.code_stays:
        if behind_proxy is not None:
            yield from _converge_web(ctx, recovery, behind_proxy, "the new release")
        recovery.left.append("the new release's containers keep running: they match the schema")
        return
    if recovery.left:
        recovery.left.append("start the previous release (`docker compose up -d --no-build`) once the above is done")
        return
    # Behind a proxy: the previous release's web container beside whatever serves, then the
    # switch: recovery itself fails no request.
    if behind_proxy is not None and not (yield from _converge_web(ctx, recovery, behind_proxy, "the previous release")):
        return
    result = yield Command(tuple(ctx.compose.up([])), what="start the previous release", check=False, timeout=600)
    if not result.ok:
        recovery.left.append(f"start the previous release: {(result.stderr or result.stdout).strip()[-300:]}")
        return
    recovery.done.append("previous containers started")
    detail = yield Wait("the previous release answers", lambda c: _healthy(c, recovery))
    if detail:
        recovery.done.append(f"previous release answers ({detail})")


def _proxy_site(ctx: Context, recovery: Recovery):  # noqa: ANN202 - Site | None
    from deployer.errors import DeployerError
    from deployer.steps import swap

    if ctx.env.proxy is None or recovery.compose is None:
        return None
    try:
        return swap.site(ctx, recovery.compose)
    except DeployerError as error:
        recovery.left.append(f"route the proxy: {error.message}")
        return None


def _converge_web(ctx: Context, recovery: Recovery, where, what: str):  # noqa: ANN001, ANN202 - generator -> bool
    from deployer.errors import DeployerError
    from deployer.steps import swap

    try:
        detail = yield from swap.converge_web(ctx, where, timeout=float(ctx.env.health_timeout), note=False)
    except DeployerError as error:
        recovery.left.append(f"bring {what}'s web container behind the proxy: {error.message}")
        return False
    recovery.done.append(f"web behind the proxy: {detail}")
    return True


def _healthy(ctx: Context, recovery: Recovery) -> str:
    from deployer.errors import DeployerError
    from deployer.server import health

    try:
        return health.wait_healthy(ctx.target, timeout=float(ctx.env.health_timeout), settle=2.0, log=ctx.log)
    except DeployerError as error:
        recovery.left.append(f"the previous release does not answer: {error.message}")
        return ""


def read_revision(what: str, recovery: Recovery, *, plan: bool = False) -> Read:
    """Read the database revision (None: not running, or not locatable)."""

    def read(ctx: Context) -> tuple[str, ...] | None:
        from deployer.errors import DeployerError
        from deployer.server import facts

        if recovery.database is None:
            return None
        try:
            return facts.read_revisions(ctx.target, recovery.database)
        except DeployerError as error:
            recovery.left.append(f"read the database revision ({error.message})")
            return None

    return Read(what, read, plan=plan)


DATABASE_START_SECONDS = 120.0


def database_started(ctx: Context, recovery: Recovery):  # noqa: ANN201 - a generator returning the revision or None
    """The db service stopped during the run (killed, crashed): start it again and read its
    revision — recovery asks the database, it never guesses. None: it cannot be started."""
    db = ctx.app.db_service
    if not db or recovery.database is None or recovery.compose is None or db not in recovery.compose.services:
        return None
    ctx.log(f"recovery: the {db} service is not running; starting it to read the database's revision")
    if ctx.env.swarm:  # Swarm starts a task of it again on its own
        return (yield Read(f"wait until {db} accepts connections again; its revision", lambda c: _revision_once_up(c, recovery)))
    started = yield Command(tuple(ctx.compose.up([db], no_deps=True)), what=f"start {db} again", check=False, timeout=300)
    if started is not None and not started.ok:
        recovery.left.append(f"start {db}: {(started.stderr or started.stdout).strip()[-300:]}")
        return None
    return (yield Read(f"wait until {db} accepts connections again; its revision", lambda c: _revision_once_up(c, recovery)))


def _revision_once_up(ctx: Context, recovery: Recovery) -> tuple[str, ...] | None:
    import time

    from deployer import interrupts
    from deployer.errors import ConfigError, DeployerError
    from deployer.server import facts

    assert recovery.database is not None
    deadline = time.monotonic() + DATABASE_START_SECONDS
    while True:
        try:
            revisions = facts.read_revisions(ctx.target, recovery.database, connect_timeout=5)
            if revisions is not None:
                recovery.done.append(f"{ctx.app.db_service} started again (it had stopped)")
                return revisions
            last = "not running"
        except ConfigError as error:
            recovery.left.append(f"read the database revision ({error.message})")
            return None
        except DeployerError as error:
            last = error.message
        if time.monotonic() > deadline:
            recovery.left.append(f"the database did not accept connections within {DATABASE_START_SECONDS:.0f}s: {last}")
            return None
        interrupts.sleep(1.0)
