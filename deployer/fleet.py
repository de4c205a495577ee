"""A release or a recovery across an environment's several hosts (``hosts = [...]``).

One :class:`~deployer.steps.context.Context` per host, the primary first, run in the phases
:func:`deployer.steps.fleet.schedule` gives: every host does a step before any does the
next (preflight refuses on any host before anything changes on one), side by side; the
database's steps (backup, lint, migrate, verify, contract) run once, on the primary; the
switch and its health check roll across the hosts in batches, each batch healthy before the
next one starts.

Each host keeps its own lease, step log and journal, under one release id. When a step fails
on any host, every host goes back: the others first (their code and images), then the
primary (its code, then the schema), so no host runs old code on a schema it does not know
for longer than the downgrade takes. A host killed or cut off mid-run leaves its step log,
and the next command converges every host from its own (see :func:`converge`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from deployer import background, engine, interrupts, progress
from deployer.errors import DeployerError, RecoveryFailed
from deployer.server import journal
from deployer.steps import PRIMARY
from deployer.steps import kind as step_kind
from deployer.steps.context import Context
from deployer.steps.fleet import Phase, schedule
from deployer.steps.playbook import Playbook, Step

PREFLIGHTS = ("preflight", "rollback_preflight")


@dataclass
class Part:
    """One host's share of the run."""

    ctx: Context
    timings: list[journal.StepTiming] = field(default_factory=list)
    current: Step | None = None
    error: BaseException | None = None

    @property
    def name(self) -> str:
        return self.ctx.host.name


class HostFailed(DeployerError):
    """A step failed on one or more hosts (the message names them)."""

    def __init__(self, failures: Sequence[tuple[Part, BaseException]]) -> None:
        lines = [f"on {part.name}: {engine._message(error)}" for part, error in failures]
        hints = [getattr(error, "hint", None) for _, error in failures]
        super().__init__("; ".join(lines), hint=next((h for h in hints if h), None))
        self.failures = tuple(failures)


def phases(ctxs: Sequence[Context], book: Playbook) -> list[Phase]:
    """The run's phases: which steps run on which hosts, in what order (what a dry run lists)."""
    rollout = ctxs[0].env.rollout
    scopes = [step_kind(step.name).scope for step in book.steps]
    return schedule(book.steps, scopes, len(ctxs), batch=rollout.batch, pause=rollout.pause)


def _where(step: Step, phase: Phase) -> tuple[int, ...]:
    """The hosts a step of the phase runs on (a primary step inside the rollout: the primary only)."""
    return (0,) if step_kind(step.name).scope == PRIMARY else phase.hosts


def _side_by_side(parts: Sequence[Part], run: Callable[[Part], Any]) -> list[Any]:
    """``run`` on each part at once; raises :class:`HostFailed` (after all ended) if any failed."""
    if not parts:
        return []
    if len(parts) == 1:
        try:
            return [run(parts[0])]
        except (Exception, KeyboardInterrupt) as error:
            parts[0].error = error
            if isinstance(error, KeyboardInterrupt):
                raise
            raise HostFailed([(parts[0], error)]) from None
    with ThreadPoolExecutor(max_workers=min(8, len(parts)), thread_name_prefix="host") as pool:
        futures = [pool.submit(run, part) for part in parts]
        while not all(f.done() for f in futures):
            time.sleep(0.05)  # signals are taken between phases: a host's command is not cut mid-way
        results: list[Any] = []
        failures: list[tuple[Part, BaseException]] = []
        for part, future in zip(parts, futures, strict=True):
            raised = future.exception()
            if raised is None:
                results.append(future.result())
            else:
                part.error = raised
                failures.append((part, raised))
    if failures:
        raise HostFailed(failures)
    return results


def _step(part: Part, step: Step) -> None:
    part.current = step
    detail, status = engine._run_step(part.ctx, step)
    part.timings.append(journal.StepTiming(step.label, status, round(time.monotonic() - engine._step_started(part.ctx), 3),
                                           detail))
    part.current = None


def _member_preflight(part: Part, step: Step, primary: Context) -> None:
    from deployer.steps.preflight import member_preflight

    part.current = step
    ctx = part.ctx
    ctx.scratch["step_started"] = time.monotonic()
    ctx.log(progress.started(step.label))
    detail = member_preflight(ctx, primary)
    seconds = time.monotonic() - engine._step_started(ctx)
    ctx.log(progress.finished(step.label, "ok", seconds, detail))
    part.timings.append(journal.StepTiming(step.label, "ok", round(seconds, 3), detail))
    part.current = None


