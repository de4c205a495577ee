"""A step's actions beside the others (deployer.background): their result, their errors,
and a cancel that lets them clean up and nothing more."""

from __future__ import annotations

import threading
from collections.abc import Generator
from types import SimpleNamespace
from typing import Any

import pytest

from deployer import background
from deployer.actions import Command


class Host:
    def __init__(self) -> None:
        self.ran: list[tuple[str, ...]] = []

    def run(self, argv: list[str], **_: Any) -> None:
        self.ran.append(tuple(argv))


def context() -> Any:
    return SimpleNamespace(trace=[], values={}, scratch={}, host=Host())


def steps(log: list[str], gate: threading.Event | None = None) -> Generator[Any, Any, Any]:
    first = yield Command(("echo", "one"))
    log.append(f"got {first}")
    try:
        if gate is not None:
            gate.wait(5)
        yield Command(("echo", "two"))
        yield Command(("echo", "three"))
    except BaseException as error:
        log.append(f"cleaning up after {type(error).__name__}")
        yield Command(("echo", "clean"))
        raise
    return "verdict"


def test_the_actions_run_in_order_under_the_label_and_return_their_value() -> None:
    ctx, log, performed = context(), [], []

    def perform(_: Any, action: Command) -> str:
        performed.append(action.argv[1])
        return f"result of {action.argv[1]}"

    early = background.start(ctx, "verify_backup", steps(log), perform)
    assert early.result() == (True, "verdict")
    assert performed == ["one", "two", "three"] and log == ["got result of one"]
    assert ctx.trace == [("verify_backup", "echo one"), ("verify_backup", "echo two"), ("verify_backup", "echo three")]
    assert background.take(ctx, "verify_backup") is early and background.take(ctx, "verify_backup") is None


def test_a_failing_action_is_thrown_into_the_generator_and_its_error_kept() -> None:
    ctx, log, performed = context(), [], []

    def perform(_: Any, action: Command) -> None:
        performed.append(action.argv[1])
        if action.argv[1] == "two":
            raise ConnectionError("lost")

    early = background.start(ctx, "verify_backup", steps(log), perform)
    completed, error = early.result()
    assert not completed and isinstance(error, ConnectionError)
    assert performed == ["one", "two", "clean"] and log[-1] == "cleaning up after ConnectionError"


def test_cancel_performs_only_the_clean_up_then_the_abort() -> None:
    ctx, log, performed = context(), [], []
    gate = threading.Event()
    background.start(ctx, "verify_backup", steps(log, gate), lambda _, a: performed.append(a.argv[1]),
                     abort=("docker", "rm", "--force", "scratch"))
    threading.Timer(0.2, gate.set).start()  # the cancel below comes while "two" waits to be yielded
    early = ctx.scratch[background.KEY]["verify_backup"]
    background.cancel_all(ctx)
    assert early.done
    assert performed == ["one", "clean"], performed  # neither "two" nor "three"
    assert log[-1] == "cleaning up after Cancelled"
    # the abort cuts a long command short, and runs again once the actions stopped
    assert ctx.host.ran == [("docker", "rm", "--force", "scratch")] * 2
    assert background.KEY not in ctx.scratch


def test_cancel_after_they_completed_does_nothing() -> None:
    ctx = context()
    early = background.start(ctx, "verify_backup", steps([]), lambda _, a: None, abort=("docker", "rm", "x"))
    assert early.result()[0]
    early.cancel()
    assert ctx.host.ran == []


def test_an_interrupted_wait_cancels_them(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, log, performed = context(), [], []
    gate = threading.Event()
    early = background.start(ctx, "verify_backup", steps(log, gate), lambda _, a: performed.append(a.argv[1]),
                             abort=("docker", "rm", "scratch"))

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(background.interrupts, "check", interrupted)
    threading.Timer(0.2, gate.set).start()
    with pytest.raises(KeyboardInterrupt):
        early.result()
    assert early.done and performed == ["one", "clean"] and log[-1] == "cleaning up after Cancelled"
