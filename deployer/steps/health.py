"""``health``: the health checks pass and the containers stay up without restarts."""

from __future__ import annotations

from deployer.actions import Wait
from deployer.server import health as health_checks
from deployer.steps import ROLLING, Param, StepKind, register
from deployer.steps.context import Context
from deployer.steps.playbook import Step


def describe(ctx: Context) -> str:
    env = ctx.env
    parts = []
    if env.healthcheck_url:
        parts.append(f"GET {env.healthcheck_url} answers " + (" or ".join(map(str, env.healthcheck_status)) or "2xx")
                     + (f" containing {env.healthcheck_body!r}" if env.healthcheck_body else ""))
    if env.healthcheck_command:
        parts.append(f"`{' '.join(env.healthcheck_command)}` succeeds in the {ctx.app.web_service} container")
    parts.append("containers running, healthy, not restarting")
    return "; ".join(parts)


def health(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    timeout = float(step.params.get("timeout", ctx.env.health_timeout))
    settle = float(step.params.get("settle", 3))
    detail = yield Wait(f"{describe(ctx)} (at most {timeout:.0f}s)",
                        lambda c: health_checks.wait_healthy(c.target, timeout=timeout, settle=settle, log=c.log))
    return detail or describe(ctx)


register(StepKind(
    name="health",
    scope=ROLLING,
    summary="the health checks pass and the containers stay up without restarts",
    run=health,
    params={"timeout": Param((int,), "seconds to wait for health", positive=True),
            "settle": Param((int, float), "seconds containers must stay up")},
))
