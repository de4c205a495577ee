"""Ctrl-C, SIGTERM (a cancelled CI job) and SIGHUP (a closed terminal), handled at safe points.

The signal handler only records the signal. Code that waits — a command on a host, a
poll — calls :func:`check` (or :func:`sleep`), which raises :class:`Interrupted` there, never
in the middle of a library's critical section (an SSH transport interrupted half-way through
sending a packet hangs). During recovery the first signal is deferred with a message; a
second one within :data:`ABANDON_WINDOW` seconds abandons recovery at the next safe point,
leaving the step log for the next command to converge from.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator

ABANDON_WINDOW = 3.0
SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class Interrupted(KeyboardInterrupt):
    """A signal asked deployer to stop; raised at a safe point."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """As a shell reports a command killed by the signal: 130 for Ctrl-C, 143 for SIGTERM."""
        return 128 + int(self.signum)


class Abandoned(Interrupted):
    """A second signal during recovery: stop recovering and leave the rest to the next command."""


class _State:
    def __init__(self) -> None:
        # Re-entrant: the handler runs in the main thread, maybe while check() holds the lock
        # there (a plain Lock would deadlock the process on that signal).
        self.lock = threading.RLock()
        self.pending: int | None = None
        self.recovering = False
        self.deferred_at: float | None = None
        self.abandon = False
        self.what_is_left = "the step log, for the next command to converge from"
        self.installed = False


_state = _State()


def _handler(signum: int, frame: object) -> None:
    with _state.lock:
        if _state.recovering:
            now = time.monotonic()
            if _state.deferred_at is not None and now - _state.deferred_at <= ABANDON_WINDOW:
                _state.abandon = True
                _state.pending = signum
                return
            _state.deferred_at = now
            message = (f"recovering: press Ctrl-C again within {ABANDON_WINDOW:g} s to abandon, leaving "
                       f"{_state.what_is_left}\n")
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(message)
                sys.stderr.flush()
            return
        _state.pending = signum


def install() -> None:
    """Install the handlers (also when the parent ignored SIGINT, as nohup does)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    _state.installed = True


def check() -> None:
    """Raise :class:`Interrupted` (or :class:`Abandoned`) if a signal arrived; cheap to call often."""
    pending = _state.pending
    if pending is None or threading.current_thread() is not threading.main_thread():
        return
    with _state.lock:
        if _state.abandon:
            _state.abandon = False
            _state.pending = None
            raise Abandoned(pending)
        if _state.recovering:
            return
        _state.pending = None
    raise Interrupted(pending)


def sleep(seconds: float) -> None:
    """``time.sleep`` that wakes up for a signal."""
    end = time.monotonic() + seconds
    while True:
        check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def pending() -> bool:
    return _state.pending is not None


def take() -> int | None:
    """The signal that arrived, if any, forgotten as it is returned: for code that passes it
    on itself (a command attached to the terminal: :meth:`deployer.hosts.base.Host.attach`)."""
    with _state.lock:
        signum, _state.pending = _state.pending, None
        _state.abandon = False
    return signum


@contextlib.contextmanager
def recovering(what_is_left: str) -> Iterator[None]:
    """Defer signals while recovering (see the module docstring)."""
    with _state.lock:
        _state.recovering = True
        _state.deferred_at = None
        _state.pending = None
        _state.what_is_left = what_is_left
    try:
        yield
    finally:
        with _state.lock:
            _state.recovering = False
            _state.deferred_at = None
            if not _state.abandon:
                _state.pending = None


def reset() -> None:
    """Forget any pending signal (tests)."""
    with _state.lock:
        _state.pending = None
        _state.abandon = False
        _state.recovering = False
        _state.deferred_at = None