def execute(ctxs: Sequence[Context], book: Playbook) -> engine.Outcome:
    """Run the playbook on every host (the primary first in ``ctxs``); on a failure on any
    host, every host goes back (see the module docstring), and the error names the hosts."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    clock = time.monotonic()
    parts = [Part(ctx) for ctx in ctxs]
    primary = parts[0]
    for ctx in ctxs:
        ctx.scratch["steps"] = tuple((step.label, step.name) for step in book.steps)
        ctx.scratch["playbook"] = book.name
    steps, after = book.split()
    try:
        outcome = _execute(parts, replace(book, steps=steps), started_at, clock)
        if outcome.outcome != journal.SUCCEEDED:
            return outcome
        # Once every host recorded the run: the steps after `record`, where their scope says
        # (the backup's on the primary); a failure there undoes nothing.
        for part in parts:
            here = tuple(step for step in after if step_kind(step.name).scope != PRIMARY or part is primary)
            stopped = engine.run_after_record(part.ctx, here, part.timings)
            if stopped is not None:
                raise engine.after_record_interrupted(part.ctx, stopped)
        outcome = _outcome(parts, journal.SUCCEEDED, clock)
        if primary.ctx.kind == "release":  # journaled on every host: this never fails the release
            _side_by_side(parts, lambda part: engine.prune_images(part.ctx))
        return outcome
    finally:
        for part in parts:
            background.cancel_all(part.ctx)  # whatever ended the run, nothing it started runs on
            for cleanup in part.ctx.scratch.pop("cleanups", []):
                cleanup()
            if part.ctx.lease is not None:
                part.ctx.lease.release()
                part.ctx.lease = None


def _execute(parts: Sequence[Part], book: Playbook, started_at: str, clock: float) -> engine.Outcome:
    """The run's steps on every host, then each host's journal; on a failure, every host back."""
    primary = parts[0]
    ctxs = [part.ctx for part in parts]
    try:
        for phase in phases(ctxs, book):
            if phase.pause:
                primary.ctx.log(f"rollout: waiting {phase.pause:g}s before batch {phase.batch}")
                interrupts.sleep(phase.pause)
            for step in phase.steps:
                where = [parts[i] for i in _where(step, phase)]
                if step.name in PREFLIGHTS:
                    _side_by_side([primary], lambda part, s=step: _step(part, s))  # type: ignore[misc]
                    _side_by_side(parts[1:], lambda part, s=step: _member_preflight(part, s, primary.ctx))  # type: ignore[misc]
                    if all(p.ctx.scratch.get("unchanged") for p in parts):
                        why = primary.ctx.scratch["unchanged"]
                        primary.ctx.log(f"nothing to do on any of the {len(parts)} hosts")  # the outcome says why
                        return _outcome(parts, engine.UNCHANGED, clock, unchanged=why)
                    for part in parts:  # one host that would change: the release runs on all
                        part.ctx.scratch.pop("unchanged", None)
                else:
                    _side_by_side(where, lambda part, s=step: _step(part, s))  # type: ignore[misc]
                interrupts.check()
        _side_by_side(parts, lambda part: engine._finish(part.ctx, journal.SUCCEEDED, part.timings, started_at))
        outcome = _outcome(parts, journal.SUCCEEDED, clock)
    except (Exception, KeyboardInterrupt) as failure:
        return _failed(parts, failure, started_at)
    return outcome


def _outcome(parts: Sequence[Part], outcome: str, clock: float, **extra: Any) -> engine.Outcome:
    primary = parts[0]
    base = engine._outcome(primary.ctx, outcome, primary.timings, clock, **extra)
    return replace(base, hosts=tuple(_host_line(part, outcome) for part in parts))


def _host_line(part: Part, outcome: str, recovery: str | None = None) -> dict[str, Any]:
    facts = part.ctx.facts
    return {"host": part.name, "outcome": outcome, "previous_commit": facts.deployed_commit if facts else None,
            "recovery": recovery}


def _failed(parts: Sequence[Part], failure: BaseException, started_at: str) -> engine.Outcome:
    """Every host back to where it started: the others first, then the primary; then raise."""
    primary = parts[0]
    for part in parts:
        background.cancel_all(part.ctx)  # a backup's verification, say: recovery goes on alone
    failed = {id(part) for part in parts if part.error is not None}  # where a step failed (or was interrupted)
    message = engine._message(failure)
    label = next((p.current.label for p in parts if p.current is not None), "?")
    # Each host's failure on its own line; the error at the end says why, once.
    recovering = any(engine._changed(p.ctx.record) for p in parts)
    for part in parts:
        if part.error is not None:
            part.ctx.log(progress.failed(part.current.label if part.current else label, recovering=recovering))
    if not failed:
        primary.ctx.log(f"{progress.FAILED} stopped" + ("; recovering first" if recovering else ""))
    changed = [p for p in parts if p.ctx.record is not None]
    results: dict[int, engine.Recovered] = {}

    def back(part: Part) -> engine.Recovered:
        why = engine._message(part.error) if part.error is not None else f"going back with the other hosts: {message}"
        return engine.recover_after(part.ctx, part.error or why, part.current, part.timings, started_at,
                                    failed_here=id(part) in failed)

    try:
        members = [p for p in changed if p is not primary]
        if members:
            if any(p.ctx.record is not None for p in members):
                primary.ctx.log(f"recovering: {', '.join(p.name for p in members)} first, then the primary")
            for part, recovered in zip(members, _side_by_side(members, back), strict=True):
                results[id(part)] = recovered
        if primary in changed:
            results[id(primary)] = back(primary)
    except HostFailed as broken:  # a recovery raised (Abandoned is a KeyboardInterrupt: it goes on up)
        raise RecoveryFailed(f"recovery stopped on a host after: {message}: {broken.message}",
                             hint=f"`deployer status {primary.ctx.env.name}` shows each host") from None
    if not any(r.changed for r in results.values()):
        if isinstance(failure, HostFailed):  # a refusal keeps its own kind (and exit code), naming the host
            part, original = failure.failures[0]
            if isinstance(original, DeployerError) and len(failure.failures) == 1:
                original.message = f"on {part.name}: {original.message}"
                raise original from None
        run = f" {primary.ctx.run_id}" if primary.ctx.run_id and results else ""
        raise engine._interrupted_or(failure, f"{primary.ctx.kind}{run} {message} at step `{label}`: nothing had changed")
    reports = [f"{p.name}: {results[id(p)].report}" for p in parts if id(p) in results]
    left = [f"{p.name}: {item}" for p in parts if id(p) in results for item in results[id(p)].left]
    if left:
        raise RecoveryFailed(
            f"recovery incomplete after: {message}\n  done: " + "; ".join(reports) + "\n  left to do: " + "; ".join(left),
            hint=f"the deploy locks were released; `deployer status {primary.ctx.env.name}` shows each host, "
            f"`deployer recover {primary.ctx.env.name}` finishes it",
        ) from None
    text = "\n  recovered: " + "\n             ".join(reports)
    if isinstance(failure, KeyboardInterrupt):
        raise engine._interrupted_or(failure, f"{primary.ctx.kind} {primary.ctx.run_id} {message} at step `{label}`{text}",
                                     hint="every host runs the previous release")
    cause = getattr(failure, "hint", None)
    first = all(r.first_release for r in results.values() if r.changed)
    raise engine.ReleaseFailed(
        f"{primary.ctx.kind} {primary.ctx.run_id} failed at step `{label}` {message}{text}",
        hint=(f"{cause}; " if cause else "") + ("nothing was deployed; fix the cause and release again" if first
                                                 else "every host runs the previous release; fix the cause and release again"),
    ) from None


# --------------------------------------------------------------------------- planning


def plan(ctxs: Sequence[Context], book: Playbook) -> engine.Plan:
    """The dry run of :func:`execute`: preflight for real on every host, then each phase's
    steps listed per host, nothing performed."""
    primary = ctxs[0]
    for ctx in ctxs:
        ctx.planning = True
        ctx.scratch["steps"] = tuple((step.label, step.name) for step in book.steps)
        ctx.scratch["playbook"] = book.name
    planned: list[engine.PlannedStep] = []
    footer = [f"hosts: {', '.join(c.host.name for c in ctxs)} (primary {primary.host.name})"]
    stop = False
    for phase in phases(ctxs, book):
        if phase.batch:
            footer.append(f"rollout {phase.describe([c.host.name for c in ctxs])}")
        for step in phase.steps:
            for index in _where(step, phase):
                planned.append(_plan_step(ctxs, index, step))
            if step.name in PREFLIGHTS and all(c.scratch.get("unchanged") for c in ctxs):
                stop = True  # what the run would do: stop here, with nothing to do
                break
        if stop:
            break
    single = engine.plan_summary(primary, book, planned)
    return replace(single, host=", ".join(c.host.name for c in ctxs), footer=(*footer, *single.footer))


def _plan_step(ctxs: Sequence[Context], index: int, step: Step) -> engine.PlannedStep:
    from deployer.steps.preflight import member_preflight

    ctx = ctxs[index]
    member = (lambda: member_preflight(ctx, ctxs[0])) if step.name in PREFLIGHTS and index > 0 else None
    planned = engine.plan_step(ctx, step, member)
    return replace(planned, label=f"{step.label} [{ctx.host.name}]")


# --------------------------------------------------------------------------- interrupted runs


def converge(ctxs: Sequence[Context], *, forward: bool = False, restore_backup: bool = False) -> engine.Outcome | None:
    """Converge every host whose last run was interrupted — back to where it started, or with
    ``forward`` to where it was going: the other hosts first, then the primary (its schema
    last). A live run on any host refuses before any host is touched. The primary's outcome
    (or the last host's), with each host's part; None: nothing was interrupted anywhere."""
    for ctx in ctxs:
        engine.interrupted(ctx)
    outcomes: list[tuple[Context, engine.Outcome]] = []
    for ctx in [*ctxs[1:], ctxs[0]]:
        result = engine.converge(ctx, forward=forward, restore_backup=restore_backup)
        if result is not None:
            outcomes.append((ctx, result))
    if not outcomes:
        return None
    last = outcomes[-1][1]
    return replace(last, hosts=tuple({"host": ctx.host.name, "outcome": result.outcome, "previous_commit": result.previous_commit,
                                      "recovery": result.recovery} for ctx, result in outcomes))
