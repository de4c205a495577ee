"""``run``: a command of the user's, on the host (in the checkout) or in a one-off container
of a service's new image."""

from __future__ import annotations

from deployer.actions import Command
from deployer.steps import ANYTHING, Param, StepKind, register
from deployer.steps.context import Context
from deployer.steps.playbook import Step


def run(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    argv = step.argv()
    timeout = float(step.params.get("timeout", 600))
    service = step.params.get("service")
    if service:
        command = Command(tuple(ctx.compose.run(str(service), argv)), what=f"run step {step.label!r}", timeout=timeout, stream=True, retry=False)
    else:
        command = Command(tuple(argv), what=f"run step {step.label!r}", timeout=timeout, cwd=ctx.env.path, stream=True, retry=False)
    yield command
    return f"`{' '.join(argv)}` ok"


register(StepKind(
    name="run",
    summary="a command of yours, on the host or in a one-off container of a service's new image",
    run=run,
    params={
        "command": Param((str, list), "the command, a string (split like a shell) or a list", required=True),
        "service": Param((str,), "run in a one-off container of this service's new image instead of on the host"),
        "timeout": Param((int,), "seconds", positive=True),
    },
    changes=frozenset({ANYTHING}),
))
