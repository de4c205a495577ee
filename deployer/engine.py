"""The one place that changes the world: run a playbook's steps, or list them (a dry run),
from the same generators; keep the write-ahead step log; journal the outcome; recover.

* :func:`execute` — run every step; on a failure after the server changed, undo in reverse
  (:mod:`deployer.steps.recovery`), journal, release the lease, raise.
* :func:`plan` — preflight for real, then every step's actions listed, none performed.
* :func:`converge` — ``deployer recover`` (and the start of every release and rollback): a
  run that died (killed, disconnected) is undone — or, with ``forward``, finished — from
  its step log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from deployer import background, interrupts, progress
from deployer.actions import Command, Lease, Probe, Read, Transfer, Wait, Write, resolve, shown
from deployer.errors import ConnectionLost, DeployerError, LockHeldError, RecoveryFailed, RefusedError
from deployer.hosts.base import Result
from deployer.server import journal, lock, runlog
from deployer.steps import kind as step_kind
from deployer.steps.common import whoami
from deployer.steps.context import Context
from deployer.steps.playbook import Playbook, Step
from deployer.steps.recovery import Recovery, undo_all

UNCHANGED = "unchanged"  # a release whose commit already ran as configured (see deployer.steps.unchanged)


class ReleaseFailed(DeployerError):
    """A step failed; the previous release was put back (the message says how)."""


class RunInterrupted(DeployerError):
    """A signal stopped the run (after recovery, or before anything changed).

    The exit code is the shell's for a command stopped by that signal — 130 for Ctrl-C, 143
    for SIGTERM, 129 for SIGHUP — so a CI job can tell a cancel from a failure. Raised as a
    DeployerError rather than as the KeyboardInterrupt itself: the CLI framework maps every
    KeyboardInterrupt to 130, whichever signal it was.
    """

    def __init__(self, message: str, *, signum: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = 128 + int(signum)  # type: ignore[assignment]  # an exit status, not one of ExitCode's


@dataclass(frozen=True)
class Outcome:
    """What ``deployer release`` / ``rollback`` / ``recover`` report (``--json`` prints this)."""

    id: str
    environment: str
    outcome: str  # succeeded | failed | recovery-failed
    commit: str | None
    previous_commit: str | None
    revision_before: tuple[str, ...]
    revision_after: tuple[str, ...]
    backup: str | None
    steps: tuple[journal.StepTiming, ...]
    seconds: float
    error: str | None = None
    recovery: str | None = None
    exit_code: int = 0
    kind: str = "release"
    converged: str | None = None  # an interrupted run this command converged first
    served: dict[str, Any] | None = None  # what the prober saw through the proxy (journal.Record.served)
    unchanged: str | None = None  # outcome "unchanged": why the release had nothing to do
    hosts: tuple[dict[str, Any], ...] = ()  # several hosts: each one's part ({host, outcome, previous_commit, recovery})
    # After the run was recorded: the restore verification of its backup (state, problems, …)
    # and where copies of it were made (deployer.server.backups.Verification, Copy).
    backup_verification: dict[str, Any] | None = None
    backup_copies: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PlannedStep:
    step: str  # the kind
    label: str
    commands: tuple[str, ...]  # what runs on the host, in order (changes and reads)
    note: str = ""


@dataclass(frozen=True)
class Plan:
    environment: str
    host: str
    playbook: str
    commit: str
    ref: str
    previous_commit: str | None
    database_revision: tuple[str, ...] | None
    heads: tuple[str, ...]
    pending: tuple[dict, ...]
    steps: tuple[PlannedStep, ...]
    kind: str = "release"
    target_release: str | None = None  # a rollback: the release it brings back,
    target_revision: str | None = None  # the revision that release's code expects,
    restore_backup: str | None = None  # and the backup restored instead of downgrading (--restore-backup)
    database: str = ""  # where the database is, as the app states it
    converge_first: str | None = None  # an interrupted run that would be converged first
    swap: str | None = None  # behind a proxy: overlap or pause, and why
    unchanged: str | None = None  # the run would stop after preflight: why it has nothing to do
    footer: tuple[str, ...] = ()
    # MySQL/MariaDB: the gate's lines on the pending DDL statements that commit on their own.
    not_transactional: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- performing actions

RECONNECTS = 2  # per action
RECONNECT_SECONDS = 60.0  # how long to keep trying to reach a host that went away


def _reconnect(ctx: Context, lost: ConnectionLost) -> bool:
    """Open the connection again and make sure the lease is still ours. False: give up."""
    ctx.log(f"lost the connection to {ctx.host.name} ({lost.message}); reconnecting ...")
    deadline = time.monotonic() + RECONNECT_SECONDS
    delay = 1.0
    while True:
        try:
            ctx.host.reconnect()
            break
        except DeployerError as error:
            if time.monotonic() + delay > deadline:
                ctx.log(f"cannot reconnect to {ctx.host.name}: {error.message}")
                return False
            interrupts.sleep(delay)
            delay = min(delay * 2, 10.0)
    lease = ctx.lease
    if lease is not None and (lease.lost or not lock.read_lock(ctx.host, ctx.state_dir).held):
        # The holder saw its owner vanish and left: take the lock back for this run (the step
        # log is ours), or give up if someone else took it meanwhile.
        lease.release()
        ctx.lease = lock.acquire(ctx.host, ctx.state_dir, lease.info, env_name=ctx.env.name,
                                 label=f"deployer.run={ctx.run_id}")
    return True



def _perform(ctx: Context, action: Any) -> Any:
    """Execute one action (or, planning, only the reads)."""
    if isinstance(action, Read):
        return action.read(ctx) if action.plan or not ctx.planning else None
    if isinstance(action, Probe):
        return _command(ctx, action)
    if ctx.planning:
        if isinstance(action, Command):
            return Result(tuple(str(a) for a in action.argv), 0, "", "", 0.0)
        return None
    if isinstance(action, Command):
        return _command(ctx, action)
    if isinstance(action, Write):
        ctx.host.write_text(resolve(action.path, ctx.values), action.text, mode=action.mode)
        return None
    if isinstance(action, Wait):
        return action.until(ctx)
    if isinstance(action, Transfer):
        return action.run(ctx)
    if isinstance(action, Lease):
        ctx.lease = lock.acquire(
            ctx.host, action.state_dir, lock.new_info(action.command, ctx.run_id), env_name=ctx.env.name,
            label=resolve(action.label, ctx.values),
        )
        previous = ctx.lease.previous
        if previous.info is not None:
            since = f" since {previous.gone_since}" if previous.gone_since else ""
            ctx.log(f"took over a stale lock: its owner {previous.info.holder} ('{previous.info.command}') was gone{since}")
        return ctx.lease
    raise TypeError(f"unknown action {action!r}")


def _command(ctx: Context, action: Command) -> Result:
    argv = action.resolved(ctx.values)
    on_output = ctx.verbose() if action.stream else None
    result = ctx.host.run(argv, cwd=action.cwd, timeout=action.timeout, stdin=action.stdin, on_output=on_output)
    if action.check and not result.ok:
        result.check(action.what or None)
    return result


def drive(ctx: Context, label: str, body: Generator[Any, Any, Any]) -> Any:
    """Run a step's generator: perform each action, send its result back, return its value.

    A failure while performing an action is thrown into the generator at that point, so a
    step can clean up (remove a half-written dump) before the failure goes on.
    """
    send: Any = None
    throw: BaseException | None = None
    while True:
        try:
            action = body.throw(throw) if throw is not None else body.send(send)
        except StopIteration as stop:
            return stop.value
        send, throw = None, None
        ctx.trace.append((label, shown(action, ctx.values)))
        for attempt in range(RECONNECTS + 1):
            try:
                interrupts.check()
                send = _perform(ctx, action)
                break
            except ConnectionLost as lost:
                # Reconnect (and take the lease back if the holder saw us go); run the action
                # again only when that is safe — a migration may have run on its own.
                if ctx.planning or attempt == RECONNECTS or not _reconnect(ctx, lost) or not getattr(action, "retry", True):
                    throw = lost
                    break
                ctx.log(f"reconnected to {ctx.host.name}: doing `{shown(action, ctx.values)[:80]}` again")
            except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - handed to the step first
                throw = error
                break


# --------------------------------------------------------------------------- running a playbook


def _journal_record(ctx: Context, outcome: str, timings: list[journal.StepTiming], started_at: str,
                    *, error: str | None = None, recovery: str | None = None) -> journal.Record:
    facts = ctx.facts
    record = ctx.record
    finished = datetime.now(UTC)
    started = datetime.fromisoformat(started_at)
    revision_after = ctx.scratch.get("revision_after")
    if revision_after is None and outcome == journal.SUCCEEDED and facts is not None:
        revision_after = facts.heads
    return journal.Record(
        id=ctx.run_id or (record.id if record else ""),
        kind=ctx.kind,
        environment=ctx.env.name,
        outcome=outcome,
        commit=facts.commit.sha if facts else (record.goal.commit if record else None),
        previous_commit=facts.deployed_commit if facts else (record.source.commit if record else None),
        revision_before=tuple((record.source.revision if record else None) or (facts.revision if facts else None) or ()),
        revision_after=tuple(revision_after or ()),
        started_at=started_at,
        finished_at=finished.isoformat(timespec="seconds"),
        seconds=round((finished - started).total_seconds(), 3),
        user=whoami(),
        backup=record.backup if record else None,
        images=dict(ctx.scratch.get("release_images") or {}) if outcome == journal.SUCCEEDED else {},
        steps=tuple(timings),
        error=error,
        recovery=recovery,
        previous_release=facts.previous_release.id if facts and facts.previous_release else None,
        target_release=facts.target_release.id if facts and facts.target_release else None,
        image_ids=dict(ctx.scratch.get("image_ids") or {}) if outcome == journal.SUCCEEDED else {},
        served=_served(ctx),
    )


def _served(ctx: Context) -> dict[str, Any] | None:
    """What the prober saw; a run that failed mid-swap stops it here."""
    from deployer.steps.swap import stop_probe

    summary = stop_probe(ctx) or ctx.scratch.get("served")
    return summary.as_dict() if summary is not None else None


def _changed(record: runlog.RunRecord | None) -> bool:
    """Whether a step that changes the server (beyond the lock) has started."""
    if record is None:
        return False
    return any(step_kind(name).changes and name != "lock" for _, name in record.touched())


def _message(failure: BaseException) -> str:
    if isinstance(failure, interrupts.Interrupted):
        return f"interrupted ({failure.name})"
    if isinstance(failure, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(failure, DeployerError):
        return failure.message
    return str(failure) or type(failure).__name__


def _interrupted_or(failure: BaseException, message: str, *, hint: str | None = None) -> BaseException:
    """A signal becomes :class:`RunInterrupted` (its own exit code); anything else is raised as it is."""
    if isinstance(failure, interrupts.Interrupted):
        return RunInterrupted(message, signum=failure.signum, hint=hint)
    return failure


def execute(ctx: Context, book: Playbook) -> Outcome:
    """Run every step of the playbook; on failure recover, journal, and raise.

    Raises :class:`ReleaseFailed` (recovered), :class:`RecoveryFailed` (not fully),
    :class:`RunInterrupted` for a signal (recovered; exit 128 + the signal), or the step's
    own error when nothing had changed yet (a preflight refusal).
    """
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    clock = time.monotonic()
    ctx.scratch["steps"] = tuple((step.label, step.name) for step in book.steps)
    ctx.scratch["playbook"] = book.name
    timings: list[journal.StepTiming] = []
    current: Step | None = None
    steps, after = book.split()
    try:
        try:
            for step in steps:
                current = step
                detail, status = _run_step(ctx, step)
                timings.append(journal.StepTiming(step.label, status, round(time.monotonic() - _step_started(ctx), 3), detail))
                if ctx.scratch.get("unchanged") and ctx.record is None:
                    # Nothing changed and nothing would: no later step runs, nothing is journaled
                    # (the outcome says why: the command prints it once).
                    return _outcome(ctx, UNCHANGED, timings, clock, unchanged=ctx.scratch["unchanged"])
            current = None
            _finish(ctx, journal.SUCCEEDED, timings, started_at)
        except (Exception, KeyboardInterrupt) as failure:
            return _failed(ctx, failure, current, timings, started_at, clock)
        stopped = run_after_record(ctx, after, timings)
        outcome = _outcome(ctx, journal.SUCCEEDED, timings, clock)
        if stopped is not None:
            raise after_record_interrupted(ctx, stopped)
        if ctx.kind == "release":
            prune_images(ctx)  # journaled: nothing from here on can fail the release
        return outcome
    finally:
        background.cancel_all(ctx)  # whatever ended the run, nothing it started runs on
        for cleanup in ctx.scratch.pop("cleanups", []):  # a prober's tunnel, if a step failed
            cleanup()
        if ctx.lease is not None:
            ctx.lease.release()
            ctx.lease = None


PRUNE_LABEL = "prune images"


def prune_images(ctx: Context) -> None:
    """After a release is journaled, its lease still held: the image tags no retained release
    needs go (``keep_releases``; see :mod:`deployer.server.images`). Never fails the release:
    what goes wrong is a warning, and ``deployer images prune`` tries again."""
    from deployer.server import images

    started = time.monotonic()
    ctx.log(progress.started(PRUNE_LABEL))
    try:
        pruning = drive(ctx, PRUNE_LABEL, images.prune_steps(ctx.target))
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - the release is done whatever happens here
        ctx.log(progress.failed(PRUNE_LABEL, f"{_message(error)}; the release is done; `deployer images prune "
                                             f"{ctx.env.name}` tries again"))
        return
    ctx.log(progress.finished(PRUNE_LABEL, "ok", time.monotonic() - started, images.describe(pruning)))


def run_after_record(ctx: Context, steps: tuple[Step, ...], timings: list[journal.StepTiming]) -> interrupts.Interrupted | None:
    """The steps that follow the journaled run (:attr:`deployer.steps.StepKind.after_record`),
    still under the lease: a failure is reported in the outcome and never undoes the run. A
    signal stops them (the step cleans up first) and is returned, for the caller to raise once
    the outcome is made."""
    from deployer.actions import Skip

    ctx.journaled = True  # the step log is gone: nothing more is written to it
    for step in steps:
        ctx.scratch["step_started"] = time.monotonic()
        ctx.log(progress.started(step.label))
        try:
            detail, status = _drive_step(ctx, step), "ok"
        except Skip as skipped:
            detail, status = str(skipped), "skipped"
        except KeyboardInterrupt as stop:
            name = stop.name if isinstance(stop, interrupts.Interrupted) else "SIGINT"
            timings.append(journal.StepTiming(step.label, "interrupted", round(time.monotonic() - _step_started(ctx), 3),
                                              f"interrupted ({name}); the {ctx.kind} stays, recorded"))
            ctx.log(progress.failed(step.label, f"interrupted ({name}): the {ctx.kind} {ctx.run_id} stays in place, recorded"))
            return stop if isinstance(stop, interrupts.Interrupted) else interrupts.Interrupted(2)
        except Exception as error:  # noqa: BLE001 - reported; the recorded run stays
            message = _message(error)
            timings.append(journal.StepTiming(step.label, "failed", round(time.monotonic() - _step_started(ctx), 3), message[:500]))
            ctx.log(progress.failed(step.label, f"{message.splitlines()[0] if message else ''}; "
                                                f"the {ctx.kind} {ctx.run_id} stays in place, recorded"))
            continue
        seconds = time.monotonic() - _step_started(ctx)
        timings.append(journal.StepTiming(step.label, status, round(seconds, 3), detail))
        ctx.log(progress.finished(step.label, status, seconds, detail))
    return None


def after_record_interrupted(ctx: Context, stop: interrupts.Interrupted) -> RunInterrupted:
    """The error for a signal after the run was recorded: the run succeeded and stays."""
    return RunInterrupted(
        f"{ctx.kind} {ctx.run_id} succeeded and was recorded; interrupted ({stop.name}) afterwards, while "
        "checking its backup",
        signum=stop.signum,
        hint=f"the {ctx.kind} stays in place; its backup is not restore-verified: "
        f"`deployer backups verify {ctx.env.name} latest --restore`",
    )


def _step_started(ctx: Context) -> float:
    return float(ctx.scratch.get("step_started", time.monotonic()))


def _drive_step(ctx: Context, step: Step) -> str:
    """The step's actions performed. A step that only reads (preflight reads the host in its
    own body, not through actions) is read again on a new connection when the one it used
    was lost."""
    for attempt in range(RECONNECTS + 1):
        try:
            return drive(ctx, step.label, step_kind(step.name).run(ctx, step)) or ""
        except ConnectionLost as lost:
            if step_kind(step.name).changes or attempt == RECONNECTS or not _reconnect(ctx, lost):
                raise
            ctx.log(f"reconnected to {ctx.host.name}: reading again for {step.label}")
    raise AssertionError("unreachable")


def _run_step(ctx: Context, step: Step) -> tuple[str, str]:
    from deployer.actions import Skip

    ctx.scratch["step_started"] = time.monotonic()
    ctx.log(progress.started(step.label))
    if ctx.record is not None:
        ctx.note(progress=ctx.record.with_progress(step.label, step.name, runlog.STARTED).progress)
    try:
        detail = _drive_step(ctx, step)
        status = "ok"
    except Skip as skipped:
        detail, status = str(skipped), "skipped"
    if ctx.record is not None:
        state = runlog.DONE if status == "ok" else runlog.SKIPPED
        # Kept in memory: written with the next step's start (a crash in between leaves the
        # step marked started, which recovery treats as possibly done).
        ctx.record = ctx.record.with_progress(step.label, step.name, state, detail[:300])
    if step.name in ("migrate", "schema") and status == "ok":
        ctx.scratch.setdefault("schema_changed_at", time.monotonic())
    seconds = time.monotonic() - _step_started(ctx)
    ctx.log(progress.finished(step.label, status, seconds, detail))
    if status == "ok" and not ctx.planning:
        _start_early(ctx, step)
    return detail, status


def _start_early(ctx: Context, after: Step) -> None:
    """Start the actions of the steps after the record that may run once ``after`` is done
    (a backup's restore verification), beside the steps that follow (see deployer.background)."""
    started = ctx.scratch.get(background.KEY, {})
    for label, name in ctx.scratch.get("steps", ()):
        kind = step_kind(name)
        if kind.early is None or kind.early_after != after.name or label in started:
            continue
        try:
            made = kind.early(ctx, label)
        except Exception:  # noqa: BLE001 - the step runs its actions itself, in its place
            made = None
        if made is not None:
            body, abort = made
            background.start(ctx, label, body, _perform, abort=abort)


def _finish(ctx: Context, outcome: str, timings: list[journal.StepTiming], started_at: str, **extra: Any) -> None:
    """Journal the run, then clear its step log (a crash in between: the next command finds a
    finished run in both and only clears the log)."""
    journal.append(ctx.host, ctx.state_dir, _journal_record(ctx, outcome, timings, started_at, **extra))
    runlog.clear(ctx.host, ctx.state_dir)


def _outcome(ctx: Context, outcome: str, timings: list[journal.StepTiming], clock: float, **extra: Any) -> Outcome:
    facts = ctx.facts
    record = ctx.record
    return Outcome(
        id=ctx.run_id,
        environment=ctx.env.name,
        outcome=outcome,
        commit=facts.commit.sha if facts else None,
        previous_commit=facts.deployed_commit if facts else None,
        revision_before=tuple((record.source.revision if record else None) or (facts.revision if facts else None) or ()),
        revision_after=tuple(ctx.scratch.get("revision_after") or ()),
        backup=record.backup if record else None,
        steps=tuple(timings),
        seconds=round(time.monotonic() - clock, 3),
        kind=ctx.kind,
        served=_served(ctx),
        backup_verification=asdict(ctx.scratch["backup_verification"]) if ctx.scratch.get("backup_verification") else None,
        backup_copies=tuple(asdict(c) for c in ctx.scratch.get("backup_copies") or ()),
        **extra,
    )


@dataclass
class Recovered:
    """How one host came back after a failed run (:func:`recover_after`)."""

    message: str  # why the run failed
    changed: bool  # False: nothing had changed there (journaled as such, or not at all)
    report: str = "nothing had changed"
    left: tuple[str, ...] = ()
    first_release: bool = False


def recover_after(ctx: Context, failure: BaseException | str, current: Step | None, timings: list[journal.StepTiming],
                  started_at: str, *, failed_here: bool = True) -> Recovered:
    """Undo a failed run on ``ctx``'s host and journal it there. ``failed_here``: the failure
    happened on this host (its step is marked failed); else another host's failure sends this
    one back. Raises :class:`interrupts.Abandoned` when a second signal abandons recovery."""
    label = current.label if current else "?"
    message = failure if isinstance(failure, str) else _message(failure)
    if failed_here:
        timings.append(journal.StepTiming(label, "failed", round(time.monotonic() - _step_started(ctx), 3), message[:500]))
    if ctx.record is None:
        return Recovered(message, changed=False)
    if failed_here:
        ctx.record = ctx.record.with_progress(label, current.name if current else "?", runlog.FAILED, message[:300])
    if not _changed(ctx.record):
        _finish(ctx, journal.FAILED, timings, started_at, error=message, recovery="nothing had changed")
        return Recovered(message, changed=False)
    facts = ctx.known
    recovery = Recovery(ctx.record, message, facts.database, facts.compose, restore_backup=False)
    try:
        # Signals are deferred from here on: a second Ctrl-C is announced, a third abandons.
        with interrupts.recovering(f"the step log {runlog.run_path(ctx.state_dir)} for the next command to converge from"):
            ctx.log("recovering the previous release ...")
            ctx.note(phase=runlog.RECOVERING, error=message[:500])
            drive(ctx, "recovery", undo_all(ctx, recovery))
    except interrupts.Abandoned as abandoned:
        ctx.log(f"recovery abandoned: the step log {runlog.run_path(ctx.state_dir)} stays; "
                f"`deployer recover {ctx.env.name}` converges from it")
        abandoned.report = recovery.report  # type: ignore[attr-defined]  # what was done before
        raise
    except (Exception, KeyboardInterrupt) as broken:  # noqa: BLE001 - recovery itself failed: say so, keep the log
        recovery.left.append(f"finish the recovery: it stopped with: {_message(broken)}")
    if recovery.left:
        text = f"done: {recovery.report}; left to do: " + "; ".join(recovery.left)
        journal.append(ctx.host, ctx.state_dir, _journal_record(ctx, journal.RECOVERY_FAILED, timings, started_at,
                                                                error=message, recovery=text))
        # The step log stays: `status` reports the half state and `recover` can finish it.
        ctx.note(phase=runlog.RECOVERING)
    else:
        _finish(ctx, journal.FAILED, timings, started_at, error=message, recovery=recovery.report)
    return Recovered(message, True, recovery.report, tuple(recovery.left), recovery.first_release)


def _failed(ctx: Context, failure: BaseException, current: Step | None, timings: list[journal.StepTiming],
            started_at: str, clock: float) -> Outcome:
    label = current.label if current else "?"
    message = _message(failure)
    background.cancel_all(ctx)  # a backup's verification, say: recovery goes on alone
    # The error printed at the end says why, once (after recovery, when anything changed).
    ctx.log(progress.failed(label, recovering=_changed(ctx.record)))
    try:
        recovered = recover_after(ctx, failure, current, timings, started_at)
    except interrupts.Abandoned as abandoned:
        raise RunInterrupted(
            f"{ctx.kind} {ctx.run_id} {message} at step `{label}`; recovery abandoned ({abandoned.name}) "
            f"after: {getattr(abandoned, 'report', '')}",
            signum=abandoned.signum,
            hint=f"the step log stays on the host: `deployer status {ctx.env.name}` shows the state, "
            f"`deployer recover {ctx.env.name}` (or the next release) converges it",
        ) from None
    if not recovered.changed:
        run = f" {ctx.run_id}" if ctx.record is not None else ""
        raise _interrupted_or(failure, f"{ctx.kind}{run} {message} at step `{label}`: nothing had changed")  # else a refusal
    if recovered.left:
        raise RecoveryFailed(
            f"recovery incomplete after: {message}\n  done: {recovered.report}\n  left to do: " + "; ".join(recovered.left),
            hint=f"the deploy lock was released; `deployer status {ctx.env.name}` shows the state, "
            f"`deployer recover {ctx.env.name}` finishes it",
        ) from None
    if isinstance(failure, KeyboardInterrupt):
        raise _interrupted_or(failure, f"{ctx.kind} {ctx.run_id} {message} at step `{label}`\n  recovered: {recovered.report}",
                              hint="the server runs the previous release" if not recovered.first_release
                              else "nothing was deployed")
    cause = getattr(failure, "hint", None)  # the step's own advice comes first
    raise ReleaseFailed(
        f"{ctx.kind} {ctx.run_id} failed at step `{label}`: {message}\n  recovered: {recovered.report}",
        hint=(f"{cause}; " if cause else "") + ("the server runs the previous release; fix the cause and release again"
        if not recovered.first_release else "nothing was deployed; fix the cause and release again"),
    ) from None


# --------------------------------------------------------------------------- planning


def plan(ctx: Context, book: Playbook) -> Plan:
    """Preflight for real, then every later step's actions, listed and not performed."""
    ctx.planning = True
    ctx.scratch["steps"] = tuple((step.label, step.name) for step in book.steps)
    ctx.scratch["playbook"] = book.name
    planned: list[PlannedStep] = []
    try:
        for step in book.steps:
            planned.append(plan_step(ctx, step))
            if ctx.scratch.get("unchanged") and ctx.record is None:
                break  # what the run would do: stop here, with nothing to do
        return plan_summary(ctx, book, planned)
    finally:
        for cleanup in ctx.scratch.pop("cleanups", []):  # connections a read opened (Swarm's other nodes)
            cleanup()


def plan_step(ctx: Context, step: Step, preflight: Callable[[], str] | None = None) -> PlannedStep:
    """One step of a dry run: its actions listed (reads performed), none of its changes.
    ``preflight``: what reads this host's facts instead of the step's own body (a host of
    several that is not the primary)."""
    from deployer.actions import Skip
    from deployer.steps.lock import intent

    before = len(ctx.trace)
    note = ""
    try:
        detail = preflight() if preflight is not None else drive(ctx, step.label, step_kind(step.name).run(ctx, step)) or ""
        if step.name in ("preflight", "rollback_preflight"):
            note = "read-only: " + detail
        elif step_kind(step.name).after_record:
            note = f"once the {ctx.kind} is recorded: a failure here leaves it in place"
    except Skip as skipped:
        note = f"skipped: {skipped}"
    if step.name == "lock" and ctx.record is None and ctx.facts is not None:
        ctx.record = intent(ctx, ctx.scratch["steps"])
    commands = tuple(text for _, text in ctx.trace[before:])
    return PlannedStep(step=step.name, label=step.label, commands=commands, note=note)


def plan_summary(ctx: Context, book: Playbook, planned: list[PlannedStep]) -> Plan:
    """The plan of the run ``ctx`` planned, with its steps ``planned``."""
    facts = ctx.known
    return Plan(
        environment=ctx.env.name,
        host=str(ctx.env.host),
        playbook=book.name,
        commit=facts.commit.sha,
        ref=facts.commit.ref,
        previous_commit=facts.deployed_commit,
        database_revision=facts.revision,
        heads=facts.heads,
        pending=tuple(
            {"revision": m.revision, "message": m.message, "destructive": list(m.destructive_ops), "has_downgrade": m.has_downgrade}
            for m in facts.pending
        ),
        steps=tuple(planned),
        kind=ctx.kind,
        target_release=facts.target_release.id if facts.target_release else None,
        target_revision=facts.rollback.target_revision if facts.rollback else None,
        restore_backup=facts.rollback.restore_from.id if facts.rollback and facts.rollback.restore_from else None,
        database=f"{facts.database.shown} ({facts.database.source})",
        converge_first=ctx.scratch.get("converge_first"),
        swap=ctx.scratch["swap_mode"].describe() if ctx.scratch.get("swap_mode") else None,
        unchanged=ctx.scratch.get("unchanged"),
        not_transactional=tuple(ctx.scratch.get("not_transactional") or ()),
        footer=(
            f"the step log {runlog.run_path(ctx.state_dir)} records the intent, then each step's start and end",
            f"the journal {journal.journal_path(ctx.state_dir)} gets the outcome; on failure, recovery undoes in reverse",
            *((f"then the image tags no retained release needs are removed (keep_releases = {ctx.env.keep_releases}; "
               f"`deployer images prune {ctx.env.name} --dry-run` lists them now)",) if ctx.kind == "release" else ()),
        ),
    )


# --------------------------------------------------------------------------- interrupted runs


def interrupted(ctx: Context) -> runlog.RunRecord | None:
    """The step log of a run that is not going on any more (None: no run, or one that was
    journaled before it died; a live one raises :class:`LockHeldError`)."""
    return _look(ctx)[0]


def _look(ctx: Context) -> tuple[runlog.RunRecord | None, runlog.RunRecord | None]:
    """(an interrupted run's step log, the step log of a run that was journaled)."""
    record = runlog.read(ctx.host, ctx.state_dir)
    if record is None:
        return None, None
    state = lock.read_lock(ctx.host, ctx.state_dir)
    if state.held:
        raise LockHeldError(
            f"environment {ctx.env.name} is locked on {ctx.host.name}: {state.describe()}",
            hint=f"{record.kind} {record.id} is running (step {record.current_step}); wait for it: the lock frees "
            f"itself when its owner's process ends (`deployer lock status {ctx.env.name}` shows it)",
        )
    if runlog.finished(record, journal.read(ctx.host, ctx.state_dir)):
        return None, record
    return record, None


def _clear_finished(ctx: Context) -> None:
    """Remove the step log of a run that died between journaling its outcome and removing the
    log (under the lease: a run that starts meanwhile writes a log of its own)."""
    lease = lock.acquire(ctx.host, ctx.state_dir, lock.new_info(f"recover {ctx.env.name}"), env_name=ctx.env.name)
    try:
        record = runlog.read(ctx.host, ctx.state_dir)
        if record is not None and runlog.finished(record, journal.read(ctx.host, ctx.state_dir)):
            ctx.log(f"{record.kind} {record.id} was journaled before it stopped; removing its step log")
            runlog.clear(ctx.host, ctx.state_dir)
    finally:
        lease.release()


def describe_interrupted(record: runlog.RunRecord) -> str:
    return record.describe()


def converge(ctx: Context, *, forward: bool = False, restore_backup: bool = False) -> Outcome | None:
    """Bring an environment whose last run was interrupted back to where that run started
    (or, with ``forward``, to where it was going). None: nothing was interrupted."""
    from deployer.server import facts as server_facts

    record, finished = _look(ctx)
    if record is None:
        if finished is not None and not ctx.planning:
            _clear_finished(ctx)
        return None
    clock = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    ctx.kind = record.kind
    ctx.values["release_id"] = record.id
    ctx.log(describe_interrupted(record) + ("; finishing it" if forward else "; converging back to where it started"))
    if not ctx.planning:
        ctx.lease = lock.acquire(ctx.host, ctx.state_dir, lock.new_info(f"recover {ctx.env.name}", record.id),
                                 env_name=ctx.env.name, label=f"deployer.run={record.id}")
    try:
        record = runlog.read(ctx.host, ctx.state_dir) or record
        ctx.record = record
        compose = database = None
        if ctx.host.run(["test", "-e", ctx.compose.files[0]], timeout=30).ok:
            try:
                compose = server_facts.compose_config(ctx.target)
                database = server_facts.database_location(ctx.target, compose)
            except DeployerError as error:
                ctx.log(f"warning: cannot read the compose configuration: {error.message}")
        recovery = Recovery(record, f"interrupted at step {record.current_step}", database, compose, restore_backup=restore_backup)
        if forward:
            return _forward(ctx, record, recovery, started_at, clock)
        with interrupts.recovering(f"the step log {runlog.run_path(ctx.state_dir)}"):
            drive(ctx, "recovery", undo_all(ctx, recovery))
        if ctx.planning:
            return None
        timings = [journal.StepTiming(p.step, p.state, 0.0, p.detail) for p in record.progress]
        why = f"interrupted at step {record.current_step}" + (f": {record.error}" if record.error else "")
        outcome = journal.RECOVERY_FAILED if recovery.left else journal.FAILED
        text = recovery.report + ("; left to do: " + "; ".join(recovery.left) if recovery.left else "")
        journal.append(ctx.host, ctx.state_dir, _converged_record(ctx, record, outcome, timings, started_at, why, text))
        if recovery.left:
            ctx.note(phase=runlog.RECOVERING)
            raise RecoveryFailed(
                f"converging {record.kind} {record.id} is incomplete\n  done: {recovery.report}\n  left to do: "
                + "; ".join(recovery.left),
                hint=f"`deployer status {ctx.env.name}` shows the state",
            )
        runlog.clear(ctx.host, ctx.state_dir)
        return Outcome(
            id=record.id, environment=ctx.env.name, outcome=outcome, commit=record.goal.commit,
            previous_commit=record.source.commit, revision_before=tuple(record.source.revision or ()),
            revision_after=tuple(record.source.revision or ()), backup=record.backup, steps=tuple(timings),
            seconds=round(time.monotonic() - clock, 3), error=why, recovery=recovery.report, kind=record.kind,
            converged=describe_interrupted(record),
        )
    finally:
        if ctx.lease is not None:
            ctx.lease.release()
            ctx.lease = None


def _converged_record(ctx: Context, record: runlog.RunRecord, outcome: str, timings: list[journal.StepTiming],
                      started_at: str, error: str, recovery: str) -> journal.Record:
    finished = datetime.now(UTC)
    return journal.Record(
        id=record.id, kind=record.kind, environment=ctx.env.name, outcome=outcome, commit=record.goal.commit,
        previous_commit=record.source.commit, revision_before=tuple(record.source.revision or ()),
        revision_after=tuple(record.source.revision or ()), started_at=record.started_at,
        finished_at=finished.isoformat(timespec="seconds"),
        seconds=round((finished - datetime.fromisoformat(record.started_at)).total_seconds(), 3),
        user=whoami(), backup=record.backup, steps=tuple(timings), error=error, recovery=recovery,
        previous_release=record.source.release,
    )


def _forward(ctx: Context, record: runlog.RunRecord, recovery: Recovery, started_at: str, clock: float) -> Outcome:
    """Finish an interrupted run whose changes were all made: verify, health, record."""
    from deployer.server import facts as server_facts
    from deployer.server import health

    # ``contract`` is left to the revision check below: with no contract migration it has
    # nothing to do; with one not applied, the database is not at the heads and that refuses.
    # The steps after `record` run once the run is journaled: never part of finishing it.
    changing = [name for _, name in record.steps if step_kind(name).changes and not step_kind(name).after_record
                and name not in ("lock", "record", "contract")]
    labels = {name: label for label, name in record.steps}
    # A skipped step had nothing to do: it is finished too.
    not_done = [name for name in changing if record.state_of(labels[name]) not in (runlog.DONE, runlog.SKIPPED)]
    if not_done:
        raise RefusedError(
            f"{record.kind} {record.id} cannot go forward: its steps {', '.join(not_done)} did not finish",
            hint=f"`deployer recover {ctx.env.name}` (without --forward) brings back where it started",
        )
    if recovery.database is None:
        raise RefusedError("cannot go forward: the compose configuration of the checkout cannot be read")
    revision = server_facts.read_revisions(ctx.target, recovery.database)
    if revision is None or set(revision) != set(record.goal.heads):
        raise RefusedError(
            f"cannot go forward: the database is at {', '.join(revision or ()) or 'nothing'}, not at {', '.join(record.goal.heads)}",
            hint=f"`deployer recover {ctx.env.name}` (without --forward) brings back where it started",
        )
    if ctx.planning:
        return _outcome(ctx, "planned", [], clock)
    try:
        summary, unhealthy = health.wait_healthy(ctx.target, timeout=float(ctx.env.health_timeout), settle=2.0, log=ctx.log), None
    except DeployerError as error:
        # The user chose to keep this release (its schema holds writes a way back would lose):
        # it stays in place, and the journal says it is unhealthy; the next release ships the fix.
        summary, unhealthy = f"health check fails: {error.message}", error.message
    running = {c.service: c.image_id for c in server_facts.service_containers(ctx.target) if c.state == "running"}
    timings = [journal.StepTiming(p.step, p.state, 0.0, p.detail) for p in record.progress]
    timings.append(journal.StepTiming("forward", "failed" if unhealthy else "ok", 0.0, summary))
    finished = datetime.now(UTC)
    kept = "kept forward as chosen: the release's schema, code and images stay"
    journal.append(ctx.host, ctx.state_dir, journal.Record(
        id=record.id, kind=record.kind, environment=ctx.env.name, outcome=journal.FAILED if unhealthy else journal.SUCCEEDED,
        commit=record.goal.commit, previous_commit=record.source.commit, revision_before=tuple(record.source.revision or ()),
        revision_after=tuple(revision), started_at=record.started_at, finished_at=finished.isoformat(timespec="seconds"),
        seconds=round((finished - datetime.fromisoformat(record.started_at)).total_seconds(), 3), user=whoami(),
        backup=record.backup, steps=tuple(timings), error=f"health check fails: {unhealthy}" if unhealthy else None,
        recovery=kept if unhealthy else "finished forward after an interruption",
        previous_release=record.source.release, image_ids=running,
    ))
    runlog.clear(ctx.host, ctx.state_dir)
    if unhealthy:
        raise ReleaseFailed(
            f"{record.kind} {record.id} {kept}, but its health check fails: {unhealthy}",
            hint="the server runs that release, schema and code together; fix the cause and release again",
        )
    return Outcome(
        id=record.id, environment=ctx.env.name, outcome=journal.SUCCEEDED, commit=record.goal.commit,
        previous_commit=record.source.commit, revision_before=tuple(record.source.revision or ()),
        revision_after=tuple(revision), backup=record.backup, steps=tuple(timings),
        seconds=round(time.monotonic() - clock, 3), kind=record.kind, recovery="finished forward",
        converged=describe_interrupted(record),
    )
