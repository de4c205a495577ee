"""This machine as a :class:`~deployer.hosts.base.Host`: commands run with :mod:`subprocess`."""

from __future__ import annotations

import contextlib
import os
import queue
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Self

from deployer import interrupts
from deployer.errors import CommandError, ConnectionLost
from deployer.hosts.base import (
    OutputCallback,
    OutputCollector,
    Result,
    check_argv,
    check_env,
    timeout_error,
)
from deployer.hosts.dockerapi import Engine, local_engine

# How often a waiting command looks for a signal deployer received.
_POLL = 0.05
# After SIGTERM on timeout, how long a command gets to exit before SIGKILL.
_KILL_GRACE_SECONDS = 2.0
_CHUNK = 1024 * 1024
_STDERR_TAIL_BYTES = 16 * 1024


class LocalHost:
    """This machine: commands run with :mod:`subprocess`, never through a shell."""

    is_local = True

    def __init__(self, name: str = "local") -> None:
        self.name = name
        self._engine: Engine | None = None

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
                interrupts.check()  # a signal is raised here, at a safe point (see deployer.interrupts)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise _Timeout
                try:
                    index, data = events.get(timeout=_POLL if remaining is None else min(remaining, _POLL))
                except queue.Empty:
                    continue
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

    def stream(
        self,
        argv: Sequence[str],
        *,
        stdin: IO[bytes] | None = None,
        sink: Callable[[bytes], None] | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Run ``argv`` with ``stdin`` copied in from a thread and the output handed to
        ``sink`` as it comes; see :class:`~deployer.hosts.base.Host`."""
        words = check_argv(argv)
        started = time.monotonic()
        try:
            process = subprocess.Popen(words, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise CommandError(f"cannot run {shlex.join(words)}: {exc.strerror or exc}") from exc
        errors = bytearray()
        failure: list[BaseException] = []

        def feed() -> None:
            assert process.stdin is not None and stdin is not None
            try:
                while chunk := stdin.read(_CHUNK):
                    process.stdin.write(chunk)
            except (BrokenPipeError, OSError):
                pass  # the command stopped reading: its exit status says why
            except Exception as exc:  # noqa: BLE001 - a read error of the source, re-raised below
                failure.append(exc)
            finally:
                with contextlib.suppress(OSError):
                    process.stdin.close()

        def drain_errors() -> None:
            assert process.stderr is not None
            while chunk := process.stderr.read(65536):
                if len(errors) < _STDERR_TAIL_BYTES:
                    errors.extend(chunk)

        helpers = [threading.Thread(target=drain_errors, daemon=True)]
        if stdin is not None:
            helpers.append(threading.Thread(target=feed, daemon=True))
        for helper in helpers:
            helper.start()
        deadline = None if timeout is None else started + timeout
        assert process.stdout is not None
        try:
            while chunk := process.stdout.read1(_CHUNK):  # type: ignore[attr-defined]
                if sink is not None:
                    sink(chunk)
                if deadline is not None and time.monotonic() > deadline:
                    raise _Timeout
                interrupts.check()
            returncode = process.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except (_Timeout, subprocess.TimeoutExpired):
            _kill_group(process)
            assert timeout is not None
            raise timeout_error(words, timeout, self.name, errors.decode("utf-8", "replace")) from None
        except BaseException:
            _kill_group(process)
            raise
        finally:
            for helper in helpers:
                helper.join(timeout=5.0)
        if failure:
            raise failure[0]
        exit_code = 128 - returncode if returncode < 0 else returncode
        return Result(words, exit_code, "", errors.decode("utf-8", "replace"), time.monotonic() - started)

    def start(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LocalProcess:
        """Start ``argv`` in its own session and return at once; see :class:`Process`.

        Its stdin is a pipe from this process: when this process dies, even by SIGKILL,
        the command sees end of input.
        """
        words = check_argv(argv)
        variables = check_env(env)
        if cwd is not None and not os.path.isdir(cwd):
            raise CommandError(
                f"cannot start {shlex.join(words)}: working directory {cwd} does not exist",
                hint="check the path in deploy.toml",
            )
        try:
            process = subprocess.Popen(
                words,
                cwd=cwd,
                env={**os.environ, **variables},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise CommandError(
                f"cannot start {shlex.join(words)}: {words[0]} was not found on this machine",
                hint=f"install {words[0]} or put it on PATH",
                exit_status=127,
            ) from exc
        except OSError as exc:
            raise CommandError(
                f"cannot start {shlex.join(words)}: {exc.strerror or exc}"
            ) from exc
        return LocalProcess(words, process, self.name)

    def attach(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        tty: bool = False,
        stdin: bool = True,
    ) -> int:
        """Run ``argv`` on this terminal (its stdin, stdout and stderr); see :class:`Host`.

        It stays in deployer's process group: the terminal's Ctrl-C reaches it directly (and a
        program that owns the terminal, like ``docker compose run`` with a TTY, reads it as a
        key). Any other signal deployer receives is passed on to it.
        """
        words = check_argv(argv)
        variables = check_env(env)
        try:
            process = subprocess.Popen(words, cwd=cwd, env={**os.environ, **variables},
                                       stdin=None if stdin else subprocess.DEVNULL)
        except OSError as exc:
            raise CommandError(f"cannot run {shlex.join(words)}: {exc.strerror or exc}",
                               exit_status=127 if isinstance(exc, FileNotFoundError) else 126) from exc
        signalled: int | None = None
        since = 0.0
        while True:
            try:
                returncode = process.wait(timeout=_POLL)
                break
            except subprocess.TimeoutExpired:
                pass
            signum = interrupts.take()
            if signum is not None:
                signalled, since = signalled or signum, time.monotonic()
                if signum != signal.SIGINT:
                    process.send_signal(signum)
            elif signalled == signal.SIGINT and since and time.monotonic() - since > 1.0:
                process.send_signal(signal.SIGINT)  # sent to deployer alone (kill -INT), not from the terminal
                since = 0.0
        if signalled is not None:
            raise interrupts.Interrupted(signalled)
        return _exit_code(returncode)

    def reconnect(self) -> None:
        """Nothing to reconnect on this machine."""

    def put(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        mode: int | None = None,
    ) -> None:
        """Copy a file, streamed, atomically (temporary name in the target folder, rename)."""
        with open(local_path, "rb") as source:
            self._atomic_write(remote_path, lambda handle: shutil.copyfileobj(source, handle, _CHUNK), mode)

    def get(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        """Copy a file."""
        shutil.copyfile(remote_path, local_path)

    def read_text(self, path: str) -> str:
        """Return a UTF-8 text file's content."""
        return Path(path).read_text(encoding="utf-8")

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        """Write a UTF-8 text file atomically, with ``mode`` set before it appears."""
        data = text.encode("utf-8")
        self._atomic_write(path, lambda handle: handle.write(data), mode)

    @staticmethod
    def _atomic_write(
        path: str, fill: Callable[[IO[bytes]], object], mode: int | None
    ) -> None:
        """Temporary file beside ``path`` with the mode set, filled, fsynced, renamed over
        ``path``; then the directory is fsynced, so the rename survives a power cut."""
        target = Path(path)
        fd, temp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
        )
        try:
            if mode is not None:
                os.chmod(temp_name, mode)
            elif target.exists():
                # Replacing a file keeps its permissions, as an in-place edit would.
                os.chmod(temp_name, target.stat().st_mode & 0o7777)
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(temp_name, 0o666 & ~umask)
            with os.fdopen(fd, "wb") as handle:
                fill(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @contextlib.contextmanager
    def forward(self, remote_host: str, remote_port: int) -> Iterator[tuple[str, int]]:
        """The address is already reachable from this machine: yield it unchanged."""
        yield (remote_host, remote_port)

    def engine(self) -> Engine:
        """This machine's engine socket (connected on first use)."""
        if self._engine is None:
            self._engine = local_engine()
        return self._engine

    def close(self) -> None:
        """Close the engine socket, if one was opened."""
        if self._engine is not None:
            self._engine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LocalProcess:
    """A command started with :meth:`LocalHost.start`: a :class:`~deployer.hosts.base.Process`.

    Reader threads take stdout apart into lines and keep the tail of stderr, so the
    command never blocks on a full pipe even if nobody reads.
    """

    def __init__(
        self, argv: tuple[str, ...], process: subprocess.Popen[bytes], host: str
    ) -> None:
        self.argv = argv
        self._process = process
        self._host = host
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._eof = False
        self._stderr = bytearray()
        self._send_lock = threading.Lock()
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_lines, args=(process.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(process.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def __repr__(self) -> str:
        return f"LocalProcess({shlex.join(self.argv)!r}, pid={self.pid})"

    @property
    def pid(self) -> int:
        """The command's process id (it leads its own process group)."""
        return self._process.pid

    def _read_lines(self, pipe: IO[bytes]) -> None:
        try:
            for raw in pipe:
                line = raw.decode("utf-8", "replace")
                self._lines.put(line.removesuffix("\n"))
        finally:
            pipe.close()
            self._lines.put(None)

    def _read_stderr(self, pipe: IO[bytes]) -> None:
        try:
            while chunk := pipe.read1(65536):  # type: ignore[attr-defined]
                self._stderr.extend(chunk)
                del self._stderr[: max(len(self._stderr) - _STDERR_TAIL_BYTES, 0)]
        finally:
            pipe.close()

    @property
    def alive(self) -> bool:
        """True until the command has exited."""
        return self._process.poll() is None

    @property
    def stderr(self) -> str:
        """The last 16 KiB the command wrote to stderr."""
        return bytes(self._stderr).decode("utf-8", "replace")

    def send(self, text: str) -> None:
        """Write ``text`` to the command's stdin; :class:`ConnectionLost` if that is closed."""
        stdin = self._process.stdin
        assert stdin is not None
        with self._send_lock:
            try:
                stdin.write(text.encode("utf-8"))
                stdin.flush()
            except (BrokenPipeError, ValueError, OSError) as exc:
                status = self._process.poll()
                why = (
                    f"exited with status {_exit_code(status)}"
                    if status is not None
                    else "has its stdin closed"
                )
                raise ConnectionLost(
                    f"{shlex.join(self.argv)} on {self._host} {why}: it cannot read any more input"
                ) from exc

    def readline(self, timeout: float) -> str | None:
        """The next stdout line without its newline; ``None`` on timeout; ``""`` at EOF."""
        if self._eof:
            return ""
        try:
            line = self._lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if line is None:
            self._eof = True
            return ""
        return line

    def close_stdin(self) -> None:
        """Send end of input to the command."""
        with self._send_lock, contextlib.suppress(OSError, ValueError):
            assert self._process.stdin is not None
            self._process.stdin.close()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status (128 + N if killed by signal N); ``None`` if still running."""
        try:
            status = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return _exit_code(status)

    def kill(self) -> None:
        """TERM, then KILL after a grace period, the command's process group."""
        if self._process.poll() is None:
            _kill_group(self._process)
        self.close_stdin()
        for reader in self._readers:
            reader.join(timeout=1.0)


def _exit_code(returncode: int) -> int:
    # Like a shell: a command killed by signal N reports 128 + N.
    return 128 - returncode if returncode < 0 else returncode


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
