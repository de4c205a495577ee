"""Text rendering for the terminal, kept apart from the logic that produces the data.

Two forms of everything, chosen per stream:

* **live** — the stream is a terminal and ``NO_COLOR`` is not set: a spinner with the
  elapsed time for the step that runs (rich's :class:`~rich.live.Live`, on stderr),
  colour for outcomes and verdicts, long commands wrapped to the terminal's width;
* **plain** — anything else (a pipe, a file, CI, ``NO_COLOR=1``, ``TERM=dumb``): the same
  lines as they are, one per message, with no escape code.

rich is imported only in the live form: ``deployer status`` piped into a file, or run by
a script, never pays for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from deployer import progress

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

# rich's "dots" spinner, drawn from the clock: every spinner on screen turns together.
_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_REFRESH_PER_SECOND = 10


def is_live(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default stderr) gets the live form: a terminal, and neither
    ``NO_COLOR`` (https://no-color.org: set and not empty) nor ``TERM=dumb``."""
    stream = stream if stream is not None else sys.stderr
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
    return terminal and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _console(stderr: bool) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


# --------------------------------------------------------------------------- progress


class Progress:
    """Where a command's progress goes (stderr: stdout stays clean for --json): callable
    with one line at a time, a context manager around the command's work."""

    def __call__(self, line: str) -> None:
        raise NotImplementedError

    def paused(self) -> contextlib.AbstractContextManager[None]:
        """Stop drawing while something else uses the terminal (a yes/no question)."""
        return contextlib.nullcontext()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class PlainProgress(Progress):
    """Every line as it is, flushed at once (a CI log shows a step as it starts)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._broken = False
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        if self._broken:
            return
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            with self._lock:
                stream.write(line + "\n")
                stream.flush()
        except (OSError, ValueError):
            # The terminal went away (SIGHUP): the run goes on, and recovers, without it.
            self._broken = True


class LiveProgress(Progress):
    """On a terminal: the step that runs (on each host) as a spinner with its elapsed time,
    and each finished step as one coloured line above it. Lines are read with
    :func:`deployer.progress.parse`; nothing is printed twice."""

    def __init__(self, activity: str, console: Console | None = None) -> None:
        self._console = console if console is not None else _console(stderr=True)
        self._phase = (activity, time.monotonic())  # what the spinner says while no step runs
        self._running: dict[str, tuple[str, float]] = {}  # host ("" for one) -> (step label, since)
        self._lock = threading.Lock()
        self._live: Any = None
        self._broken = False

    # -- the spinner
    def _start(self) -> None:
        from rich.live import Live

        self._live = Live(get_renderable=self._spinners, console=self._console, transient=True,
                          refresh_per_second=_REFRESH_PER_SECOND, redirect_stdout=False, redirect_stderr=True)
        try:
            self._live.start()
        except (OSError, ValueError):
            self._broken, self._live = True, None

    def _stop(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            with contextlib.suppress(OSError, ValueError):
                live.stop()

    def _spinners(self) -> Text:
        from rich.text import Text

        now = time.monotonic()
        with self._lock:
            rows = [(host, label, since) for host, (label, since) in sorted(self._running.items())]
            if not rows:
                rows = [("", *self._phase)]
        frame = _FRAMES[int(now * _REFRESH_PER_SECOND) % len(_FRAMES)]
        text = Text(no_wrap=True, overflow="ellipsis")
        for index, (host, label, since) in enumerate(rows):
            if index:
                text.append("\n")
            text.append(f"{frame} ", style="cyan")
            if host:
                text.append(f"[{host}] ", style="cyan")
            text.append(label, style="bold")
            text.append(f"  {now - since:.1f}s", style="dim")
        return text

    def __enter__(self) -> LiveProgress:
        self._start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._stop()
        try:
            yield
        finally:
            if not self._broken:
                self._start()

    # -- the lines
    def __call__(self, line: str) -> None:
        if self._broken:
            return
        event = progress.parse(line)
        label = ""
        with self._lock:
            if event.kind == progress.START:
                self._running[event.host] = (event.text, time.monotonic())
                return
            if event.kind == progress.END:
                label = self._running.pop(event.host, ("", 0.0))[0]
            elif event.text.startswith("recovering"):
                self._phase = ("recovering", time.monotonic())
        shown = styled_line(event, label)
        # A step's line wraps under its label, not under its mark.
        hang = len(f"[{event.host}] ") * bool(event.host) + 2 if event.kind == progress.END else 0
        try:
            self._console.print(_hanging(shown, hang))
        except (OSError, ValueError):
            self._broken = True


def _hanging(text: Text, hang: int) -> Any:
    """``text`` wrapped to the terminal's width, the lines after the first indented by ``hang``."""
    if not hang or len(text) <= hang:
        text.overflow = "fold"
        return text
    from rich.table import Table

    grid = Table.grid()
    grid.add_column(width=hang, no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row(text[:hang], text[hang:])
    return grid


def styled_line(event: progress.Event, label: str = "") -> Text:
    """One progress line with its colours: a step's mark (green ✓, dim -, red x) and label,
    warnings in yellow, a command's own output dimmed."""
    from rich.text import Text

    text = Text()
    if event.host:
        text.append(f"[{event.host}] ", style="cyan")
    line = event.text
    if event.kind == progress.END:
        mark, _, rest = line.partition(" ")
        text.append(mark, style={"ok": "bold green", "skipped": "dim", "failed": "bold red"}[event.status])
        text.append(" ")
        if label and rest.startswith(label):
            text.append(label, style="bold red" if event.status == "failed" else "bold")
            rest = rest[len(label):]
            seconds, space, detail = rest.lstrip().partition(" ")
            if seconds.endswith("s") and seconds[:-1].replace(".", "", 1).isdigit():
                text.append(" " + seconds, style="dim")
                rest = space + detail
        text.append(rest, style="red" if event.status == "failed" else None)
    elif line.startswith("warning"):
        text.append(line, style="yellow")
    elif line.startswith("  | "):
        text.append(line, style="dim")
    else:
        text.append(line)
    return text


def progress_printer(activity: str = "working") -> Progress:
    """The progress of a command: live on a terminal (the spinner says ``activity`` while no
    step runs), plain lines otherwise. Use it as a context manager around the work."""
    return LiveProgress(activity) if is_live(sys.stderr) else PlainProgress()


def confirmer(shown: Progress) -> Callable[[str], bool] | None:
    """A yes/no prompt on the terminal (the spinner paused while it waits), or None when
    there is no terminal to ask on (CI): then --yes is needed."""
    from deployer.cli.common import confirmer as prompt

    ask = prompt()
    if ask is None:
        return None

    def confirm(question: str) -> bool:
        with shown.paused():
            return ask(question)

    return confirm


# --------------------------------------------------------------------------- results


def echo(text: str, *, style: str | None = None, err: bool = False) -> None:
    """A command's result line(s): in ``style`` (a rich style, e.g. ``"bold green"``) on a
    terminal, as they are otherwise."""
    stream = sys.stderr if err else sys.stdout
    if style is None or not is_live(stream):
        stream.write(text + "\n")
        stream.flush()
        return
    from rich.text import Text

    _console(stderr=err).print(Text(text, style=style), soft_wrap=True)


def echo_error(text: str) -> None:
    """deployer's final error line on stderr (red ``error:`` on a terminal); a closed terminal
    (SIGHUP) must not turn it into a traceback."""
    with contextlib.suppress(OSError, ValueError):
        if not is_live(sys.stderr):
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
            return
        from rich.text import Text

        head, colon, rest = text.partition(":")
        shown = Text(head + colon, style="bold red") + Text(rest) if colon else Text(text, style="bold red")
        _console(stderr=True).print(shown, soft_wrap=False, overflow="fold")


def render_mapping(data: Mapping[str, Any]) -> None:
    """Print a nested mapping as a two-column table of dotted keys and values."""
    rows: list[tuple[str, str]] = []
    _flatten("", data, rows)
    if not is_live(sys.stdout):
        width = max((len(key) for key, _ in rows), default=0)
        for key, value in rows:
            sys.stdout.write(f"{key:<{width}}  {value}".rstrip() + "\n")
        return
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    _console(stderr=False).print(table)


def _flatten(prefix: str, value: Any, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, rows)
    elif isinstance(value, (list, tuple)):
        rows.append((prefix, " ".join(str(v) for v in value)))
    else:
        rows.append((prefix, "" if value is None else str(value)))


# --------------------------------------------------------------------------- status


VERDICT_STYLES = {"good": "bold green", "warn": "bold yellow", "bad": "bold red"}


def render_status(text: str, tones: Sequence[str]) -> None:
    """``deployer status``'s report (:func:`deployer.status.render_status` or
    ``render_fleet``), coloured on a terminal: each ``verdict`` line in the tone of its
    host's verdict (``tones``, in order), the service marks, problems, disagreements, and the
    final in-sync line."""
    if not is_live(sys.stdout):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    from rich.text import Text

    console = _console(stderr=False)
    verdicts = iter(tones)
    for line in text.splitlines():
        shown = Text(line)
        if line.startswith("  verdict    "):
            shown.stylize(VERDICT_STYLES.get(next(verdicts, "warn"), ""), 13)
        elif line.startswith(("    ok ", "    .. ", "    !! ")):
            shown.stylize({"ok": "green", "..": "yellow", "!!": "bold red"}[line[4:6]], 4, 6)
        elif line.startswith("  problem    ") or line.startswith("  ! "):
            shown.stylize("red", 2)
        elif line.startswith("  lock       held"):
            shown.stylize("yellow", 13)
        elif line.startswith("=> "):
            shown.stylize("bold red" if line.startswith("=> NOT") else "bold green")
        elif line and not line.startswith(" "):
            shown.stylize("bold")
        console.print(shown, soft_wrap=False, overflow="fold")


# --------------------------------------------------------------------------- plans


def wrap_command(command: str, width: int, *, first: str = "", indent: str = "    ") -> list[str]:
    """A shell command as lines of at most ``width`` characters where it can be, cut with
    ``\\`` continuations, so that the lines pasted into a shell are still the one command:
    the first line starts with ``first``, each cut one with ``indent``.

    Cuts only at spaces outside quotes. A word longer than a line stays whole; a script in
    quotes keeps its own lines as they are (only the words around it are cut).
    """
    if max(len(line) for line in (first + command).split("\n")) <= width:
        return (first + command).split("\n")
    text = first
    fresh = True  # nothing on this line yet: the word goes here, however long
    room = width - 2  # the " \\" at the end of a cut line
    for word in _shell_words(command):
        column = len(text.rsplit("\n", 1)[-1])
        if not fresh and column + 1 + len(word.split("\n", 1)[0]) > room:
            text += " \\\n" + indent + word
        else:
            text += ("" if fresh else " ") + word
        fresh = False
    return text.split("\n")


def _shell_words(command: str) -> list[str]:
    """``command`` split at the spaces a shell splits at, each word kept as written (quotes
    and backslashes included)."""
    words: list[str] = []
    current: list[str] = []
    quote = ""
    escaped = False
    for char in command:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quote != "'":
            current.append(char)
            escaped = True
        elif quote:
            current.append(char)
            if char == quote:
                quote = ""
        elif char in "'\"":
            current.append(char)
            quote = char
        elif char == " ":
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


def render_plan(plan) -> None:  # noqa: ANN001 - deployer.engine.Plan
    """The dry-run plan: what would ship, the pending migrations, each step's commands."""
    live = is_live(sys.stdout)
    console = _console(stderr=False) if live else None
    width = console.width if console is not None else 0

    def out(text: str = "", style: str | None = None, hang: int | None = None, *, wrapped: bool = False) -> None:
        """One line; on a terminal wrapped to its width, the wrapped lines indented by
        ``hang`` (default: as far as the line itself is). ``wrapped``: cut already (a
        command's line, whose ending "\\" must stay where it is): printed as it is."""
        if console is None:
            sys.stdout.write(text + "\n")
            return
        if wrapped:
            console.print(text, style=style or "", markup=False, soft_wrap=True)
            return
        from rich.padding import Padding
        from rich.text import Text

        body = text.lstrip(" ")
        lead = len(text) - len(body)
        if hang is None or hang <= lead:
            # Not expanded: no trailing spaces (a pasted command line must end with its "\\").
            console.print(Padding(Text(body, style=style or "", overflow="fold"), (0, 0, 0, lead), expand=False))
        else:
            console.print(_hanging(Text(text, style=style or ""), hang))

    what = f"rollback to {plan.target_release}" if plan.kind == "rollback" else f"playbook {plan.playbook}"
    out(f"{plan.kind} plan for {plan.environment} on {plan.host} ({what}) — nothing will change", "bold")
    if plan.converge_first:
        out(f"  first    {plan.converge_first}", "yellow", hang=11)
    out(f"  commit   {plan.commit} ({plan.ref}); deployed now: {plan.previous_commit or 'nothing'}", hang=11)
    db = "not running" if plan.database_revision is None else (", ".join(plan.database_revision) or "no revision")
    out(f"  database {db} -> {', '.join(plan.heads) or 'no migrations'}")
    if plan.database:
        out(f"  at       {plan.database}", hang=11)
    label = "downgrades" if plan.kind == "rollback" else "pending migrations"
    if plan.restore_backup:
        out(f"  restore  backup {plan.restore_backup} instead of the downgrades (data written since it is lost)", "yellow",
            hang=11)
    if plan.pending:
        out(f"  {label}, in order:")
        for item in plan.pending:
            flags = []
            if item["destructive"]:
                flags.append(f"drops data: {'; '.join(item['destructive'])}")
            if plan.kind == "rollback" and not item["has_downgrade"]:
                flags.append("NO working downgrade")
            flag = f"  [{' | '.join(flags)}]" if flags else ""
            out(f"    {item['revision']}  {item['message']}{flag}", "yellow" if flags else None)
    else:
        out(f"  {label}: none")
    if plan.not_transactional:
        head, *rest = plan.not_transactional
        out(f"  gate     {head}", "yellow", hang=11)
        for line in rest:
            out(f"         {line}", "yellow", hang=13)
    if plan.swap:
        out(f"  swap     {plan.swap}", hang=11)
    out("")
    for number, step in enumerate(plan.steps, start=1):
        out(f"{number:2d}. {step.label}" + (f"  ({step.note})" if step.note else ""), "bold", hang=4)
        for command in step.commands:
            if command.startswith(("wait:", "read:", "write ", "take the", "copy ")):  # what deployer does itself
                out("      " + command)
                continue
            if console is None:
                out("      $ " + command)
                continue
            # One column to spare: a line that fills the width leaves some terminals wrapping
            # what follows it (and tmux marks it as wrapped).
            for line in wrap_command(command, max(width - 1, 40), first="      $ ", indent=" " * 12):
                out(line, wrapped=True)
    if plan.unchanged:
        out("")
        out(f"nothing to do: {plan.unchanged}", "bold green")
        out("  (the release stops after preflight and journals nothing; --force runs every step)")
        return
    for line in plan.footer:
        out(f"  ({line})", "dim")
