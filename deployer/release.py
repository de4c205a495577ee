"""``deployer release``: the built-in steps a playbook names, and the recovery that undoes them.

Each step is a function ``(run, step) -> detail`` acting on one :class:`Run` (the state of
one release, filled in as steps go). A step that has nothing to do raises :class:`Skip`.
The runner (:mod:`deployer.runner`) executes them in the playbook's order and calls
:func:`recover` when a step fails after the server was changed.
"""

from __future__ import annotations

import getpass
import posixpath
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from deployer.db import backups
from deployer.commands import git as gitops
from deployer.server import health
from deployer.server import journal
from deployer.server import lock
from deployer.server import facts as project
from deployer.commands.compose import parse_lines
from deployer.errors import CommandError, DeployerError, RefusedError
from deployer.db.migrations import MigrationScripts, MigrationStep, upgrade_path
from deployer.playbook import Playbook, Step
from deployer.source import Commit
from deployer.server.target import Target, write_env_file

if TYPE_CHECKING:
    from deployer.commands.compose import Compose
    from deployer.commands.docker import Container
    from deployer.config import Environment
    from deployer.hosts import Host

IMAGE_TAG_PREFIX = "deployer-"


class Skip(Exception):
    """The step has nothing to do this time (the message says why)."""


@dataclass(frozen=True)
class Options:
    ref: str | None = None
    yes: bool = False
    dry_run: bool = False
    verbose: bool = False
    restore_backup: bool = False  # rollbacks: restore the pre-upgrade dump instead of downgrading
    # Asks the user a yes/no question; None when there is no terminal to ask on.
    confirm: Callable[[str], bool] | None = None


@dataclass
class Run:
    """The state of one release as its steps fill it in."""

    target: Target
    playbook: Playbook
    options: Options
    log: Callable[[str], None]
    id: str = ""
    kind: str = "release"
    remote: str = ""
    commit: Commit | None = None
    scripts: MigrationScripts | None = None
    heads: tuple[str, ...] = ()
    pending: list[MigrationStep] = field(default_factory=list)
    previous_commit: str | None = None
    previous_release: journal.Record | None = None
    revision_before: tuple[str, ...] | None = None  # None: the database was not running
    revision_after: tuple[str, ...] = ()
    saved_images: dict[str, str] = field(default_factory=dict)  # image name -> tag of what ran before
    release_images: dict[str, str] = field(default_factory=dict)  # image name -> tag of this release
    target_release: journal.Record | None = None  # rollbacks: the release to bring back
    restore_from: backups.Backup | None = None  # rollbacks: the dump taken when that release was replaced
    backup: backups.Backup | None = None
    started_at: str = ""
    # What has been changed so far: recovery undoes exactly these.
    locked: bool = False
    synced: bool = False
    stopped: bool = False
    migrated: bool = False
    recreated: bool = False
    timings: list[journal.StepTiming] = field(default_factory=list)

    schema_changed_at: float | None = None  # monotonic time the schema moved away from what runs
    db_container: Container | None = None  # the running db container, once looked up

    def revisions(self) -> tuple[str, ...] | None:
        """The database's revision(s), reusing the db container found before (looked up again if it moved)."""
        if self.db_container is not None:
            try:
                return project.read_revisions(self.target, self.db_container)
            except DeployerError:
                self.db_container = None  # recreated since: find it again
        self.db_container = project.running_db(self.target)
        if self.db_container is None:
            return None
        return project.read_revisions(self.target, self.db_container)

    @property
    def env(self) -> Environment:
        return self.target.env

    @property
    def host(self) -> Host:
        return self.target.host

    @property
    def compose(self) -> Compose:
        return self.target.compose


def new_release_id(sha: str, now: datetime | None = None) -> str:
    return f"{(now or datetime.now(timezone.utc)):%Y%m%d-%H%M%S}-{sha[:7]}"


def whoami() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


# --------------------------------------------------------------------------- git on the host


