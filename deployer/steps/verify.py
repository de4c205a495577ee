"""``verify``: the database's alembic revision must be the code's head."""

from __future__ import annotations

from deployer.actions import Read
from deployer.errors import DeployerError
from deployer.steps import PRIMARY, StepKind, register
from deployer.steps.common import current_revision, shown_revisions
from deployer.steps.context import Context
from deployer.steps.playbook import Step


def check_revision(ctx: Context) -> str:
    revisions = current_revision(ctx)
    if revisions is None:
        raise DeployerError("the database is not running: cannot verify its revision")
    heads = expected(ctx)
    ctx.scratch["revision_after"] = revisions
    if set(revisions) != set(heads):
        raise DeployerError(
            f"the database is at {shown_revisions(revisions)}, not at the code's head {', '.join(heads) or '(none)'}",
            hint="the migration reported success but did not reach head: check the migrate command and the app's alembic configuration",
        )
    if heads != ctx.known.heads:
        return f"database at {', '.join(revisions) or 'no revision'}: the contract migrations run after the switch"
    return f"database at head {', '.join(revisions) or '(no migrations)'}"


def expected(ctx: Context) -> tuple[str, ...]:
    """The revision the schema must be at now: the code's heads, or, while contract
    migrations wait for the switch, where the migrate step stopped."""
    target = ctx.scratch.get("migrate_target")
    return tuple(target) if target is not None else ctx.known.heads


def verify(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    heads = expected(ctx)
    detail = yield Read(f"the database revision; expect {', '.join(heads) or 'no revision'}", check_revision)
    return detail or f"expect {', '.join(heads) or 'no revision'}"


register(StepKind(name="verify", summary="read the database's alembic revision: it must be the code's head", run=verify,
                  scope=PRIMARY))
