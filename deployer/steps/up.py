"""``up``: recreate the containers whose image or configuration changed — never old code on a
newer schema: the database's revision must be one the new code's migrations know."""

from __future__ import annotations

import time

from deployer.actions import Command, Read
from deployer.errors import DeployerError
from deployer.steps import CONTAINERS, ROLLING, Param, StepKind, register
from deployer.steps.common import current_revision
from deployer.steps.context import Context
from deployer.steps.playbook import Step
from deployer.steps.recovery import Recovery, teardown_first_release


def guard_schema(ctx: Context) -> str:
    """Refuse to start code whose migrations do not contain the database's revision."""
    revisions = current_revision(ctx) or ()
    unknown = [r for r in revisions if r not in ctx.known.scripts.revisions]
    if unknown:
        raise DeployerError(
            f"refusing to start commit {ctx.known.commit.sha[:12]}: the database is at {', '.join(unknown)}, "
            "which its migrations do not contain (old code on a newer schema)"
        )
    return ", ".join(revisions) or "no revision"


def services_to_start(ctx: Context, step: Step) -> tuple[list[str], bool]:
    """The services ``up`` names, and whether compose may skip their dependencies (--no-deps).

    With the db service already up (it ran at preflight, or ``database_up`` came first),
    the rest is recreated without compose re-checking it: its depends_on wait would add to
    the time the site is down.
    """
    listed = list(step.params.get("services") or [])
    if listed:
        return listed, False
    facts = ctx.known
    db = ctx.app.db_service
    order = [label for label, _ in ctx.scratch.get("steps", ())]
    here = order.index(step.label) if step.label in order else len(order)
    started_before = any(kind == "database_up" for _, kind in ctx.scratch.get("steps", ())[:here])
    if db and (facts.running(db) is not None or started_before) and facts.services:
        return list(facts.services), True
    return [], False


def up(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    if ctx.env.swarm:
        from deployer.steps import swarm

        return (yield from swarm.deploy(ctx, step))
    yield Read("the database revision, known to the new code", guard_schema)
    services, no_deps = services_to_start(ctx, step)
    timeout = float(step.params.get("timeout", 600))
    yield Command(tuple(ctx.compose.up(services, no_deps=no_deps)), what="recreate the containers", timeout=timeout)
    detail = "containers up to date" + (f" ({', '.join(services)})" if services else "")
    if ctx.env.proxy is not None and step.name == "up":
        from deployer.steps import swap

        where = swap.site(ctx)
        if where is not None:  # the recreated web container, behind the proxy
            routed = yield from swap.converge_web(ctx, where, timeout=float(ctx.env.health_timeout), note=False)
            detail += f"; {routed}"
    changed_at = ctx.scratch.get("schema_changed_at")
    if changed_at is not None:
        # How long running code and schema did not match (old code on the new schema).
        detail += f"; code and schema mismatched for {time.monotonic() - changed_at:.1f}s"
    return detail


def undo_up(ctx: Context, step: Step, recovery: Recovery):  # noqa: ANN201
    if recovery.first_release:
        yield from teardown_first_release(ctx, recovery)


register(StepKind(
    name="up",
    scope=ROLLING,
    summary="recreate the containers whose image or configuration changed",
    run=up,
    undo=undo_up,
    params={"services": Param((list,), "services to recreate (default: all)"),
            "timeout": Param((int,), "seconds", positive=True)},
    changes=frozenset({CONTAINERS}),
))