def deployed_commit(target: Target) -> str | None:
    """The commit the host's checkout is on, or None when there is no checkout yet."""
    result = target.host.run(gitops.rev_parse_head(target.env.path))
    return gitops.parse_sha(result.stdout) if result.ok else None


def checkout_is_dirty(target: Target) -> list[str]:
    """Tracked files changed by hand in the host's checkout (they would be overwritten)."""
    result = target.host.run(gitops.status(target.env.path))
    return [entry.path for entry in gitops.parse_status(result.stdout)] if result.ok else []


def checkout_commit(run: Run, sha: str) -> None:
    """Bring the host's checkout to exactly ``sha`` (fetched from the remote), keeping untracked files."""
    host, path = run.host, run.env.path
    if not host.run(["test", "-d", posixpath.join(path, ".git")]).ok:
        # init + fetch rather than clone: the directory may already hold backups or .deployer/
        host.run(["mkdir", "-p", path], check=True)
        host.run(["git", "-C", path, "init", "--quiet"], check=True)
        host.run(["git", "-C", path, "remote", "add", gitops.DEFAULT_REMOTE, run.remote], check=True)
    else:
        host.run(["git", "-C", path, "remote", "set-url", gitops.DEFAULT_REMOTE, run.remote], check=True)
    host.run(gitops.fetch(path), timeout=900).check(f"fetch {run.remote} on {host.name}")
    if not host.run(gitops.has_commit(path, sha)).ok:
        host.run(gitops.fetch_commit(path, sha), timeout=900).check(f"fetch commit {sha[:12]}")
    host.run(gitops.sync(path, sha), timeout=300).check(f"check out {sha[:12]}")
    head = deployed_commit(run.target)
    if head != sha:
        raise DeployerError(f"the checkout on {host.name} is at {head}, not {sha} after checkout")


# --------------------------------------------------------------------------- images


def split_image(name: str) -> tuple[str, str]:
    """``registry:5000/app:1.2`` -> (``registry:5000/app``, ``1.2``); no tag means latest."""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, "latest"


def saved_tag(image: str, release_id: str) -> str:
    repository, _ = split_image(image)
    return f"{repository}:{IMAGE_TAG_PREFIX}{release_id}"


def save_images(run: Run, label: str) -> dict[str, str]:
    """Tag the images the running containers use, so they can be put back without a rebuild.

    The db service is left out: a release never builds it, and a rollback must not
    put an older database server on the data directory a newer one wrote.
    """
    saved = {}
    for container in project.service_containers(run.target):
        if container.state != "running" or not container.image or container.service == run.target.config.app.db_service:
            continue
        tag = saved_tag(container.image, label)
        run.host.run(["docker", "tag", container.image_id, tag], check=True)
        saved[container.image] = tag
    return saved


def restore_images(run: Run) -> None:
    """Point each service's image name back at the image saved before the release."""
    for image, tag in run.saved_images.items():
        run.host.run(["docker", "tag", tag, image], check=True)


# --------------------------------------------------------------------------- confirmations


def confirm(run: Run, question: str, refusal: str) -> None:
    """Ask, or take --yes; refuse without a terminal. A dry run only shows the question."""
    if run.options.yes:
        return
    if run.options.dry_run:
        run.log(f"(would ask: {question})")
        return
    if run.options.confirm is None:
        raise RefusedError(refusal, hint="rerun with --yes to confirm (no terminal to ask on)")
    if not run.options.confirm(question):
        raise RefusedError(refusal + ": not confirmed")


# --------------------------------------------------------------------------- steps


