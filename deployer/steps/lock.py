"""``lock``: take the environment's lease, move a pre-state_dir deployment's files out of its
checkout, and write the run's intent to the step log — before anything else changes."""

from __future__ import annotations

from deployer.actions import Command, Lease, Value, Write
from deployer.errors import LockHeldError
from deployer.server import runlog
from deployer.server.lock import RUN_LABEL
from deployer.server.target import migrate_state_argv
from deployer.steps import HOST_FILES, StepKind, register
from deployer.steps.common import whoami
from deployer.steps.context import Context
from deployer.steps.playbook import Step


def intent(ctx: Context, playbook_steps: tuple[tuple[str, str], ...]) -> runlog.RunRecord:
    """The step log's first record: where the environment stands and where the run goes."""
    import os

    facts = ctx.known
    goal_release = facts.target_release.id if facts.target_release else ctx.run_id
    return runlog.RunRecord(
        id=ctx.run_id, kind=ctx.kind, environment=ctx.env.name, playbook=ctx.scratch.get("playbook", ""),
        steps=playbook_steps, holder=whoami(), pid=os.getpid(), started_at=runlog.now(),
        source=runlog.Source(
            commit=facts.deployed_commit,
            release=facts.previous_release.id if facts.previous_release else None,
            revision=facts.revision,
            image_ids={c.service: c.image_id for c in facts.containers if not c.oneoff and c.state == "running"},
            path_existed=facts.path_exists,
            checkout_existed=facts.checkout_exists,
            volumes=facts.volumes,
            running=tuple(sorted({c.service for c in facts.containers if not c.oneoff and c.state == "running"}
                                 | set(ctx.scratch.get("swarm_services") or ()))),
        ),
        goal=runlog.Goal(commit=facts.commit.sha, heads=facts.heads, release=goal_release),
    )


def take_lock(ctx: Context, step: Step):  # noqa: ANN201 - StepBody
    command = f"{ctx.kind} {ctx.env.name}"
    yield Lease(ctx.state_dir, Value("release_id", f"{RUN_LABEL}={{}}"), command)
    migrate = migrate_state_argv(ctx.target)
    if migrate is not None:
        result = yield Command(tuple(migrate), what="move deployer's files out of the checkout", check=False, timeout=600)
        if result.exit_code == 3:
            raise LockHeldError(
                f"an older deployer holds a lock in {ctx.env.path}/.deployer/lock on {ctx.host.name}",
                hint="wait for that run to end; if it crashed, remove that directory on the host",
            )
        if not result.ok:
            result.check("move deployer's files out of the checkout")
    # The step log begins with this step started: a run killed before the next step's start is
    # written still says where it stopped.
    ctx.record = intent(ctx, ctx.scratch["steps"]).with_progress(step.label, step.name, runlog.STARTED)
    yield Write(runlog.run_path(ctx.state_dir), ctx.record.to_json(), what="the step log: this run's intent")
    return f"held by {whoami()}; step log {runlog.run_path(ctx.state_dir)}"


register(StepKind(
    name="lock",
    summary="take the deploy lock (a lease on the host) and write the run's intent to the step log",
    run=take_lock,
    changes=frozenset({HOST_FILES}),
    once=True,
))
