"""The rollback's own steps: ``rollback_preflight`` (choose the target, read the facts, refuse
what cannot work), ``schema`` (downgrade with the CURRENT image — only it has the newer
scripts — or restore the dump taken when the target was replaced) and ``switch`` (the
target's commit and saved images, rebuilt when they were pruned).

The target is an alembic revision (full id or unique prefix), a release id from the
journal, or ``previous``; choosing it is pure (:func:`resolve_target`).
"""

from __future__ import annotations

import time

from deployer.actions import Command, Probe, Skip
from deployer.commands import git as gitops
from deployer.db.launcher import failure_reason, launched
from deployer.db.migrations import downgrade_path
from deployer.errors import ConfigError, DeployerError, RefusedError
from deployer.server import backups, journal
from deployer.server import facts as server_facts
from deployer.steps import CHECKOUT, CONTAINERS, IMAGES, PRIMARY, SCHEMA, StepKind, register
from deployer.steps.build import restore_saved_images
from deployer.steps.common import confirm, migration_argv, new_release_id, saved_tag, shown_revisions
from deployer.steps.context import Context, Facts, RollbackFacts
from deployer.steps.migrate import one_off, run_bounded
from deployer.steps.playbook import Playbook, Step
from deployer.steps.preflight import read_host_state
from deployer.steps.recovery import Recovery, read_revision
from deployer.steps.sync import checkout_commands


class TargetError(RefusedError):
    """The rollback target is unknown, ambiguous, or not behind what runs now."""


def _succeeded_releases(records: list[journal.Record]) -> list[journal.Record]:
    return [r for r in records if r.kind == "release" and r.outcome == journal.SUCCEEDED]


def _describe(record: journal.Record) -> str:
    return f"{record.id} (commit {(record.commit or '?')[:12]}, revision {', '.join(record.revision_after) or 'none'})"


def resolve_target(records: list[journal.Record], target: str) -> journal.Record:
    """Pick the release a rollback goes to. Pure: works on journal records only."""
    if not target:
        raise ConfigError("the rollback target is empty", hint="give a release id, a revision, or leave it out for `previous`")
    releases = _succeeded_releases(records)
    running = journal.running_release(records)
    if running is None:
        raise TargetError("no successful release is recorded for this environment: there is nothing to roll back to")
    older = [r for r in releases if releases.index(r) < releases.index(running)] if running in releases else []
    candidates = "; ".join(_describe(r) for r in reversed(older)) or "none"
    if target == "previous":
        if not older:
            raise TargetError(f"the running release {running.id} is the first one recorded: there is no previous release")
        return older[-1]
    by_id = [r for r in releases if r.id == target] or [r for r in releases if r.id.startswith(target)]
    if len(by_id) == 1:
        chosen = by_id[0]
    elif len(by_id) > 1:
        raise TargetError(f"{target!r} matches several releases: {'; '.join(_describe(r) for r in by_id)}")
    else:
        by_revision: dict[tuple[str, ...], list[journal.Record]] = {}
        for record in releases:
            if any(rev.startswith(target) for rev in record.revision_after):
                by_revision.setdefault(record.revision_after, []).append(record)
        if len(by_revision) > 1:
            raise TargetError(
                f"revision prefix {target!r} is ambiguous: " + "; ".join(", ".join(rev) for rev in by_revision),
                hint="give more characters of the revision id",
            )
        if not by_revision:
            raise TargetError(
                f"{target!r} is neither a release id nor the head revision of a recorded release",
                hint=f"releases you can roll back to: {candidates}",
            )
        (matching,) = by_revision.values()
        older_matching = [r for r in matching if r in older]
        if not older_matching:
            if running in matching:
                raise TargetError(f"{target!r} is the revision of the running release {running.id}: nothing to roll back")
            raise TargetError(
                f"revision {target!r} belongs to releases newer than the running one ({', '.join(r.id for r in matching)})",
                hint="to go forward, use `deployer release`",
            )
        chosen = older_matching[-1]
    if chosen.id == running.id:
        raise TargetError(f"{chosen.id} is the running release: nothing to roll back")
    if chosen not in older:
        raise TargetError(f"release {chosen.id} is newer than the running release {running.id}", hint="to go forward, use `deployer release`")
    return chosen


