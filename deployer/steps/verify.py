"""``verify``: the database's alembic revision must be the code's head."""

from __future__ import annotations

from deployer.actions import Read
from deployer.errors import DeployerError
from deployer.steps import StepKind, register
from deployer.steps.common import current_revision, shown_revisions
from deployer.steps.context import Context
from deployer.steps.playbook import Step


def check_revision(ctx: Context) -> str:
    revisions = current_revision(ctx)
    if revisions is None:
        raise DeployerError("the database is not running: cannot verify its revision")
    heads = ctx.known.heads
    ctx.scratch["revision_after"] = revisions
    if set(revisions) != set(heads):
        raise DeployerError(
            f"the database is at {shown_revisions(revisions)}, not at the code's head {', '.join(heads) or '(none)'}",
            hint="the migration reported success but did not reach head: check the migrate command and the app's alembic configuration",
        )
    return f"database at head {', '.join(revisions) or '(no migrations)'}"


def verify(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    detail = yield Read(f"the database revision; expect {', '.join(ctx.known.heads) or 'no revision'}", check_revision)
    return detail or f"expect {', '.join(ctx.known.heads) or 'no revision'}"


register(StepKind(name="verify", summary="read the database's alembic revision: it must be the code's head", run=verify))
