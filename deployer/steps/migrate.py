"""``migrate``: the configured migrate command, once, in a one-off container of the NEW image.

The container is named after the run and labelled with it: should deployer vanish, the
lease holder on the host stops it; should deployer give up (a timeout, Ctrl-C), it stops it
and ends its database session itself. The revision is read back before anything is claimed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from deployer.actions import Command, Read, Skip, Wait, templated
from deployer.db import locks
from deployer.db.launcher import failure_reason, launched
from deployer.db.migrations import MigrationStep
from deployer.db.url import MYSQL, POSTGRESQL, SQLITE
from deployer.errors import CommandError, DeployerError
from deployer.server import backups as backups_mod
from deployer.server.lock import RUN_LABEL
from deployer.server.runlog import DONE
from deployer.steps import PRIMARY, SCHEMA, Param, StepKind, register
from deployer.steps.common import migration_argv, shown_revisions
from deployer.steps.context import Context
from deployer.steps.database_up import pending
from deployer.steps.playbook import Step
from deployer.steps.recovery import Recovery, database_created_by_run, database_started, read_revision

# The migration's database sessions carry this application_name (libpq reads PGAPPNAME).
APP_NAME_VARIABLE = "PGAPPNAME"


class MigrationFailed(DeployerError):
    """The migrate command failed or did not finish."""


def migration_name(app_name: str, run_id: str) -> str:
    return f"{app_name}-migrate-{run_id}"


def one_off(ctx: Context, argv: list[str], name: str, *, bounded: bool = False) -> tuple:  # noqa: ANN201 - tuple[Arg, ...]
    """A one-off container of the web service's image, named and labelled with the run;
    ``bounded``: its PostgreSQL statements wait at most ``lock_timeout`` for a lock."""
    env = {APP_NAME_VARIABLE: name}
    options = lock_options(ctx) if bounded else None
    if options:
        env["PGOPTIONS"] = options
    command = ctx.compose.run(ctx.app.web_service, argv, name=name, env=env, labels={RUN_LABEL: ctx.run_id or name})
    return templated(command, ctx.values)


def lock_options(ctx: Context) -> str | None:
    """``PGOPTIONS`` with the environment's lock timeout, the web service's own kept (None:
    not PostgreSQL, or no timeout)."""
    facts = ctx.facts
    if facts is None or facts.database is None or facts.database.engine != POSTGRESQL:
        return None
    web = facts.compose.services.get(ctx.app.web_service) if facts.compose else None
    return locks.pgoptions(web.environment.get("PGOPTIONS") if web else None, ctx.env.lock_timeout)


def cancel_sessions(recovery_or_none: Recovery | None, ctx_location, name: str) -> Read:  # noqa: ANN001
    """End the database sessions of a stopped migration (a session waiting on a lock outlives
    its client and keeps every later query queued behind it)."""

    def cancel(ctx: Context) -> int:
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        from deployer.db.url import driver_url
        from deployer.server import facts

        location = ctx_location
        if location is None or location.engine != POSTGRESQL or ctx.planning:
            return 0
        try:
            with facts.connectable_url(ctx.target, location) as url:
                engine = create_engine(driver_url(url), poolclass=NullPool, connect_args={"connect_timeout": 5})
                try:
                    with engine.begin() as connection:
                        rows = connection.execute(text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = :name AND pid <> pg_backend_pid()"), {"name": name}).fetchall()
                        return len(rows)
                finally:
                    engine.dispose()
        except DeployerError:
            return 0
        except Exception:  # noqa: BLE001 - best effort: the revision is read back either way
            return 0

    return Read(f"end the database sessions of {name}", cancel)


def splits(ctx: Context) -> bool:
    """Contract revisions wait for the switch only when the playbook has a ``contract`` step."""
    return any(name == "contract" for _, name in ctx.scratch.get("steps", ()))


def phases(ctx: Context, todo: Sequence[MigrationStep]) -> tuple[tuple[MigrationStep, ...], tuple[MigrationStep, ...]]:
    """(expand, contract): the pending migrations before the switch, and those from the first
    revision marked ``# deployer: contract`` on, which wait until the new code is healthy
    (only with a ``contract`` step in the playbook; without, everything runs before)."""
    first = next((i for i, m in enumerate(todo) if m.contract), None) if splits(ctx) else None
    if first is None:
        return tuple(todo), ()
    return tuple(todo[:first]), tuple(todo[first:])


def migrate(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    todo = pending(ctx)
    if not todo:
        raise Skip("no migration pending")
    expand, contract = phases(ctx, todo)
    if contract:
        # verify expects the last expand revision (or the revision now); `contract` the heads.
        before = ctx.record.source.revision if ctx.record is not None else None
        ctx.scratch["migrate_target"] = (expand[-1].revision,) if expand else tuple(before or ctx.known.revision or ())
    if not expand:
        raise Skip(f"the {len(contract)} pending migration(s) are contract revisions: they run after the switch")
    app = ctx.app
    timeout = float(step.params.get("timeout", app.migrate_timeout))
    name = migration_name(app.name, ctx.run_id)
    argv = migration_argv(app.migrate_command, "upgrade", expand[-1].revision) if contract else list(app.migrate_command)
    result, retried = yield from run_migration(ctx, argv, name, "migrate the database", timeout)
    ctx.note(migration=None)
    later = f"; {len(contract)} contract migration(s) wait for the switch" if contract else ""
    return f"applied {len(expand)} migration(s): " + ", ".join(m.revision for m in expand) + retried + later


def run_migration(ctx: Context, command: Sequence[str], name: str, what: str, timeout: float):  # noqa: ANN201 - generator
    """Run the upgrade ``command`` once in the one-off container ``name``, bounded (see
    :func:`run_bounded`); a failure or a timeout (the container stopped, its session ended)
    raises :class:`MigrationFailed`. Returns ``(result, note on retries)``."""
    ctx.note(migration=name)
    try:
        result, retried = yield from run_bounded(ctx, launched(list(command)), name, what, timeout)
    except CommandError as error:
        if "timed out" not in error.message:
            raise
        yield Command(("docker", "rm", "--force", name), what="stop the migration", check=False, timeout=120)
        yield cancel_sessions(None, ctx.known.database, name)
        raise MigrationFailed(
            f"the migration did not finish within {timeout:.0f}s and was stopped (its database session ended)",
            hint="a running web process or an open session may hold a lock the migration waits for",
        ) from None
    if result is not None and not result.ok:
        output = (result.stdout + "\n" + result.stderr).strip()
        reason = failure_reason(output) or "it printed no reason"
        tail = "\n".join("    " + line for line in output.splitlines()[-15:])
        raise MigrationFailed(
            f"the migration `{' '.join(command)}` exited {result.exit_code}: {reason}\n  its last output:\n{tail}"
        )
    return result, retried


def run_bounded(ctx: Context, argv: list[str], name: str, what: str, timeout: float):  # noqa: ANN201 - generator
    """Run a migration command (``argv``, upgrade or downgrade) in the one-off container
    ``name``, its lock waits bounded by ``lock_timeout`` on PostgreSQL, tried again
    ``lock_retries`` times after a pause when it gave up waiting (its transaction rolled
    back), while :class:`~deployer.db.locks.LockWatch` notes who blocked it.

    Returns ``(result, note)``: the last run's result (None in a dry run; a failure that is
    not a lock timeout is the caller's to report) and a note on the retries ("" without).
    Raises :class:`MigrationFailed` naming the blockers when every attempt gave up; a
    :class:`~deployer.errors.CommandError` (the run's own timeout) goes to the caller.
    """
    bounded = lock_options(ctx) is not None
    attempts = 1 + (ctx.env.lock_retries if bounded else 0)
    blockers: dict[int, locks.Blocker] = {}
    for attempt in range(1, attempts + 1):
        watch = None
        if bounded:
            watch = yield Read("watch what the migration's database sessions wait for", lambda c: _watch(c, name))
        try:
            result = yield Command(one_off(ctx, argv, name, bounded=bounded),
                                   what=what + (f" (attempt {attempt} of {attempts})" if attempt > 1 else ""),
                                   check=False, timeout=timeout, stream=True, retry=False)
        finally:
            if watch is not None:
                blockers.update({b.pid: b for b in watch.stop()})
        output = "" if result is None else (result.stdout + "\n" + result.stderr)
        if result is None or result.ok or not (bounded and locks.timed_out(output)):
            held = "; ".join(b.describe() for b in blockers.values())
            note = f" (on attempt {attempt} of {attempts}; a lock was held by {held or 'a session not seen'})" if attempt > 1 else ""
            return result, note
        if not blockers:
            found = yield Read("the sessions holding table locks in old transactions",
                               lambda c: _suspects(c, name, ctx.env.lock_timeout))
            blockers.update({b.pid: b for b in found or ()})
        held = "; ".join(b.describe() for b in blockers.values()) or "no session found"
        if attempt == attempts:
            raise MigrationFailed(
                f"the migration waited for a lock longer than lock_timeout ({ctx.env.lock_timeout:g}s) "
                f"{attempts} time(s) and gave up (its transaction rolled back). "
                f"Blocked by: {held}",
                hint="end or finish that session (`SELECT pg_terminate_backend(PID)` as a superuser), then try "
                     "again; or raise lock_timeout / lock_retries in deploy.toml",
            )
        pause = min(30.0, 2.0 ** (attempt - 1))
        ctx.log(f"the migration gave up waiting for a lock (lock_timeout {ctx.env.lock_timeout:g}s), blocked by: {held}; "
                f"trying again in {pause:g}s")
        yield Wait(f"{pause:g}s before the next attempt", _pause(pause))
    raise AssertionError("unreachable")


def _watch(ctx: Context, name: str) -> locks.LockWatch | None:
    """Start watching what the migration's sessions wait for (None: not readable from here)."""
    from deployer.server import facts

    location = ctx.known.database
    if location is None or location.engine != POSTGRESQL:
        return None
    return locks.LockWatch(lambda: facts.connectable_url(ctx.target, location), name).start()


def _suspects(ctx: Context, name: str, older_than: float) -> list[locks.Blocker]:
    from deployer.server import facts

    location = ctx.known.database
    try:
        with facts.connectable_url(ctx.target, location) as url:
            return locks.suspects(url, name, older_than)
    except DeployerError:
        return []


def _pause(seconds: float) -> Callable[[Context], str]:
    def wait(_: Context) -> str:
        time.sleep(seconds)
        return f"waited {seconds:g}s"

    return wait


def undo_migrate(ctx: Context, step: Step, recovery: Recovery):  # noqa: ANN201
    record = recovery.record
    if record.migration:
        yield Command(("docker", "rm", "--force", record.migration), what="stop the migration container", check=False, timeout=120)
        yield cancel_sessions(recovery, recovery.database, record.migration)
    if database_created_by_run(ctx, recovery):
        recovery.done.append("the database this first release created goes with its volume")
        return
    before = tuple(record.source.revision or ())
    now = yield read_revision("the database revision after the migration stopped", recovery, plan=True)
    if now is None:
        now = yield from database_started(ctx, recovery)
    if now is None:
        recovery.schema_back = False
        recovery.code_stays = True
        recovery.left.append(f"read the database's revision and bring it back to {shown_revisions(before)}")
        return
    if _mysql(recovery) and recovery.record.state_of(step.label) != DONE:
        # MySQL committed each DDL statement of the migration that failed (or was stopped): its
        # revision says where the last migration that finished left the schema, not what the
        # failed one changed. Unless nothing changed at all, the pre-upgrade backup is the way back.
        if set(now) == set(before) and not (yield from _mysql_schema_changed(ctx, recovery)):
            recovery.done.append(f"database still at {shown_revisions(before)}, its schema as the backup recorded it "
                                 "(read back after the migration stopped)")
            return
        why = (f"the migration failed on MySQL/MariaDB, which commits each DDL statement: the database is at "
               f"{shown_revisions(now)} with part of the failed migration applied, so neither its revision nor a "
               "downgrade can be trusted")
        ctx.log(f"recovery: {why}; restoring the pre-upgrade backup instead (if no write was made since it)")
        yield from restore_or_stop(ctx, recovery, now, why=why)
        return
    if set(now) == set(before):
        if not (yield from _half_applied(ctx, recovery)):
            recovery.done.append(f"database still at {shown_revisions(before)} (read back after the migration stopped)")
            return
    else:
        destination = before[0] if len(before) == 1 else "base" if not before else None
        if destination is not None and not recovery.restore_backup:
            argv = migration_argv(ctx.app.migrate_command, "downgrade", destination)
            ctx.log(f"recovery: downgrade of the database {shown_revisions(now)} -> {destination}")
            yield Command(one_off(ctx, launched(argv), f"{ctx.app.name}-downgrade-{record.id}"),
                          what=f"downgrade to {destination}", check=False, timeout=float(ctx.app.migrate_timeout), retry=False)
            after = yield read_revision("the database revision after the downgrade", recovery)
            if after is not None and set(after) == set(before):
                recovery.done.append(f"database downgraded to {destination}")
                return
            now = after if after is not None else now
    yield from restore_or_stop(ctx, recovery, now)


def _mysql(recovery: Recovery) -> bool:
    return recovery.database is not None and recovery.database.engine == MYSQL


def _mysql_schema_changed(ctx: Context, recovery: Recovery):  # noqa: ANN201
    """Whether the MySQL schema differs from the one the backup recorded (True when it cannot
    be told: the backup is then restored, if that loses no write)."""
    backup = yield Read("the backup's description", lambda c: _find_backup(c, recovery.record.backup), plan=True)
    recorded = (backup.baseline or {}).get("schema") if backup is not None else None
    if not recorded:
        return True
    now = yield Read("the database's schema now", lambda c: _mysql_schema(c, recovery), plan=True)
    return now != recorded


def _mysql_schema(ctx: Context, recovery: Recovery) -> str | None:
    from deployer.db.mysql import read_schema
    from deployer.server import facts

    assert recovery.database is not None
    try:
        with facts.connectable_url(ctx.target, recovery.database) as url:
            return read_schema(url)
    except DeployerError:
        return None


def _half_applied(ctx: Context, recovery: Recovery):  # noqa: ANN201
    """SQLite runs DDL outside a transaction: an unchanged revision may hide a changed schema."""
    if recovery.database is None or recovery.database.engine != SQLITE or not recovery.record.backup:
        return False
    backup = yield Read("the backup's description", lambda c: _find_backup(c, recovery.record.backup), plan=True)
    if backup is None or not backup.baseline:
        return False
    now = yield Read("the SQLite schema version now", lambda c: _sqlite_counts(c, recovery), plan=True)
    from deployer.db.writes import schema_changed

    return bool(now) and schema_changed(backup.baseline, now)


def _find_backup(ctx: Context, backup_id: str | None):  # noqa: ANN202
    if not backup_id:
        return None
    try:
        return backups_mod.find(ctx.target, backup_id)
    except DeployerError:
        return None


def _sqlite_counts(ctx: Context, recovery: Recovery) -> dict | None:
    import json

    from deployer.db.writes import SQLITE_COUNTS
    from deployer.server import facts

    assert recovery.database is not None
    script = ["python3", "-c", SQLITE_COUNTS, recovery.database.sqlite_path]
    web = facts.running(facts.all_containers(ctx.target), ctx.app.web_service)
    argv = ["docker", "exec", web.id, *script] if web else ctx.compose.run(ctx.app.web_service, script)
    result = ctx.host.run(argv, timeout=300)
    try:
        return json.loads(result.stdout.strip().splitlines()[-1]) if result.ok else None
    except (ValueError, IndexError):
        return None


def count_changes(ctx: Context, recovery: Recovery, backup):  # noqa: ANN001, ANN201
    """The writes restoring ``backup`` would discard (None: cannot tell)."""
    from deployer.db import writes
    from deployer.server import facts

    if not backup.baseline or recovery.database is None:
        return None
    try:
        if recovery.database.engine == POSTGRESQL:
            with facts.connectable_url(ctx.target, recovery.database) as url:
                return writes.pg_changes(url, backup.baseline)
        if recovery.database.engine == MYSQL:
            from deployer.db import mysql

            with facts.connectable_url(ctx.target, recovery.database) as url:
                return mysql.changes(url, backup.baseline)
        now = _sqlite_counts(ctx, recovery)
        return writes.sqlite_changes(backup.baseline, now) if now is not None else None
    except DeployerError:
        return None


def restore_or_stop(ctx: Context, recovery: Recovery, now: tuple[str, ...], *, why: str = ""):  # noqa: ANN201
    """The schema did not come back by downgrade (or, on MySQL, cannot be trusted: ``why``):
    restore the backup if that loses no acknowledged write (or the user chose it); otherwise
    keep the new release and say why."""
    record = recovery.record
    before = tuple(record.source.revision or ())
    env = ctx.env.name
    state = why or (f"the database is at {shown_revisions(now)} and would not go back to {shown_revisions(before)} "
                    "by downgrade")
    if not record.backup:
        recovery.code_stays = True
        recovery.schema_back = False
        recovery.left.append(f"bring the database from {shown_revisions(now)} back to {shown_revisions(before)} "
                             f"(no backup was taken){'; ' + why if why else ''}")
        return
    backup = yield Read(f"the description of backup {record.backup}", lambda c: _find_backup(c, record.backup), plan=True)
    if backup is None:
        recovery.code_stays = True
        recovery.schema_back = False
        recovery.left.append(f"restore the database to {shown_revisions(before)}: backup {record.backup} is not on the host")
        return
    # No write may slip in between counting and restoring: the app's services stop first.
    services = sorted(s for s in (recovery.compose.services if recovery.compose else ()) if s != ctx.app.db_service)
    if services:
        yield Command(tuple(ctx.compose.stop(services)), what="hold writes: stop the app while deciding", check=False, timeout=300)
    changes = yield Read("count the writes made since the backup", lambda c: count_changes(c, recovery, backup), plan=True)
    if not recovery.restore_backup and (changes is None or changes.total):
        if services:
            yield Command(tuple(ctx.compose.start(services)), what="start the new release again", check=False, timeout=300)
        recovery.code_stays = True
        recovery.schema_back = False
        what = (f"{changes.total} row change(s) made since it was taken ({changes.describe()})" if changes is not None
                else "writes made since it was taken (deployer cannot count them for this database)")
        recovery.left.append(
            f"{state}; "
            f"restoring backup {backup.id} would discard {what}. The new release stays in place. Choose: "
            f"`deployer recover {env} --restore-backup` (discard them) or `deployer recover {env} --forward` (keep them)"
        )
        return
    problem = yield Read(f"verify backup {backup.id}", lambda c: backups_mod.check(c.target, backup), plan=True)
    if problem is None and backup.refusal():
        problem = f"{backup.refusal()}; if you trust it: `deployer backups restore {env} {backup.id} --force`"
    if problem:
        recovery.code_stays = True
        recovery.schema_back = False
        recovery.left.append(f"restore the database to {shown_revisions(before)}: backup {backup.id} is unusable ({problem})")
        return
    ctx.log(f"recovery: restoring the backup {backup.id} taken at the start")
    yield from backups_mod.restore_steps(ctx.target, backup, recovery.database)
    after = yield read_revision("the database revision after the restore", recovery)
    lost = f"{changes.total} change(s) discarded as chosen" if changes is not None and changes.total else "no write since it was taken"
    because = " because " + why if why else ""
    recovery.done.append(f"database restored from backup {backup.id}{because} ({lost}; now at {shown_revisions(after)})")


register(StepKind(
    name="migrate",
    scope=PRIMARY,
    summary="run the migrate command once, in a one-off container of the new image",
    run=migrate,
    undo=undo_migrate,
    params={"timeout": Param((int,), "seconds before the migration is stopped", positive=True)},
    changes=frozenset({SCHEMA}),
))
