"""Where commands run: this machine (:class:`LocalHost`) or a server over SSH (``SSHHost``).

Everything above this module builds commands as argv lists (``list[str]``). They are
turned into something a shell reads exactly once, here (:func:`remote_command`), so no
caller ever formats user text into a shell string.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, Self, runtime_checkable

from deployer.errors import CommandError

if TYPE_CHECKING:
    from deployer.hostspec import HostSpec

OutputCallback = Callable[[str], None]

# How many trailing lines of a failed command's output go into the error message.
_TAIL_LINES = 20
# After SIGTERM on timeout, how long a command gets to exit before SIGKILL.
_KILL_GRACE_SECONDS = 2.0
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

    def put(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        mode: int | None = None,
    ) -> None:
        """Copy a local file to ``remote_path`` on the host."""
        ...

    def get(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        """Copy ``remote_path`` on the host to a local file."""
        ...

    def read_text(self, path: str) -> str:
        """Return a UTF-8 text file's content; ``FileNotFoundError`` if it is missing."""
        ...

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        """Write a UTF-8 text file atomically (temporary name, then rename)."""
        ...

    def forward(
        self, remote_host: str, remote_port: int
    ) -> AbstractContextManager[tuple[str, int]]:
        """Make ``remote_host:remote_port`` as seen from the host reachable from here."""
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


class LocalHost:
    """This machine: commands run with :mod:`subprocess`, never through a shell."""

    is_local = True

    def __init__(self, name: str = "local") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"LocalHost(name={self.name!r})"

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
        """Run ``argv`` in its own process group; see :class:`Host`."""
        words = check_argv(argv)
        variables = check_env(env)
        if cwd is not None and not os.path.isdir(cwd):
            raise CommandError(
                f"cannot run {shlex.join(words)}: working directory {cwd} does not exist",
                hint="check the path in deploy.toml",
            )
        started = time.monotonic()
        try:
            # A new session makes the command a process-group leader, so a timeout can
            # kill everything it started (docker compose spawns helpers).
            process = subprocess.Popen(
                words,
                cwd=cwd,
                env={**os.environ, **variables},
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise CommandError(
                f"cannot run {shlex.join(words)}: {words[0]} was not found on this machine",
                hint=f"install {words[0]} or put it on PATH",
                exit_status=127,
            ) from exc
        except PermissionError as exc:
            raise CommandError(
                f"cannot run {shlex.join(words)}: permission denied executing {words[0]}",
                hint="check the file's execute permission",
                exit_status=126,
            ) from exc
        except OSError as exc:
            raise CommandError(
                f"cannot run {shlex.join(words)}: {exc.strerror or exc}"
            ) from exc

        collector = OutputCollector(on_output)
        events: queue.Queue[tuple[int, bytes | None]] = queue.Queue()
        assert process.stdout is not None and process.stderr is not None
        readers = [
            threading.Thread(target=_pump_pipe, args=(pipe, index, events), daemon=True)
            for index, pipe in enumerate((process.stdout, process.stderr))
        ]
        for reader in readers:
            reader.start()
        if stdin is not None:
            assert process.stdin is not None
            threading.Thread(
                target=_feed_stdin, args=(process.stdin, stdin), daemon=True
            ).start()

        deadline = started + timeout if timeout is not None else None
        open_streams = 2
        try:
            while open_streams:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise _Timeout
                try:
                    index, data = events.get(timeout=remaining)
                except queue.Empty:
                    raise _Timeout from None
                if data is None:
                    open_streams -= 1
                else:
                    collector.feed(index, data)
            remaining = (
                None if deadline is None else max(deadline - time.monotonic(), 0.0)
            )
            try:
                returncode = process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                raise _Timeout from None
        except _Timeout:
            _kill_group(process)
            stdout, stderr = collector.finish()
            assert timeout is not None
            raise timeout_error(words, timeout, self.name, stderr or stdout) from None
        except BaseException:
            # The callback raised, or Ctrl-C: never leave the command running behind us.
            _kill_group(process)
            raise
        finally:
            for reader in readers:
                reader.join(timeout=1.0)
        stdout, stderr = collector.finish()
        # Like a shell: a command killed by signal N reports 128 + N.
        exit_code = 128 - returncode if returncode < 0 else returncode
        result = Result(words, exit_code, stdout, stderr, time.monotonic() - started)
        return result.check() if check else result

    def put(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        mode: int | None = None,
    ) -> None:
        """Copy a file (atomically: temporary name in the target folder, then rename)."""
        with open(local_path, "rb") as source:
            self._atomic_write(remote_path, source.read(), mode)

    def get(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        """Copy a file."""
        shutil.copyfile(remote_path, local_path)

    def read_text(self, path: str) -> str:
        """Return a UTF-8 text file's content."""
        return Path(path).read_text(encoding="utf-8")

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        """Write a UTF-8 text file atomically, with ``mode`` set before it appears."""
        self._atomic_write(path, text.encode("utf-8"), mode)

    @staticmethod
    def _atomic_write(path: str, data: bytes, mode: int | None) -> None:
        target = Path(path)
        fd, temp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
        )
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if mode is not None:
                os.chmod(temp_name, mode)
            elif target.exists():
                # Replacing a file keeps its permissions, as an in-place edit would.
                os.chmod(temp_name, target.stat().st_mode & 0o7777)
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(temp_name, 0o666 & ~umask)
            os.replace(temp_name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise

    @contextlib.contextmanager
    def forward(self, remote_host: str, remote_port: int) -> Iterator[tuple[str, int]]:
        """The address is already reachable from this machine: yield it unchanged."""
        yield (remote_host, remote_port)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Timeout(Exception):
    """Internal: the command's deadline passed."""


def _pump_pipe(
    pipe: IO[bytes], index: int, events: queue.Queue[tuple[int, bytes | None]]
) -> None:
    # read1 returns what is available now (up to the size), so output streams promptly.
    try:
        while chunk := pipe.read1(65536):  # type: ignore[attr-defined]
            events.put((index, chunk))
    finally:
        pipe.close()
        events.put((index, None))


def _feed_stdin(pipe: IO[bytes], data: bytes) -> None:
    # The command may exit without reading all of its input; that is its business.
    with contextlib.suppress(BrokenPipeError, OSError):
        pipe.write(data)
    with contextlib.suppress(BrokenPipeError, OSError):
        pipe.close()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's process group, then SIGKILL what is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, _KILL_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            # The leader is gone; still SIGKILL the group in case children ignored TERM.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def connect(
    spec: HostSpec,
    *,
    ssh_config_path: str | os.PathLike[str] | None = None,
    known_hosts_path: str | os.PathLike[str] | None = None,
    connect_timeout: float | None = None,
) -> Host:
    """Open the host a :class:`~deployer.hostspec.HostSpec` names.

    ``local`` gives a :class:`LocalHost`; anything else an SSH connection that honours
    ``~/.ssh/config`` (or ``ssh_config_path``) and verifies the server's host key against
    ``~/.ssh/known_hosts`` (or ``known_hosts_path``). ``connect_timeout`` defaults to the
    config's ``ConnectTimeout``, else 10 seconds. Raises :class:`~deployer.errors.HostError`.
    """
    if spec.is_local:
        return LocalHost()
    # Imported here: paramiko is only loaded when a remote host is actually used.
    from deployer.ssh import SSHHost, resolve_target

    target = resolve_target(
        spec,
        ssh_config_path=ssh_config_path,
        known_hosts_path=known_hosts_path,
        connect_timeout=connect_timeout,
    )
    return SSHHost(target)
