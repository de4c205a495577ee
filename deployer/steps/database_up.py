"""``database_up``: start the db service (a first release) and wait until it answers.

A database that cannot work — a wrong password, a missing database, a URL that names no
service — is reported at once; only "not accepting connections yet" is waited for.
"""

from __future__ import annotations

import time
from dataclasses import replace

from deployer import interrupts
from deployer.actions import Command, Skip, Wait
from deployer.db.migrations import upgrade_path
from deployer.errors import ConfigError, DeployerError, HostError
from deployer.server import facts as server_facts
from deployer.steps import CONTAINERS, PRIMARY, Param, StepKind, register
from deployer.steps.common import shown_revisions
from deployer.steps.context import Context
from deployer.steps.playbook import Step
from deployer.steps.recovery import Recovery, teardown_first_release

# Phrases of PostgreSQL's and MySQL's that mean waiting will not help.
_HOPELESS = ("password authentication failed", "does not exist", "no pg_hba.conf entry", "role ", "Access denied",
             "Unknown database")


def wait_for_database(ctx: Context, timeout: float) -> str:
    """Poll the revision until the database answers; refresh the step log's from-revision."""
    db = ctx.app.db_service
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            revisions = server_facts.read_revisions(ctx.target, ctx.known.database, connect_timeout=5)
            if revisions is not None:
                record = ctx.record
                if record is not None and record.source.revision is None:
                    # The database was not running at preflight: its revision before any migration is this.
                    ctx.note(source=replace(record.source, revision=revisions))
                return f"{db or 'the database'} accepts connections (revision {shown_revisions(revisions)})"
            last = f"{db} is not running"
        except ConfigError:
            raise
        except HostError as error:
            if any(phrase in error.message for phrase in _HOPELESS):
                raise ConfigError(
                    f"the database refuses deployer: {error.message}",
                    hint=f"check the database URL ({ctx.known.database.source}) and the db service's variables",
                ) from None
            last = error.message
        containers = server_facts.service_containers(ctx.target, db) if db else []
        if containers and all(c.state == "exited" for c in containers):
            logs = ctx.host.run(["docker", "logs", "--tail", "15", containers[0].id], timeout=30)
            tail = "\n".join("    " + line for line in (logs.stdout + logs.stderr).strip().splitlines()[-15:])
            raise DeployerError(f"the {db} container exited (status {containers[0].exit_code}); its last output:\n{tail}")
        if time.monotonic() > deadline:
            raise DeployerError(f"the database did not accept connections within {timeout:.0f}s: {last}")
        interrupts.sleep(1.0)


def database_up(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    db = ctx.app.db_service
    if not db:
        raise Skip("no db service (the database lives in a volume of the web service)")
    timeout = float(step.params.get("timeout", 120))
    if ctx.env.swarm:
        from deployer.steps import swarm

        return (yield from swarm.database_up(ctx, timeout))
    yield Command(tuple(ctx.compose.up([db], no_deps=True)), what=f"start {db}", timeout=300)
    detail = yield Wait(f"{db} accepts connections (at most {timeout:.0f}s)", lambda c: wait_for_database(c, timeout))
    return detail


def pending(ctx: Context) -> tuple:  # noqa: ANN201 - tuple[MigrationStep, ...]
    """The migrations still to run: from the step log's from-revision once the database is up."""
    facts = ctx.known
    record = ctx.record
    revision = record.source.revision if record is not None and record.source.revision is not None else facts.revision
    if revision is None or revision == facts.revision:
        return facts.pending
    return tuple(upgrade_path(facts.scripts, revision, "heads") if facts.heads else ())


def undo_database_up(ctx: Context, step: Step, recovery: Recovery):  # noqa: ANN201
    if recovery.record.source.commit is None:
        yield from teardown_first_release(ctx, recovery)


register(StepKind(
    name="database_up",
    scope=PRIMARY,
    summary="start the db service and wait until it accepts connections",
    run=database_up,
    undo=undo_database_up,
    params={"timeout": Param((int,), "seconds to wait until the database accepts connections", positive=True)},
    changes=frozenset({CONTAINERS}),
))
