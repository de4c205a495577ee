"""A step's actions run beside the steps that follow it, on a thread of their own.

A step kind that runs after the record (:attr:`deployer.steps.StepKind.after_record`) may
also name a step it can start after (:attr:`~deployer.steps.StepKind.early_after`): the
restore verification of a backup needs only the backup, not the switch. Once that step has
finished, the engine starts the kind's :attr:`~deployer.steps.StepKind.early` actions here,
beside the migration, the switch and the health check; the step itself, in its place after
the record, takes their result (:meth:`Early.result`) instead of running them. The actions
are the ones a dry run lists for the step, under its label, and they are performed by the
same :func:`~deployer.engine` machinery; only when they happen differs.

What stays as it was:

- The run's own steps never wait for them, and their failure never fails the run: the
  step, in its place, runs its actions again itself when they did not complete.
- A failed or interrupted run stops them first (:func:`cancel_all`): the next action is
  not performed — the generator gets :class:`Cancelled` where it stands and cleans up (a
  scratch container is removed) — and the ``abort`` command (removing that container) cuts
  a long command short. A run that is killed outright leaves them to the lease's holder,
  which removes the containers labelled with the run.
- Signals are taken by the main thread only (:mod:`deployer.interrupts`); waiting for the
  result is interruptible, and an interruption there cancels them the same way.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

from deployer import interrupts
from deployer.actions import shown

if TYPE_CHECKING:
    from deployer.steps.context import Context

Perform = Callable[["Context", Any], Any]
KEY = "early"  # ctx.scratch[KEY]: {step label: Early}
CANCEL_WAIT = 60.0


class Cancelled(Exception):  # noqa: N818 - it says what happened to the actions
    """Thrown into early actions when the run that started them failed or was interrupted."""


class Early:
    """One step's actions, running on their own thread (see the module docstring)."""

    def __init__(self, ctx: Context, label: str, body: Generator[Any, Any, Any], perform: Perform,
                 *, abort: Sequence[str] = ()) -> None:
        self.ctx = ctx
        self.label = label
        self._body = body
        self._perform = perform
        self._abort = tuple(abort)
        self._cancel = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"deployer-early-{label}", daemon=True)

    def start(self) -> Early:
        self._thread.start()
        return self

    def _run(self) -> None:
        body, send, thrown = self._body, None, False
        throw: BaseException | None = None
        while True:
            try:
                action = body.throw(throw) if throw is not None else body.send(send)
            except StopIteration as stop:
                self.value = stop.value
                return
            except BaseException as error:  # noqa: BLE001 - kept for the step, which runs them again
                self.error = error
                return
            send, throw = None, None
            if self._cancel.is_set() and not thrown:
                # Once: what the generator yields while it cleans up is performed.
                throw, thrown = Cancelled(f"{self.label} stopped: the run it ran beside ended"), True
                continue
            # A snapshot of the run's values: the main thread may add to them meanwhile.
            self.ctx.trace.append((self.label, shown(action, dict(self.ctx.values))))
            try:
                send = self._perform(self.ctx, action)
            except BaseException as error:  # noqa: BLE001 - handed to the generator, as the engine does
                throw = error

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> tuple[bool, Any]:
        """Wait for the actions (a signal stops them first, then goes on up); ``(True, value)``
        when they completed, ``(False, error)`` when they raised."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.1)
                interrupts.check()
        except KeyboardInterrupt:
            self.cancel()
            raise
        return (True, self.value) if self.error is None else (False, self.error)

    def cancel(self, wait: float = CANCEL_WAIT) -> None:
        """Stop the actions: nothing more is performed but their clean-up; ``abort`` cuts a
        long command short (and runs once more after, for a container started meanwhile)."""
        if self.done:
            if self.error is not None:  # a lost connection may have left what it started
                self._run_abort()
            return
        self._cancel.set()
        self._run_abort()
        self._thread.join(wait)
        self._run_abort()

    def _run_abort(self) -> None:
        if self._abort:
            with contextlib.suppress(Exception):  # the run's own failure is the one to report
                self.ctx.host.run(list(self._abort), timeout=60)


def start(ctx: Context, label: str, body: Generator[Any, Any, Any], perform: Perform, *,
          abort: Sequence[str] = ()) -> Early:
    early = Early(ctx, label, body, perform, abort=abort).start()
    ctx.scratch.setdefault(KEY, {})[label] = early
    return early


def take(ctx: Context, label: str) -> Early | None:
    """The early actions of the step ``label``, if they were started (once)."""
    return ctx.scratch.get(KEY, {}).pop(label, None)


def cancel_all(ctx: Context) -> None:
    """Stop every early action of the run (its failure, an interruption, its end)."""
    for early in ctx.scratch.pop(KEY, {}).values():
        early.cancel()
