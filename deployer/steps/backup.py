"""``backup``: a checksummed dump of the database before anything migrates (restore-verified
beside the steps that follow, its verdict kept once the release is recorded: ``verify_backup``)."""

from __future__ import annotations

from deployer.actions import Command, Skip, Value
from deployer.server import backups
from deployer.steps import BACKUPS, PRIMARY, Param, StepKind, register
from deployer.steps.context import Context
from deployer.steps.database_up import pending
from deployer.steps.playbook import Step
from deployer.steps.recovery import Recovery


def backup(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    always = bool(step.params.get("always")) or ctx.kind == "rollback"
    record = ctx.record
    revision = record.source.revision if record is not None else ctx.known.revision
    if not always and not pending(ctx):
        raise Skip("no migration pending")
    if not always and not revision:
        raise Skip("the database has no migration applied yet: nothing to lose")
    backup_id = ctx.values.setdefault(backups.BACKUP_ID, backups.new_id())
    partial = Value(backups.BACKUP_ID, f"{ctx.env.backup_dir}/{{}}{backups.DUMP_SUFFIX}{backups.PARTIAL_SUFFIX}")
    ctx.note(backup_partial=partial.fill(ctx.values))
    made = yield from backups.create_steps(
        ctx.target, backup_id=backup_id, release=ctx.run_id, revision=tuple(revision or ()),
        location=ctx.known.database, planning=ctx.planning,
    )
    ctx.note(backup=backup_id, backup_partial=None)
    ctx.scratch["backup"] = made
    kind = "safety backup of the current state" if ctx.kind == "rollback" else "backup"
    read = {backups.MYSQL: "its header read back", backups.SQLITE: "integrity-checked"}.get(made.engine,
                                                                                              "its table of contents read back")
    return f"{kind} {made.path or backup_id} ({made.size} bytes, sha256 {made.sha256[:12]}…, {read})"


def undo_backup(ctx: Context, step: Step, recovery: Recovery):  # noqa: ANN201
    partial = recovery.record.backup_partial
    if partial:
        yield Command(("rm", "-f", partial), what="remove the unfinished dump", check=False)


register(StepKind(
    name="backup",
    scope=PRIMARY,
    summary="dump the database, checksum the dump and read its table of contents back, before anything migrates",
    run=backup,
    undo=undo_backup,
    params={"always": Param((bool,), "back up even when no migration is pending")},
    changes=frozenset({BACKUPS}),
))