def replacing_backup(records: list[journal.Record], chosen: journal.Record, available: list[backups.Backup]) -> backups.Backup | None:
    """The dump taken, before migrating, by the release that replaced ``chosen``."""
    found = {b.id: b for b in available}
    for record in records[records.index(chosen) + 1 :]:
        if record.kind == "release" and record.backup and record.backup in found:
            backup = found[record.backup]
            if tuple(backup.revision) == tuple(chosen.revision_after):
                return backup
    return None


def _fetched(repo, remote: str, sha: str):  # noqa: ANN001, ANN202
    """The local repository, with ``sha`` fetched from the remote if it is missing."""
    try:
        repo.commit(sha)
    except ValueError:
        repo.git.fetch(remote)
    return repo


def rollback_preflight(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    from deployer import source

    cfg = ctx.target.config
    target = ctx.options.ref if ctx.options.ref is not None else "previous"
    if ctx.env.swarm:
        from deployer.steps import swarm

        swarm.check(ctx)
    state = read_host_state(ctx)
    records = state["records"]
    journal_records: list[journal.Record] = list(records)  # type: ignore[call-overload]
    chosen = resolve_target(journal_records, target)
    running = journal.running_release(records)  # type: ignore[arg-type]
    deployed = state["deployed"]
    if not chosen.commit:
        raise TargetError(f"release {chosen.id} has no commit recorded")
    if deployed is None:
        raise DeployerError(f"there is no checkout in {ctx.env.path} on {ctx.host.name}: nothing to roll back")
    repo = source.open_repo(cfg.root)
    remote = source.remote_url(repo, ctx.env.remote, cfg.root)
    running_scripts = source.migration_scripts(_fetched(repo, remote, deployed), deployed, cfg.app.migrations_dir)  # type: ignore[arg-type]
    scripts = source.migration_scripts(_fetched(repo, remote, chosen.commit), chosen.commit, cfg.app.migrations_dir)
    compose_text = source.file_at(repo, chosen.commit, cfg.app.compose_file)
    if compose_text is None:
        raise ConfigError(f"commit {chosen.commit[:12]} of release {chosen.id} has no {cfg.app.compose_file}")
    compose = server_facts.compose_config(ctx.target, compose_text)
    ctx.scratch["compose_text"] = compose_text  # the other hosts resolve it with their own variables
    database = server_facts.database_location(ctx.target, server_facts.compose_config(ctx.target))
    revision = server_facts.read_revisions(ctx.target, database, state["containers"])  # type: ignore[arg-type]
    if revision is None:
        raise DeployerError(f"the database of {ctx.env.name} is not running: start it before a rollback")
    heads = tuple(chosen.revision_after)
    unknown = [r for r in revision if r not in running_scripts.revisions]
    if unknown:
        raise RefusedError(
            f"the database is at {', '.join(unknown)}, which the deployed commit {deployed[:12]} does not know",  # type: ignore[index]
            hint="release a commit containing that migration first",
        )
    target_rev = heads[0] if len(heads) == 1 else "base" if not heads else None
    if target_rev is None:
        raise RefusedError(f"release {chosen.id} had several heads ({', '.join(heads)}); roll back to a single revision")
    path = tuple(downgrade_path(running_scripts, revision, target_rev) if set(heads) != set(revision) else ())
    backup = replacing_backup(records, chosen, backups.list_backups(ctx.target))  # type: ignore[arg-type]
    restore = bool(ctx.options.restore_backup)
    impossible = [m for m in path if not m.has_downgrade]
    destructive = [(m, op) for m in path for op in m.destructive_ops]
    if restore:
        if backup is None:
            raise RefusedError(
                f"no backup taken when release {chosen.id} was replaced is on {ctx.host.name}",
                hint="without --restore-backup, the schema is downgraded instead (if every step can be)",
            )
        refusal = backup.refusal()
        if refusal is not None and not ctx.options.force:
            raise RefusedError(refusal, hint="--force restores it anyway (its size and sha256 are checked first); "
                               "without --restore-backup the schema is downgraded instead (if every step can be)")
        if refusal is not None:
            ctx.log(f"warning: {refusal}; restoring it anyway (--force)")
        later = [r.id for r in journal_records[journal_records.index(chosen) + 1 :]
                 if r.kind == "release" and r.outcome == journal.SUCCEEDED]
        loses = (f"restoring backup {backup.id} (taken {backup.created_at}) loses every change to the database "
                 f"since then, across {len(later)} later release(s): {', '.join(later) or 'none'}")
        confirm(ctx, f"Restore backup {backup.id}, losing all data written since?", loses, warning=loses)
    else:
        if impossible:
            listed = "; ".join(f"{m.revision} ({m.message})" for m in impossible)
            raise RefusedError(
                f"cannot roll back to {chosen.id}: these migrations have no working downgrade: {listed}",
                hint="choose --restore-backup to restore the dump taken before they ran"
                + (f" (backup {backup.id}, {backup.created_at})" if backup else " (none is on the host)"),
            )
        if destructive:
            listed = "; ".join(f"{m.revision} ({m.message}): {op}" for m, op in destructive)
            confirm(ctx, "Downgrade, dropping this data?",
                    f"the downgrade would drop data ({listed}); --restore-backup brings the pre-upgrade data back instead",
                    warning=f"the downgrade drops data: {listed}")
    commit = source.Commit(sha=chosen.commit, ref=chosen.id, subject=_subject(repo, chosen.commit), author="")
    db = cfg.app.db_service
    ctx.facts = Facts(
        commit=commit, remote=remote, scripts=scripts, heads=heads, compose=compose, database=database,
        containers=state["containers"], deployed_commit=deployed, path_exists=True, checkout_exists=True,  # type: ignore[arg-type]
        revision=revision, pending=path, previous_release=running, volumes=state["volumes"],  # type: ignore[arg-type]
        services=tuple(s for s in ctx.target.services_here(compose.services) if s != db),
        rollback=RollbackFacts(target_release=chosen, target_revision=target_rev, downgrades=path,
                               restore_from=backup if restore else None),
    )
    ctx.values["release_id"] = "rollback-" + new_release_id(chosen.commit)
    steps = ", ".join(f"{m.revision} {m.message!r}" for m in path) or "none"
    how = f"restore backup {backup.id}" if restore and backup else f"downgrade: {steps}"
    return f"back to {chosen.id} (commit {chosen.commit[:12]}, revision {target_rev}); {how}"
    yield  # a generator: preflight only reads


def _subject(repo, sha: str) -> str:  # noqa: ANN001
    try:
        return repo.commit(sha).summary
    except ValueError:
        return ""


def schema(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    facts = ctx.known
    app = ctx.app
    assert facts.rollback is not None
    rollback = facts.rollback
    if rollback.restore_from is not None:
        backup = rollback.restore_from
        yield Command(tuple(ctx.compose.stop([app.web_service])), what=f"stop {app.web_service}", timeout=300)
        ctx.scratch["schema_changed_at"] = time.monotonic()
        yield from backups.restore_steps(ctx.target, backup, facts.database)
        return f"restored backup {backup.id}"
    if not rollback.downgrades:
        raise Skip("the schema is already at the target revision")
    target_rev = rollback.target_revision
    ctx.scratch["schema_changed_at"] = time.monotonic()
    name = f"{app.name}-downgrade-{ctx.run_id}"
    ctx.note(migration=name)
    result, retried = yield from run_bounded(ctx, launched(migration_argv(app.migrate_command, "downgrade", target_rev)),
                                             name, f"downgrade to {target_rev}", float(app.migrate_timeout))
    if not result.ok:
        output = (result.stdout + "\n" + result.stderr).strip()
        tail = "\n".join("    " + line for line in output.splitlines()[-15:])
        raise DeployerError(f"the downgrade to {target_rev} exited {result.exit_code}: "
                            f"{failure_reason(output) or 'it printed no reason'}\n  its last output:\n{tail}")
    ctx.note(migration=None)
    return f"downgraded {len(rollback.downgrades)} migration(s) to {target_rev} with the current image" + retried


def undo_schema(ctx: Context, step: Step, recovery: Recovery):  # noqa: ANN201
    """Bring the schema back up to where the rollback started: with the images it started
    from (switch's undo put them back first), or by restoring the safety backup."""
    record = recovery.record
    before = tuple(record.source.revision or ())
    if record.migration:
        yield Command(("docker", "rm", "--force", record.migration), what="stop the downgrade container", check=False)
    now = yield read_revision("the database revision", recovery, plan=True)
    if now is not None and set(now) == set(before):
        recovery.done.append(f"database still at {shown_revisions(before)}")
        return
    destination = before[0] if len(before) == 1 else None
    if destination is not None and not ctx.options.restore_backup:
        yield Command(one_off(ctx, launched(migration_argv(ctx.app.migrate_command, "upgrade", destination)),
                              f"{ctx.app.name}-upgrade-{record.id}"), what=f"upgrade to {destination}", check=False,
                      timeout=float(ctx.app.migrate_timeout))
        after = yield read_revision("the database revision after the upgrade", recovery)
        if after is not None and set(after) == set(before):
            recovery.done.append(f"database upgraded to {destination}")
            return
    if record.backup:
        found = backups.find(ctx.target, record.backup)
        yield from backups.restore_steps(ctx.target, found, recovery.database)
        recovery.done.append(f"database restored from the rollback's safety backup {found.id}")
        return
    recovery.code_stays = True
    recovery.left.append(f"bring the database from {shown_revisions(now)} back to {shown_revisions(before)}")


def switch(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    """Code and images of the target release: saved images re-tagged, or rebuilt when pruned."""
    facts = ctx.known
    chosen = facts.target_release
    assert chosen is not None
    yield from checkout_commands(ctx, facts.commit.sha, exists=True)
    assert ctx.record is not None
    images = dict(chosen.images) or {image: saved_tag(image, chosen.id) for image in ctx.record.source.images}
    missing = []
    for tag in sorted(images.values()):
        found = yield Probe(("docker", "image", "inspect", "--format", "{{.Id}}", tag), check=False, timeout=60)
        if not found.ok and not ctx.planning:
            missing.append(tag)
    if missing or not images:
        yield Command(tuple(ctx.compose.build()), what=f"rebuild the images of {chosen.id}", timeout=3600, stream=True)
        copied = ""
        if ctx.env.swarm:
            from deployer.steps import swarm

            copied = "; " + (yield from swarm.distribute(ctx))
        return (f"checkout at {facts.commit.sha[:12]}; images rebuilt (saved ones pruned: {', '.join(missing) or 'none recorded'})"
                + copied)
    for image, tag in sorted(images.items()):
        yield Command(("docker", "tag", tag, image), what=f"put {image} back")
    copied = ""
    if ctx.env.swarm:
        from deployer.steps import swarm

        copied = "; " + (yield from swarm.distribute(ctx))
    return f"checkout at {facts.commit.sha[:12]}; saved images {', '.join(images.values())} back in place{copied}"


def undo_switch(ctx: Context, step: Step, recovery: Recovery):  # noqa: ANN201
    source = recovery.record.source
    if source.commit:
        yield Command(tuple(gitops.sync(ctx.env.path, source.commit)), what=f"check out {source.commit[:12]} again", timeout=300)
        recovery.done.append(f"checkout back at {source.commit[:12]}")
    yield from restore_saved_images(ctx, recovery)


PLAYBOOK = (
    ("rollback_preflight", "preflight"), ("lock", "lock"), ("snapshot", "snapshot"), ("backup", "backup"),
    ("hold", "hold"), ("schema", "schema"), ("switch", "switch"), ("swap", "swap"), ("verify", "verify"),
    ("health", "health"), ("record", "record"), ("verify_backup", "verify_backup"), ("copy_backup", "copy_backup"),
)


def playbook() -> Playbook:
    from pathlib import Path

    return Playbook(
        name="rollback",
        path=Path("rollback"),
        description="schema down with the current image (or restore), then the target's code and images",
        steps=tuple(Step(kind, {} if kind == label else {"name": label}) for kind, label in PLAYBOOK),
    )


register(StepKind(name="rollback_preflight", summary="choose the rollback's target and read the facts; refuse what cannot work",
                  run=rollback_preflight, in_playbooks=False, once=True))
register(StepKind(name="schema", summary="downgrade with the current image, or restore the target's backup",
                  run=schema, undo=undo_schema, changes=frozenset({SCHEMA, CONTAINERS}), in_playbooks=False, scope=PRIMARY))
register(StepKind(name="switch", summary="the target release's commit and images",
                  run=switch, undo=undo_switch, changes=frozenset({CHECKOUT, IMAGES}), in_playbooks=False))
