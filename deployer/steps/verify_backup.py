"""``verify_backup``: once the release is recorded, prove its backup by restoring it.

The dump this run took is restored into a throwaway database of the same image and what
comes back is held against what was recorded when it was dumped (see
:mod:`deployer.server.verification`); the verdict is kept in the backup's description. It
runs after the switch and after the release is journaled, so it lengthens neither the
release window nor what a failure could undo: a backup that fails is marked failed (a
restore refuses it without ``--force``; ``status`` and ``backups list`` say so) and the
release stays.
"""

from __future__ import annotations

from deployer.actions import Skip
from deployer.server import verification
from deployer.server.lock import RUN_LABEL
from deployer.steps import BACKUPS, PRIMARY, StepKind, register
from deployer.steps.context import Context
from deployer.steps.playbook import Step


def verify_backup(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    made = ctx.scratch.get("backup")
    if made is None:
        raise Skip("no backup was taken in this run")
    checked = yield from verification.verify_steps(ctx.target, made, run_label=f"{RUN_LABEL}={ctx.run_id}",
                                                   planning=ctx.planning)
    updated = yield from verification.record_steps(ctx.target, made, checked)
    ctx.scratch["backup"] = updated
    if ctx.planning:
        return f"restore backup {made.id} into a scratch database and compare"
    ctx.scratch["backup_verification"] = checked
    if not checked.ok:
        ctx.log(f"warning: backup {made.id} {checked.summary()}; the release stays")
    return f"backup {made.id} {checked.summary()}"


register(StepKind(
    name="verify_backup",
    scope=PRIMARY,
    summary="after the release is recorded: restore its backup into a scratch database and compare it with the "
            "dump-time record (a failure marks the backup, never undoes the release)",
    run=verify_backup,
    changes=frozenset({BACKUPS}),
    once=True,
    after_record=True,
))
