"""``deployer rollback``: schema, code and images back together, or refused before acting.

The target is an alembic revision (full id or unique prefix), a release id from the
journal, or ``previous``. The schema is downgraded with the CURRENT image (only it has
the newer scripts) before the old code starts; or, with ``--restore-backup``, the
pre-upgrade dump taken when the target release was replaced is restored. Then the
target's saved images (rebuilt from its commit when they were pruned) and commit come
back, the containers are recreated, the revision verified and the health checked.
A failed rollback is recovered to where it started, like a failed release.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from deployer.db import backups
from deployer.server import journal
from deployer.errors import DeployerError, RefusedError
from deployer.db.migrations import MigrationStep, downgrade_path
from deployer.playbook import Playbook, Step
from deployer.release import (
    Run,
    Skip,
    checkout_commit,
    confirm,
    deployed_commit,
    downgrade_argv,
    new_release_id,
    saved_tag,
)


class TargetError(RefusedError):
    """The rollback target is unknown, ambiguous, or not behind what runs now."""


@dataclass(frozen=True)
class Choice:
    """Where a rollback goes."""

    release: journal.Record  # the release whose code, images and schema come back
    revision: tuple[str, ...]  # its schema head
    path: tuple[MigrationStep, ...]  # downgrades from the current revision, newest first
    backup: backups.Backup | None  # the dump taken when this release was replaced


def _succeeded_releases(records: list[journal.Record]) -> list[journal.Record]:
    return [r for r in records if r.kind == "release" and r.outcome == journal.SUCCEEDED]


def _describe(record: journal.Record) -> str:
    return f"{record.id} (commit {(record.commit or '?')[:12]}, revision {', '.join(record.revision_after) or 'none'})"


def resolve_target(records: list[journal.Record], target: str) -> journal.Record:
    """Pick the release a rollback goes to. Pure: works on journal records only."""
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
                f"revision prefix {target!r} is ambiguous: "
                + "; ".join(", ".join(rev) for rev in by_revision),
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
        raise TargetError(
            f"release {chosen.id} is newer than the running release {running.id}",
            hint="to go forward, use `deployer release`",
        )
    return chosen


def replacing_backup(records: list[journal.Record], chosen: journal.Record, available: list[backups.Backup]) -> backups.Backup | None:
    """The dump taken, before migrating, by the release that replaced ``chosen``."""
    found = {b.id: b for b in available}
    after = records[records.index(chosen) + 1 :]
    for record in after:
        if record.kind == "release" and record.backup and record.backup in found:
            backup = found[record.backup]
            if tuple(backup.revision) == tuple(chosen.revision_after):
                return backup
    return None


# --------------------------------------------------------------------------- steps


def step_preflight(run: Run, step: Step) -> str:
    from deployer import source

    cfg = run.target.config
    target = run.options.ref or "previous"
    records = journal.read(run.host, run.target.state_dir)
    chosen = resolve_target(records, target)
    run.target_release = chosen
    run.previous_release = journal.running_release(records)
    run.previous_commit = deployed_commit(run.target)
    if not chosen.commit:
        raise TargetError(f"release {chosen.id} has no commit recorded")
    repo = source.open_repo(cfg.root)
    run.remote = source.remote_url(repo, run.env.remote, cfg.root)
    run.commit = source.Commit(sha=chosen.commit, ref=chosen.id, subject=_subject(repo, chosen.commit), author="")
    run.id = "rollback-" + new_release_id(chosen.commit)
    run.revision_before = run.revisions()
    if run.revision_before is None:
        raise DeployerError(f"the database of {run.env.name} is not running: start it before a rollback")
    if run.previous_commit is None:
        raise DeployerError(f"there is no checkout in {run.env.path} on {run.host.name}: nothing to roll back")
    current_scripts = source.migration_scripts(_fetched(repo, run, run.previous_commit), run.previous_commit, cfg.app.migrations_dir)
    run.scripts = source.migration_scripts(_fetched(repo, run, chosen.commit), chosen.commit, cfg.app.migrations_dir)
    run.heads = tuple(chosen.revision_after)
    unknown = [r for r in run.revision_before if r not in current_scripts.revisions]
    if unknown:
        raise RefusedError(
            f"the database is at {', '.join(unknown)}, which the deployed commit {run.previous_commit[:12]} does not know",
            hint="release a commit containing that migration first",
        )
    target_rev = run.heads[0] if len(run.heads) == 1 else "base" if not run.heads else None
    if target_rev is None:
        raise RefusedError(f"release {chosen.id} had several heads ({', '.join(run.heads)}); roll back to a single revision")
    path = downgrade_path(current_scripts, run.revision_before, target_rev) if set(run.heads) != set(run.revision_before) else []
    run.pending = path
    backup = replacing_backup(records, chosen, backups.list_backups(run.target))
    run.restore_from = backup
    impossible = [m for m in path if not m.has_downgrade]
    destructive = [(m, op) for m in path for op in m.destructive_ops]
    restore = bool(run.options.restore_backup)
    if restore:
        if backup is None:
            raise RefusedError(
                f"no backup taken when release {chosen.id} was replaced is on {run.host.name}",
                hint="without --restore-backup, the schema is downgraded instead (if every step can be)",
            )
        later = [r.id for r in records[records.index(chosen) + 1 :] if r.kind == "release" and r.outcome == journal.SUCCEEDED]
        run.log(
            f"warning: restoring backup {backup.id} (taken {backup.created_at}) loses every change to the database "
            f"since then, across {len(later)} later release(s): {', '.join(later) or 'none'}"
        )
        confirm(
            run,
            f"Restore backup {backup.id} from {backup.created_at}, losing all data written since?",
            f"restoring backup {backup.id} would lose the data written since {backup.created_at}",
        )
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
            run.log(f"warning: the downgrade drops data: {listed}")
            confirm(
                run,
                f"Downgrade, dropping {listed}?",
                f"the downgrade would drop data ({listed}); --restore-backup brings the pre-upgrade data back instead",
            )
    steps = ", ".join(f"{m.revision} {m.message!r}" for m in path) or "none"
    how = f"restore backup {backup.id}" if restore and backup else f"downgrade: {steps}"
    return f"back to {chosen.id} (commit {chosen.commit[:12]}, revision {target_rev}); {how}"


def _subject(repo, sha: str) -> str:  # noqa: ANN001
    try:
        return repo.commit(sha).summary
    except ValueError:
        return ""


def _fetched(repo, run: Run, sha: str):  # noqa: ANN001, ANN202
    """The local repository, with ``sha`` fetched from the remote if it is missing."""
    try:
        repo.commit(sha)
    except ValueError:
        repo.git.fetch(run.remote)
    return repo


def step_backup(run: Run, step: Step) -> str:
    run.backup = backups.create(run.target, release=run.id, revision=run.revision_before or ())  # read back before it counts
    return f"safety backup {run.backup.id} of the current state ({run.backup.size} bytes, verified)"


def step_schema(run: Run, step: Step) -> str:
    app = run.target.config.app
    backup = run.restore_from
    if run.options.restore_backup:
        assert backup is not None
        run.stopped = True
        run.host.run(run.compose.stop([app.web_service]), timeout=300, check=True)
        run.migrated = True
        run.schema_changed_at = time.monotonic()
        backups.restore(run.target, backup)
        return f"restored backup {backup.id}; database at {', '.join(run.revisions() or ()) or 'no revision'}"
    if not run.pending:
        raise Skip("the schema is already at the target revision")
    target_rev = run.heads[0] if run.heads else "base"
    run.migrated = True
    run.schema_changed_at = time.monotonic()
    result = run.host.run(
        run.compose.run(app.web_service, downgrade_argv(app.migrate_command, target_rev)),
        timeout=float(app.migrate_timeout),
    )
    if not result.ok:
        tail = "\n".join("    " + line for line in (result.stdout + result.stderr).strip().splitlines()[-15:])
        raise DeployerError(f"the downgrade to {target_rev} exited {result.exit_code}; its last output:\n{tail}")
    return f"downgraded {len(run.pending)} migration(s) to {target_rev} with the current image"


def step_switch(run: Run, step: Step) -> str:
    """Code and images of the target release: saved images re-tagged, or rebuilt when pruned."""
    chosen = run.target_release
    assert chosen is not None and run.commit is not None
    run.synced = True
    checkout_commit(run, run.commit.sha)
    images = dict(chosen.images) or {image: saved_tag(image, chosen.id) for image in run.saved_images}
    missing = [tag for tag in images.values() if not run.host.run(["docker", "image", "inspect", tag]).ok]
    if missing or not images:
        run.host.run(run.compose.build(), timeout=3600).check(f"rebuild the images of {chosen.id}")
        return f"checkout at {run.commit.sha[:12]}; images rebuilt (saved ones pruned: {', '.join(missing) or 'none recorded'})"
    for image, tag in images.items():
        run.host.run(["docker", "tag", tag, image], check=True)
    return f"checkout at {run.commit.sha[:12]}; saved images {', '.join(images.values())} back in place"


PLAYBOOK_STEPS = ("preflight", "lock", "snapshot", "backup", "schema", "switch", "up", "verify", "health", "record")


def playbook() -> Playbook:
    from pathlib import Path

    return Playbook(
        name="rollback",
        path=Path("rollback"),
        description="schema down with the current image (or restore), then the target's code and images",
        steps=tuple(Step(name) for name in PLAYBOOK_STEPS),
    )


def step_functions() -> dict:
    from deployer.release import STEPS

    return {
        **STEPS,
        "preflight": step_preflight,
        "backup": step_backup,
        "schema": step_schema,
        "switch": step_switch,
    }
