"""``contract``: the migrations marked ``# deployer: contract``, once the new code serves.

Expand and contract: a change the running code cannot survive (a column dropped, renamed,
made NOT NULL) is split so that the release first applies what both the old and the new
code work with (expand, in ``migrate``, before the switch), and the rest (contract) only
after the new code is switched to and verified healthy, here. The old code never runs on
the contracted schema, so the swap can overlap instead of pausing. A contract that fails is
a failed release like any other: recovery brings back the previous release and its schema.
"""

from __future__ import annotations

from deployer.actions import Read, Skip
from deployer.steps import PRIMARY, SCHEMA, Param, StepKind, register
from deployer.steps.context import Context
from deployer.steps.database_up import pending
from deployer.steps.migrate import migration_name, phases, run_migration, undo_migrate
from deployer.steps.playbook import Step
from deployer.steps.verify import check_revision


def contract(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    _, later = phases(ctx, pending(ctx))
    if not later:
        raise Skip("no contract migration pending")
    app = ctx.app
    timeout = float(step.params.get("timeout", app.migrate_timeout))
    name = migration_name(app.name, ctx.run_id) + "-contract"
    _, retried = yield from run_migration(ctx, list(app.migrate_command), name, "apply the contract migrations", timeout)
    ctx.note(migration=None)
    ctx.scratch.pop("migrate_target", None)
    detail = yield Read(f"the database revision; expect {', '.join(ctx.known.heads)}", check_revision)
    return (f"applied {len(later)} contract migration(s) after the switch: " + ", ".join(m.revision for m in later)
            + retried + (f"; {detail}" if detail else ""))


register(StepKind(
    name="contract",
    scope=PRIMARY,
    summary="after the switch: apply the migrations marked `# deployer: contract`, then verify the head",
    run=contract,
    undo=undo_migrate,
    params={"timeout": Param((int,), "seconds before the migration is stopped", positive=True)},
    changes=frozenset({SCHEMA}),
))