def step_preflight(run: Run, step: Step) -> str:
    from deployer import source

    cfg = run.target.config
    repo = source.open_repo(cfg.root)
    run.remote = source.remote_url(repo, run.env.remote, cfg.root)
    ref = run.options.ref or run.env.branch or cfg.app.branch
    run.commit = source.resolve(repo, run.remote, ref)
    run.id = new_release_id(run.commit.sha)
    run.scripts = source.migration_scripts(repo, run.commit.sha, cfg.app.migrations_dir)
    run.heads = run.scripts.heads
    if len(run.heads) > 1:
        listed = "; ".join(run.scripts.describe(head) for head in run.heads)
        raise RefusedError(
            f"commit {run.commit.sha[:12]} has {len(run.heads)} migration heads: {listed}",
            hint="merge them (`flask db merge heads`), commit, push, and release again",
        )
    run.previous_commit = deployed_commit(run.target)
    dirty = checkout_is_dirty(run.target) if run.previous_commit else []
    if dirty:
        raise RefusedError(
            f"the checkout {run.env.path} on {run.host.name} has local changes: {', '.join(dirty[:5])}",
            hint=f"commit them to the repository, or discard them on the host (`git -C {run.env.path} checkout -- .`)",
        )
    records = journal.read(run.host, run.target.state_dir)
    run.previous_release = journal.last_succeeded(records)
    run.revision_before = run.revisions()
    current = run.revision_before or ()
    unknown = [r for r in current if r not in run.scripts.revisions]
    if unknown:
        raise RefusedError(
            f"the database of {run.env.name} is at {', '.join(unknown)}, which commit {run.commit.sha[:12]} does not know: "
            "the database is ahead of the code you are releasing",
            hint="release a commit that contains that migration, or roll the database back first",
        )
    run.pending = upgrade_path(run.scripts, current, "heads") if run.heads else []
    destructive = [(m, op) for m in run.pending for op in m.destructive_ops]
    if destructive:
        listed = "; ".join(f"{m.revision} ({m.message}): {op}" for m, op in destructive)
        run.log(f"warning: destructive migration operations: {listed}")
        confirm(run, f"Run migrations that destroy data ({listed})?", f"the release would run destructive migrations ({listed})")
    pending = ", ".join(f"{m.revision} {m.message!r}" for m in run.pending) or "none"
    db = "not running yet" if run.revision_before is None else (", ".join(run.revision_before) or "empty")
    return f"commit {run.commit.sha[:12]} ({run.commit.ref}: {run.commit.subject}); database {db}; pending migrations: {pending}"


def step_lock(run: Run, step: Step) -> str:
    info = lock.new_info(f"{run.kind} {run.env.name}")
    lock.acquire(run.host, run.target.state_dir, info, env_name=run.env.name)
    run.locked = True
    return f"held by {info.holder}"


def step_snapshot(run: Run, step: Step) -> str:
    label = run.previous_release.id if run.previous_release else f"before-{run.id}"
    run.saved_images = save_images(run, label)
    commit = run.previous_commit[:12] if run.previous_commit else "none"
    revision = ", ".join(run.revision_before or ()) or "none"
    images = ", ".join(run.saved_images.values()) or "no running containers"
    return f"commit {commit}, revision {revision}, images saved as {images}"


def step_sync(run: Run, step: Step) -> str:
    assert run.commit is not None
    write_env_file(run.target)
    run.synced = True
    checkout_commit(run, run.commit.sha)
    return f"{run.env.path} at {run.commit.sha[:12]}"


def step_stop(run: Run, step: Step) -> str:
    services = step.params.get("services") or [
        c.service for c in project.service_containers(run.target) if c.service != run.target.config.app.db_service
    ]
    if not services:
        raise Skip("nothing runs")
    run.stopped = True
    run.host.run(run.compose.stop(sorted(set(services)), timeout=step.params.get("timeout")), timeout=300, check=True)
    return "stopped " + ", ".join(sorted(set(services)))


def step_build(run: Run, step: Step) -> str:
    result = run.host.run(run.compose.build(pull=bool(step.params.get("pull"))), timeout=3600, on_output=_verbose(run))
    result.check("build the images")
    return "images built"


def step_database_up(run: Run, step: Step) -> str:
    db_service = run.target.config.app.db_service
    run.host.run(run.compose.up([db_service], no_deps=True), timeout=300, check=True)
    run.db_container = None  # compose may have recreated it
    timeout = float(step.params.get("timeout", 120))
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            revisions = run.revisions()
            if revisions is not None:
                if run.revision_before is None:
                    run.revision_before = revisions
                    run.pending = upgrade_path(run.scripts, revisions, "heads") if run.heads else []
                return f"{db_service} accepts connections (revision {', '.join(revisions) or 'none'})"
            last = f"{db_service} is not running"
        except DeployerError as error:
            last = error.message
        if time.monotonic() > deadline:
            raise DeployerError(f"the database did not accept connections within {timeout:.0f}s: {last}")
        time.sleep(1)


