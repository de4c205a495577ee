"""The ``Host`` protocol and what every host shares: command results, output streaming and the
one place an argv becomes a shell command line (:func:`remote_command`).

Everything above this package builds commands as argv lists (``list[str]``); they are turned
into something a shell reads exactly once, here, so no caller ever formats user text into a
shell string.
"""

from __future__ import annotations

import codecs
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Protocol, Self, runtime_checkable

from deployer.errors import CommandError

if TYPE_CHECKING:
    from deployer.hosts.dockerapi import Engine

OutputCallback = Callable[[str], None]

# How many trailing lines of a failed command's output go into the error message.
_TAIL_LINES = 20
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Result:
    """What a finished command left behind."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0

    @property
    def command(self) -> str:
        """The command as a user would type it in a shell."""
        return shlex.join(self.argv)

    def check(self, what: str | None = None) -> Result:
        """Return self if the command succeeded; raise :class:`CommandError` otherwise.

        ``what`` names the step in the message ("build the images"); the command line
        itself is used when it is not given.
        """
        if self.ok:
            return self
        label = what or self.command
        tail = output_tail(self.stderr) or output_tail(self.stdout)
        message = f"{label} failed with exit status {self.exit_code}"
        if what:
            message += f" (command: {self.command})"
        if tail:
            message += "\n" + "\n".join(f"    {line}" for line in tail.splitlines())
        raise CommandError(
            message,
            hint="the command's last output lines are shown above" if tail else None,
            exit_status=self.exit_code,
            output=self.stderr or self.stdout,
        )


def output_tail(text: str, lines: int = _TAIL_LINES) -> str:
    """The last ``lines`` non-empty-trailing lines of ``text``."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


