"""``stop``: stop the app's services (the tutorial's order stops them before the build)."""

from __future__ import annotations

from deployer.actions import Command, Skip
from deployer.steps import CONTAINERS, Param, StepKind, register
from deployer.steps.context import Context
from deployer.steps.playbook import Step


def stop(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    facts = ctx.known
    services = list(step.params.get("services") or [])
    if not services:
        services = sorted({c.service for c in facts.containers
                           if not c.oneoff and c.state == "running" and c.service != ctx.app.db_service})
    if not services:
        raise Skip("nothing runs")
    yield Command(tuple(ctx.compose.stop(sorted(set(services)), timeout=step.params.get("timeout"))), what="stop the services")
    return "stopped " + ", ".join(sorted(set(services)))


register(StepKind(
    name="stop",
    summary="stop the app's services (all but the db service by default)",
    run=stop,
    params={"services": Param((list,), "services to stop (default: all but the db service)"),
            "timeout": Param((int,), "seconds", positive=True)},
    changes=frozenset({CONTAINERS}),
))