def step_backup(run: Run, step: Step) -> str:
    if not run.pending and not step.params.get("always"):
        raise Skip("no migration pending")
    if not run.revision_before and not step.params.get("always"):
        raise Skip("the database has no migration applied yet: nothing to lose")
    # create() reads the dump back (pg_restore) before it counts: an unreadable one stops the release here.
    run.backup = backups.create(run.target, release=run.id, revision=run.revision_before or ())
    return f"{run.backup.path} ({run.backup.size} bytes, sha256 {run.backup.sha256[:12]}…, verified)"


def step_migrate(run: Run, step: Step) -> str:
    if not run.pending:
        raise Skip("no migration pending")
    app = run.target.config.app
    timeout = float(step.params.get("timeout", app.migrate_timeout))
    name = f"{app.name}-migrate-{run.id}"
    run.migrated = True
    run.schema_changed_at = time.monotonic()
    try:
        result = run.host.run(
            run.compose.run(app.web_service, list(app.migrate_command), name=name),
            timeout=timeout,
            on_output=_verbose(run),
        )
    except CommandError:
        run.host.run(["docker", "rm", "--force", name])
        raise DeployerError(
            f"the migration did not finish within {timeout:.0f}s and was stopped",
            hint="a running web process or an open session may hold a lock the migration waits for",
        ) from None
    if not result.ok:
        tail = "\n".join("    " + line for line in (result.stdout + result.stderr).strip().splitlines()[-15:])
        raise DeployerError(f"the migration `{' '.join(app.migrate_command)}` exited {result.exit_code}; its last output:\n{tail}")
    return f"applied {len(run.pending)} migration(s): " + ", ".join(m.revision for m in run.pending)


def guard_schema(run: Run) -> None:
    """Never start code whose migrations do not contain the database's revision."""
    current = run.revisions() or ()
    assert run.scripts is not None
    unknown = [r for r in current if r not in run.scripts.revisions]
    if unknown:
        raise DeployerError(
            f"refusing to start commit {run.commit.sha[:12] if run.commit else '?'}: the database is at "
            f"{', '.join(unknown)}, which its migrations do not contain (old code on a newer schema)"
        )


def step_up(run: Run, step: Step) -> str:
    guard_schema(run)
    run.recreated = True
    services = list(step.params.get("services") or [])
    no_deps = False
    db_service = run.target.config.app.db_service
    if not services:
        db = project.running_db(run.target)
        if db is not None and db.is_healthy:
            # The database already runs and answers: recreate the rest without compose
            # re-checking it (its depends_on healthcheck wait adds ~0.5 s to the outage).
            listed = run.host.run(run.compose.config_services(), timeout=60).check("list the compose services")
            services = [name for name in parse_lines(listed.stdout) if name != db_service]
            no_deps = bool(services)
    timeout = float(step.params.get("timeout", 600))
    run.host.run(run.compose.up(services, no_deps=no_deps), timeout=timeout, check=True)
    run.db_container = None  # a full `up` may have recreated it
    # compose recreates exactly the containers whose image or configuration changed
    detail = "containers up to date" + (f" ({', '.join(services)})" if services else "")
    if run.schema_changed_at is not None:
        # The window in which the running code and the schema did not match (field-notes: measure it).
        detail += f"; code and schema mismatched for {time.monotonic() - run.schema_changed_at:.1f}s"
    return detail


def step_verify(run: Run, step: Step) -> str:
    revisions = run.revisions()
    if revisions is None:
        raise DeployerError("the database is not running: cannot verify its revision")
    run.revision_after = revisions
    if set(revisions) != set(run.heads):
        raise DeployerError(
            f"the database is at {', '.join(revisions) or 'no revision'}, not at the code's head {', '.join(run.heads)}",
            hint="the migration reported success but did not reach head: check the migrate command and the app's alembic configuration",
        )
    return f"database at head {', '.join(revisions) or '(no migrations)'}"


