"""``copy_backup``: once the release is recorded, copy its backup to every ``backup_copy``
place (this machine, another host), so that losing the server's disk does not lose the
backup with it. Each copy is checksummed where it arrives; the server's description records
where the copies are. A copy that fails is reported (``status`` and ``backups list`` show
where each backup is) and never undoes the release.
"""

from __future__ import annotations

from deployer.actions import Skip
from deployer.server import copies
from deployer.server.backups import BackupError
from deployer.steps import BACKUPS, PRIMARY, StepKind, register
from deployer.steps.context import Context
from deployer.steps.playbook import Step


def copy_backup(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    made = ctx.scratch.get("backup")
    if made is None:
        raise Skip("no backup was taken in this run")
    if not ctx.env.backup_copies:
        raise Skip("no backup_copy is configured")
    updated, failed = yield from copies.copy_steps(ctx.target, made, planning=ctx.planning, log=ctx.log)
    ctx.scratch["backup"] = updated
    if ctx.planning:
        return f"copy backup {made.id} to {', '.join(str(c) for c in ctx.env.backup_copies)}"
    ctx.scratch["backup_copies"] = updated.copies
    if failed:
        kept = ", ".join(c.where for c in updated.copies) or "only the server"
        raise BackupError(f"backup {made.id} was not copied to {'; '.join(failed)} (it is on the server; copies: {kept})",
                          hint=f"fix the place, then copy it with `deployer backups copy {ctx.env.name} {made.id}`")
    return f"backup {made.id} copied to " + ", ".join(f"{c.where} ({c.path})" for c in updated.copies)


register(StepKind(
    name="copy_backup",
    scope=PRIMARY,
    summary="after the release is recorded: copy its backup to every backup_copy place, checksummed where it arrives",
    run=copy_backup,
    changes=frozenset({BACKUPS}),
    once=True,
    after_record=True,
))
