"""The lines a run gives its ``log`` while it runs, and how to tell a step's start and end
from the other lines.

The engine says ``> build`` when a step starts and ``✓ build 12.3s  images built`` (``-``
skipped, ``x`` failed) when it ends; on an environment of several hosts each line starts with
the host's name in brackets (``[web2] > build``). Without a terminal these lines are printed
as they are (CI logs, ``tail -f``); on a terminal :mod:`deployer.cli.render` turns a step's
start into a spinner with its elapsed time and its end into a coloured line.

Pure: no I/O, no imports beyond the standard library (``deployer --help`` stays fast).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STARTED = ">"
DONE = "✓"
SKIPPED = "-"
FAILED = "x"

START, END, LINE = "start", "end", "line"  # the kinds of :class:`Event`

_HOST = re.compile(r"^\[(?P<host>[^\]\s]+)\] ")
_MARKS = {DONE: "ok", SKIPPED: "skipped", FAILED: "failed"}


def started(label: str) -> str:
    """The line that says a step starts."""
    return f"{STARTED} {label}"


def finished(label: str, status: str, seconds: float, detail: str = "") -> str:
    """The line that says a step ended: ``status`` is ``ok`` or ``skipped``."""
    mark = DONE if status == "ok" else SKIPPED
    return f"{mark} {label} {seconds:.1f}s" + (f"  {detail}" if detail else "")


def failed(label: str, reason: str = "", *, recovering: bool = False) -> str:
    """The line that says a step failed: with its ``reason``, or (the run's own steps) pointing
    at the error printed at the end — once, after recovery when there is one to do."""
    if reason:
        return f"{FAILED} {label} failed: {reason}"
    return f"{FAILED} {label} failed" + (" (recovering first; the error at the end says why)" if recovering
                                          else " (the error below says why)")


@dataclass(frozen=True)
class Event:
    """One line, read: a step that starts, one that ends, or any other line."""

    kind: str  # START, END or LINE
    host: str  # the host's name on an environment of several, else ""
    text: str  # START: the step's label; END and LINE: the line without the host prefix
    status: str = ""  # END: ok, skipped or failed


def parse(line: str) -> Event:
    """Read one progress line (see the module docstring)."""
    host = ""
    found = _HOST.match(line)
    if found:
        host, line = found.group("host"), line[found.end():]
    mark, space, rest = line.partition(" ")
    if space and rest and mark == STARTED:
        return Event(START, host, rest)
    if space and rest and mark in _MARKS:
        return Event(END, host, line, _MARKS[mark])
    return Event(LINE, host, line)