def step_health(run: Run, step: Step) -> str:
    timeout = float(step.params.get("timeout", run.env.health_timeout))
    return health.wait_healthy(run.target, timeout=timeout, settle=float(step.params.get("settle", 3)), log=run.log)


def step_record(run: Run, step: Step) -> str:
    run.release_images = save_images(run, run.target_release.id if run.target_release else run.id)
    if not run.revision_after:
        run.revision_after = run.revisions() or ()
    journal.append(run.host, run.target.state_dir, make_record(run, journal.SUCCEEDED))
    return f"{run.kind} {run.id} recorded; images saved as {', '.join(run.release_images.values()) or 'none'}"


def step_run(run: Run, step: Step) -> str:
    argv = step.argv()
    timeout = float(step.params.get("timeout", 600))
    service = step.params.get("service")
    if service:
        argv = run.compose.run(str(service), argv)
        result = run.host.run(argv, timeout=timeout, on_output=_verbose(run))
    else:
        result = run.host.run(argv, cwd=run.env.path, timeout=timeout, on_output=_verbose(run))
    result.check(f"run step {step.label!r}")
    return f"`{' '.join(step.argv())}` ok"


STEPS: dict[str, Callable[[Run, Step], str]] = {
    "preflight": step_preflight,
    "lock": step_lock,
    "snapshot": step_snapshot,
    "sync": step_sync,
    "stop": step_stop,
    "build": step_build,
    "database_up": step_database_up,
    "backup": step_backup,
    "migrate": step_migrate,
    "up": step_up,
    "verify": step_verify,
    "health": step_health,
    "record": step_record,
    "run": step_run,
}


def _verbose(run: Run) -> Callable[[str], None] | None:
    """Stream a command's output into the log with ``--verbose``."""
    if not run.options.verbose:
        return None
    return lambda line: run.log("  | " + line.rstrip())


# --------------------------------------------------------------------------- recovery


def migration_argv(migrate_command: tuple[str, ...], verb: str, revision: str) -> list[str]:
    """From the configured upgrade command, the command that moves to ``revision``.

    ``flask db upgrade`` -> ``flask db downgrade REV``; ``alembic upgrade head`` ->
    ``alembic upgrade REV``. ``verb`` is ``upgrade`` or ``downgrade``.
    """
    argv = list(migrate_command)
    if "upgrade" in argv:
        index = argv.index("upgrade")
        return [*argv[:index], verb, revision]
    raise DeployerError(
        f"cannot derive a {verb} command from `{' '.join(migrate_command)}`",
        hint="use a migrate_command of the form `flask db upgrade` or `alembic upgrade head`",
    )


def downgrade_argv(migrate_command: tuple[str, ...], revision: str) -> list[str]:
    return migration_argv(migrate_command, "downgrade", revision)


