"""Signal handling: a signal that lands while the main thread is inside check() (which holds
the state's lock) must not deadlock the process."""

from __future__ import annotations

import signal

import pytest

from deployer import interrupts


@pytest.fixture(autouse=True)
def _clean() -> None:
    interrupts.reset()
    yield
    interrupts.reset()


def test_a_signal_while_the_state_lock_is_held_is_recorded() -> None:
    # The handler runs in the main thread between bytecodes: here, inside the lock.
    with interrupts._state.lock:
        interrupts._handler(signal.SIGINT, None)
    assert interrupts.pending()
    with pytest.raises(interrupts.Interrupted):
        interrupts.check()


def test_third_signal_during_recovery_abandons_even_inside_the_lock() -> None:
    with interrupts.recovering("the step log"):
        interrupts._handler(signal.SIGINT, None)  # announced, deferred
        interrupts.check()  # recovery goes on
        with interrupts._state.lock:
            interrupts._handler(signal.SIGINT, None)  # within 3 s: abandon
        with pytest.raises(interrupts.Abandoned):
            interrupts.check()
