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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Self

from deployer.errors import CommandError
from deployer.hosts.base import OutputCallback, OutputCollector, Result, check_argv, check_env, timeout_error

# After SIGTERM on timeout, how long a command gets to exit before SIGKILL.
_KILL_GRACE_SECONDS = 2.0


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