def recover(run: Run, failure: BaseException) -> str:
    """Put the previous release back after a failed step. Returns what was done.

    Order matters: the schema goes back first, with the NEW image (only it has the newer
    scripts), then the old code and images, then the old containers, then a health check.
    Raises :class:`~deployer.errors.RecoveryFailed` naming what is left to do by hand.
    """
    from deployer.errors import RecoveryFailed

    done: list[str] = []
    left: list[str] = []
    app = run.target.config.app
    before = run.revision_before or ()
    if run.kind == "rollback" and run.saved_images:
        # A rollback went DOWN: only the images it started from know the newer scripts,
        # so they come back first and migrate the schema up again.
        try:
            restore_images(run)
            done.append("previous images re-tagged")
        except DeployerError as error:
            left.append(f"re-tag the saved images {', '.join(run.saved_images.values())} ({error.message})")
    if run.migrated:
        try:
            now = run.revisions() or ()
        except DeployerError as error:
            now = None
            left.append(f"read the database revision ({error.message})")
        if now is not None and set(now) != set(before):
            target_rev = before[0] if len(before) == 1 else "base" if not before else None
            verb = "upgrade" if run.kind == "rollback" else "downgrade"
            moved = False
            if target_rev is not None and not left:
                run.log(f"recovery: {verb} of the database {', '.join(now) or 'base'} -> {target_rev}")
                result = run.host.run(
                    run.compose.run(app.web_service, migration_argv(app.migrate_command, verb, target_rev)),
                    timeout=float(app.migrate_timeout),
                )
                after = run.revisions() or ()
                moved = result.ok and set(after) == set(before)
                if moved:
                    done.append(f"database {verb}d to {target_rev}")
            if not moved and run.backup is not None:
                run.log(f"recovery: restoring the backup {run.backup.id} taken at the start")
                try:
                    backups.restore(run.target, run.backup)
                    done.append(f"database restored from backup {run.backup.id}")
                except DeployerError as error:
                    left.append(f"restore the database from {run.backup.path} ({error.message})")
            elif not moved:
                left.append(f"bring the database from {', '.join(now)} back to {', '.join(before) or 'empty'}")
        elif now is not None:
            done.append(f"database still at {', '.join(before) or 'no revision'} (the migration changed nothing)")
    if run.synced and run.previous_commit:
        try:
            checkout_commit(run, run.previous_commit)
            done.append(f"checkout back at {run.previous_commit[:12]}")
        except DeployerError as error:
            left.append(f"check out {run.previous_commit} in {run.env.path} ({error.message})")
    if run.saved_images and run.kind != "rollback":
        try:
            restore_images(run)
            done.append("previous images re-tagged")
        except DeployerError as error:
            left.append(f"re-tag the saved images {', '.join(run.saved_images.values())} ({error.message})")
    if run.previous_commit is None:
        # A first release has nothing to go back to: stop what it started, keep the data.
        web = app.web_service
        run.host.run(run.compose.stop([web]), timeout=300)
        done.append(f"first release: {web} stopped; the database and its volume are kept")
    elif run.recreated or run.stopped:
        if left:
            left.append("start the previous release (`docker compose up -d --no-build`) once the above is done")
        else:
            result = run.host.run(run.compose.up([]), timeout=600)
            if result.ok:
                done.append("previous containers started")
            else:
                left.append(f"start the previous release: {result.stderr.strip()[-300:]}")
    if run.previous_commit is not None and not left:
        try:
            summary = health.wait_healthy(run.target, timeout=float(run.env.health_timeout), settle=2.0, log=run.log)
            done.append(f"previous release answers ({summary})")
        except DeployerError as error:
            left.append(f"the previous release does not answer: {error.message}")
    report = "; ".join(done) or "nothing had changed"
    if left:
        raise RecoveryFailed(
            f"recovery incomplete after: {failure}\n  done: {report}\n  left to do by hand: " + "; ".join(left),
            hint="the deploy lock was released; fix the above before the next release",
        )
    return report


# --------------------------------------------------------------------------- the record


def make_record(run: Run, outcome: str, *, error: str | None = None, recovery: str | None = None) -> journal.Record:
    finished = datetime.now(timezone.utc)
    started = datetime.fromisoformat(run.started_at) if run.started_at else finished
    return journal.Record(
        id=run.id,
        kind=run.kind,
        environment=run.env.name,
        outcome=outcome,
        commit=run.commit.sha if run.commit else None,
        previous_commit=run.previous_commit,
        revision_before=tuple(run.revision_before or ()),
        revision_after=tuple(run.revision_after),
        started_at=run.started_at,
        finished_at=finished.isoformat(timespec="seconds"),
        seconds=round((finished - started).total_seconds(), 3),
        user=whoami(),
        backup=run.backup.id if run.backup else None,
        images=dict(run.release_images),
        steps=tuple(run.timings),
        error=error,
        recovery=recovery,
        previous_release=run.previous_release.id if run.previous_release else None,
        target_release=run.target_release.id if run.target_release else None,
    )
