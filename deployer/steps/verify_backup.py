"""``verify_backup``: prove the release's backup by restoring it; its verdict is kept once
the release is recorded.

The dump this run took is restored into a throwaway database of the same image and what
comes back is held against what was recorded when it was dumped (see
:mod:`deployer.server.verification`); the verdict is kept in the backup's description. It
runs after the switch and after the release is journaled, so it lengthens neither the
release window nor what a failure could undo: a backup that fails is marked failed (a
restore refuses it without ``--force``; ``status`` and ``backups list`` say so) and the
release stays.

Its actions need only the backup: they start as soon as the ``backup`` step has made it and
run beside the migration, the switch and the health check (:mod:`deployer.background`; the
scratch gets one core at a quarter of the default CPU weight, so the live containers come
first). In its place after the record, the step then only waits for their verdict,
checksums the dump once more (the file kept is the file verified: one damaged since fails)
and keeps the verdict; when they did not complete (a lost connection), it runs them again
itself. A failed or
interrupted release stops them and removes the scratch before it recovers.
"""

from __future__ import annotations

from typing import Any, cast

from deployer import background
from deployer.actions import Skip
from deployer.server import verification
from deployer.server.backups import Verification
from deployer.server.lock import RUN_LABEL
from deployer.steps import BACKUPS, PRIMARY, StepKind, register
from deployer.steps.context import Context
from deployer.steps.playbook import Step


def verify_backup(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    made = ctx.scratch.get("backup")
    if made is None:
        raise Skip("no backup was taken in this run")
    early = background.take(ctx, step.label)
    completed, value = False, cast(Any, None)
    if early is not None:
        completed, value = early.result()
    checked: Verification
    if completed:
        checked = value
    else:
        if early is not None:
            ctx.log(f"the backup's verification beside the release did not finish ({value}): running it again")
        checked = yield from verification.verify_steps(ctx.target, made, run_label=_run_label(ctx), planning=ctx.planning)
    checked = yield from verification.recheck_steps(made, checked, planning=ctx.planning)
    updated = yield from verification.record_steps(ctx.target, made, checked)
    ctx.scratch["backup"] = updated
    if ctx.planning:
        return f"restore backup {made.id} into a scratch database and compare"
    ctx.scratch["backup_verification"] = checked
    if not checked.ok:
        ctx.log(f"warning: backup {made.id} {checked.summary()}; the release stays")
    return f"backup {made.id} {checked.summary()}" + (" (restored beside the release's steps)" if completed else "")


def _run_label(ctx: Context) -> str:
    return f"{RUN_LABEL}={ctx.run_id}"


def early(ctx: Context, label: str):  # noqa: ANN201
    """Once the backup is made: the verification's actions, to run beside the next steps."""
    made = ctx.scratch.get("backup")
    if made is None:
        return None
    image = verification.early_image(ctx, ctx.target, made)
    body = verification.verify_steps(ctx.target, made, run_label=_run_label(ctx), image=image)
    return body, verification.remove_argv(ctx.target, made)


register(StepKind(
    name="verify_backup",
    scope=PRIMARY,
    summary="restore the backup into a scratch database beside the steps after it, and keep the verdict once the "
            "release is recorded (a failure marks the backup, never undoes the release)",
    run=verify_backup,
    changes=frozenset({BACKUPS}),
    once=True,
    after_record=True,
    early_after="backup",
    early=early,
))
