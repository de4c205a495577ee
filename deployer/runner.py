"""The one place that changes the world: run a playbook's steps, time them, show them,
journal the outcome, and recover when a step fails after the server was changed."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from deployer.server import journal
from deployer.server import lock
from deployer.errors import DeployerError, ExitCode, RecoveryFailed
from deployer.playbook import Step
from deployer.release import STEPS, Run, Skip, make_record, recover


class ReleaseFailed(DeployerError):
    """A step failed; the previous release was put back (the message says how)."""


@dataclass(frozen=True)
class Outcome:
    """What ``deployer release`` reports (``--json`` prints exactly this)."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _changed(run: Run) -> bool:
    return run.synced or run.stopped or run.migrated or run.recreated


def execute(run: Run, steps: Mapping[str, Callable[[Run, Step], str]] = STEPS) -> Outcome:
    """Run every step of the playbook; on failure recover, journal, and raise.

    Raises :class:`ReleaseFailed` (recovered), :class:`RecoveryFailed` (not fully), or the
    step's own error when nothing had been changed yet (e.g. a preflight refusal).
    """
    run.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    clock = time.monotonic()
    current = None
    try:
        for step in run.playbook.steps:
            current = step
            started = time.monotonic()
            run.log(f"> {step.label}")
            try:
                detail = steps[step.name](run, step)
                status = "ok"
            except Skip as skipped:
                detail, status = str(skipped), "skipped"
            seconds = round(time.monotonic() - started, 3)
            run.timings.append(journal.StepTiming(step.label, status, seconds, detail))
            run.log(f"{'✓' if status == 'ok' else '-'} {step.label} {seconds:.1f}s  {detail}")
        current = None
        return _outcome(run, journal.SUCCEEDED, clock)
    except (Exception, KeyboardInterrupt) as failure:
        failed_label = current.label if current else "?"
        message = failure.message if isinstance(failure, DeployerError) else (str(failure) or type(failure).__name__)
        if isinstance(failure, KeyboardInterrupt):
            message = "interrupted (Ctrl-C)"
        run.timings.append(journal.StepTiming(failed_label, "failed", 0.0, message))
        run.log(f"x {failed_label} failed: {message}")
        if not _changed(run):
            if run.locked and run.commit is not None:
                journal.append(run.host, run.target.state_dir, make_record(run, journal.FAILED, error=message, recovery="nothing had changed"))
            raise
        run.log("recovering the previous release ...")
        try:
            recovery = recover(run, failure)
        except RecoveryFailed as incomplete:
            if run.locked:
                journal.append(run.host, run.target.state_dir, make_record(run, journal.RECOVERY_FAILED, error=message, recovery=incomplete.message))
            raise
        if run.locked:
            journal.append(run.host, run.target.state_dir, make_record(run, journal.FAILED, error=message, recovery=recovery))
        if isinstance(failure, KeyboardInterrupt):
            raise
        raise ReleaseFailed(
            f"{run.kind} {run.id} failed at step `{failed_label}`: {message}\n  recovered: {recovery}",
            hint="the server runs the previous release; fix the cause and release again",
        ) from None
    finally:
        if run.locked:
            lock.release(run.host, run.target.state_dir)
            run.locked = False


def _outcome(run: Run, outcome: str, clock: float) -> Outcome:
    return Outcome(
        id=run.id,
        environment=run.env.name,
        outcome=outcome,
        commit=run.commit.sha if run.commit else None,
        previous_commit=run.previous_commit,
        revision_before=tuple(run.revision_before or ()),
        revision_after=tuple(run.revision_after),
        backup=run.backup.id if run.backup else None,
        steps=tuple(run.timings),
        seconds=round(time.monotonic() - clock, 3),
        exit_code=int(ExitCode.OK),
    )