@runtime_checkable
class Process(Protocol):
    """A command started with :meth:`Host.start` that runs while we talk to it.

    Its stdin stays open until :meth:`close_stdin`, :meth:`kill`, or this program's end:
    when the program holding it dies (even by SIGKILL), the command sees end of input.
    """

    def send(self, text: str) -> None:
        """Write ``text`` (UTF-8) to its stdin; :class:`~deployer.errors.ConnectionLost`
        if the channel (or the process's stdin) is gone."""
        ...

    def readline(self, timeout: float) -> str | None:
        """The next stdout line without its newline; ``None`` on timeout; ``""`` at EOF
        (an empty line also reads as ``""``: tell them apart with :attr:`alive`/:meth:`wait`)."""
        ...

    def close_stdin(self) -> None:
        """Send end of input."""
        ...

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit status; ``None`` if it is still running after ``timeout`` seconds."""
        ...

    def kill(self) -> None:
        """TERM, then KILL after a grace period, its whole process group on the host."""
        ...

    @property
    def alive(self) -> bool:
        """True while it runs."""
        ...


@runtime_checkable
class Host(Protocol):
    """A machine to run commands on and move files to and from."""

    name: str
    is_local: bool

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
        on_output: OutputCallback | None = None,
        check: bool = False,
    ) -> Result:
        """Run ``argv`` (no shell involved in its meaning) and wait for it to finish."""
        ...

    def start(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Process:
        """Start ``argv`` and return at once with a handle to talk to it (leases, supervisors)."""
        ...

    def stream(
        self,
        argv: Sequence[str],
        *,
        stdin: IO[bytes] | None = None,
        sink: Callable[[bytes], None] | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Run ``argv`` with ``stdin`` read from a file object as the command takes it, and
        its output handed to ``sink`` as it comes (not kept: the result's stdout is empty),
        for data too big to hold (an image on its way from one host to another)."""
        ...

    def attach(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        tty: bool = False,
        stdin: bool = True,
    ) -> int:
        """Run ``argv`` with this process's stdin, stdout and stderr as its own, streamed as
        they come (nothing is kept in memory), and return its exit status.

        ``tty``: on a pseudo-terminal, for an interactive program (``flask shell``): over SSH
        a PTY channel sized like the local terminal, which is put in raw mode meanwhile (Ctrl-C
        goes to the program). ``stdin`` False: the program reads nothing (``logs``). A signal
        deployer receives is passed on to the program; once it has ended,
        :class:`~deployer.interrupts.Interrupted` is raised.
        """
        ...

    def reconnect(self) -> None:
        """Open a fresh connection to the same machine after :class:`~deployer.errors.ConnectionLost`
        (nothing to do on this machine)."""
        ...

    def put(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        mode: int | None = None,
    ) -> None:
        """Copy a local file to ``remote_path`` on the host, streamed and atomically."""
        ...

    def get(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        """Copy ``remote_path`` on the host to a local file, streamed."""
        ...

    def read_text(self, path: str) -> str:
        """Return a UTF-8 text file's content; ``FileNotFoundError`` if it is missing."""
        ...

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        """Write a UTF-8 text file atomically (temporary name with ``mode``, fsync, rename,
        fsync of the directory)."""
        ...

    def forward(
        self, remote_host: str, remote_port: int
    ) -> AbstractContextManager[tuple[str, int]]:
        """Make ``remote_host:remote_port`` as seen from the host reachable from here."""
        ...

    def engine(self) -> Engine:
        """The host's Docker Engine API (see :mod:`deployer.hosts.dockerapi`); its calls
        raise ``EngineUnavailable`` where it cannot be reached, and callers use the CLI."""
        ...

    def close(self) -> None:
        """Release connections; the host is unusable afterwards."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...


def check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """Validate an argv (non-empty, all strings) and return it as a tuple."""
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a sequence of strings, not a single string")
    items = tuple(argv)
    if not items:
        raise ValueError("argv must not be empty")
    for item in items:
        if not isinstance(item, str):
            raise TypeError(
                f"argv items must be str, got {type(item).__name__}: {item!r}"
            )
    return items


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Validate environment variable names and values (names become shell words)."""
    result: dict[str, str] = {}
    for key, value in (env or {}).items():
        if not _ENV_NAME_RE.match(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
        if not isinstance(value, str):
            raise TypeError(
                f"environment variable {key} must be a str, got {type(value).__name__}"
            )
        result[key] = value
    return result


def remote_command(
    argv: Sequence[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None
) -> str:
    """The one place an argv becomes a shell command line (for a remote login shell).

    Every part is quoted with :func:`shlex.quote`; ``cwd`` and ``env`` become a
    ``cd DIR && exec env K=V ... ARGV`` prefix. ``exec`` makes the command replace the
    shell, so signals sent to the session reach the command itself.
    """
    words = check_argv(argv)
    variables = check_env(env)
    parts: list[str] = []
    if cwd is not None:
        parts += ["cd", "--", shlex.quote(cwd), "&&"]
    parts.append("exec")
    if variables:
        parts.append("env")
        parts += [shlex.quote(f"{key}={value}") for key, value in variables.items()]
    parts.append(shlex.join(words))
    return " ".join(parts)


class OutputCollector:
    """Collects stdout and stderr, and hands complete lines to a callback as they come.

    Bytes are decoded as UTF-8 (invalid bytes replaced) incrementally, so a character
    split across two reads is not mangled.
    """

    def __init__(self, on_output: OutputCallback | None) -> None:
        self._on_output = on_output
        self._decoders = [
            codecs.getincrementaldecoder("utf-8")("replace") for _ in range(2)
        ]
        self._chunks: list[list[str]] = [[], []]
        self._partial = ["", ""]

    def feed(self, stream: int, data: bytes, final: bool = False) -> None:
        """Add ``data`` read from stream 0 (stdout) or 1 (stderr)."""
        text = self._decoders[stream].decode(data, final)
        if text:
            self._chunks[stream].append(text)
        if self._on_output is None:
            return
        pending = self._partial[stream] + text
        *lines, rest = pending.split("\n")
        self._partial[stream] = rest
        for line in lines:
            self._on_output(line)
        if final and rest:
            self._partial[stream] = ""
            self._on_output(rest)

    def finish(self) -> tuple[str, str]:
        """Flush both streams and return (stdout, stderr)."""
        for stream in (0, 1):
            self.feed(stream, b"", final=True)
        return "".join(self._chunks[0]), "".join(self._chunks[1])


def timeout_error(
    argv: Sequence[str], timeout: float, host: str, output: str
) -> CommandError:
    """The error for a command killed because it ran longer than ``timeout`` seconds."""
    return CommandError(
        f"command timed out after {timeout:g} s on {host} and was killed: {shlex.join(argv)}",
        hint="raise the step's timeout if the command legitimately needs longer",
        output=output,
    )
