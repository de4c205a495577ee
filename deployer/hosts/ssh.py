"""A server reached over SSH (paramiko): commands, files, long-lived processes and tunnels.

One SSH connection per :class:`SSHHost`, shared by every command: each ``run()`` opens
its own channel, so several commands may run at once from different threads.

* ``~/.ssh/config`` is read as ``ssh`` reads it (:mod:`deployer.hosts.sshconfig`):
  HostName, User, Port, IdentityFile, ConnectTimeout, UserKnownHostsFile, ProxyJump
  (any number of hops, each verified against its own known hosts), ProxyCommand,
  ServerAliveInterval/CountMax...; what cannot be honoured is refused.
* Files move through plain command channels (:mod:`deployer.hosts.scripts`): servers with
  the SFTP subsystem disabled work, and nothing is held in memory whole.
* A connection that breaks raises :class:`~deployer.errors.ConnectionLost`; keepalives with
  a reply deadline notice a dead or hung server in seconds, not TCP's hours;
  :meth:`SSHHost.reconnect` opens a new connection to the same target.
* paramiko logs nothing to the user unless :func:`library_logging` (``--verbose``) turns it on
  (:mod:`deployer.hosts.liblog`).
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import io
import os
import queue
import select
import shlex
import shutil
import signal as signal_module
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Self

import paramiko

from deployer import interrupts
from deployer.errors import (
    CommandError,
    ConnectionLost,
    HostError,
)
from deployer.hosts import scripts
from deployer.hosts.base import (
    OutputCallback,
    OutputCollector,
    Result,
    check_argv,
    remote_command,
    timeout_error,
)
from deployer.hosts.dockerapi import DIAL_STDIO, Engine, stream_engine
from deployer.hosts.liblog import library_logging
from deployer.hosts.sshconnect import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SERVER_ALIVE_COUNT_MAX,
    DEFAULT_SERVER_ALIVE_INTERVAL,
    MAX_PACKET_SIZE,
    WINDOW_SIZE,
    Connection,
    SSHTarget,
    fingerprint,
    resolve_target,
)
from deployer.hosts.sshshell import LOOP, STDIN_LIMIT, CommandShell, ShellGone, wait_for_output, wait_until

# OpenSSH allows 10 sessions per connection by default (MaxSessions); two stay free so
# that a command can always be signalled over a channel of its own.
_MAX_CONCURRENT_COMMANDS = 8
# A channel the server refused (its session limit) is asked for again after these pauses.
_REFUSED_CHANNEL_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.8)
# Command shells kept open between commands (each holds a session slot while idle).
_IDLE_SHELLS = 2
# After asking the server to SIGTERM a timed-out command, how long before SIGKILL.
_KILL_GRACE_SECONDS = 2.0
_POLL_SECONDS = 0.2
# A command's exit status does not make its channel readable: without data to wake it, the
# output loop polls this often, which is what finishing a command costs at most.
_EXIT_POLL_SECONDS = 0.02
# How long a channel that ended without an exit status is watched for the transport dying
# too (a lost connection) before it counts as a command killed by a signal.
_LOST_GRACE_SECONDS = 0.5
_CHUNK = 256 * 1024
_STDERR_TAIL_BYTES = 16 * 1024


# -- the host ----------------------------------------------------------------------------


class SSHHost:
    """A remote machine over one SSH connection; see :class:`deployer.hosts.Host`."""

    is_local = False

    def __init__(self, target: SSHTarget) -> None:
        """Connect and authenticate; raises :class:`HostError` / :class:`HostKeyError`."""
        self.target = target
        self.name = target.name
        self._connection = Connection.open(target)
        self._connection_lock = threading.Lock()
        self._sessions = threading.BoundedSemaphore(_MAX_CONCURRENT_COMMANDS)
        self._engine: Engine | None = None
        self._shells_lock = threading.Lock()
        self._idle_shells: list[CommandShell] = []
        self._shells_refused: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SSHHost({self.target.label})"

    @property
    def _transport(self) -> paramiko.Transport:
        return self._connection.transport

    # -- the connection ---------------------------------------------------------------

    def reconnect(self) -> None:
        """Open a fresh connection to the same target (through the same hops).

        Commands still running on the old connection fail with :class:`ConnectionLost`;
        the next commands use the new one. Raises :class:`HostError` if the server cannot
        be reached now (the host stays usable for another attempt).
        """
        if self._closed:
            raise HostError(f"the connection to {self.target.label} was already closed")
        fresh = Connection.open(self.target)
        with self._connection_lock:
            old, self._connection = self._connection, fresh
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
        self._drop_idle_shells()
        old.close()

    def _lost(self, exc: BaseException | None = None, connection: Connection | None = None) -> ConnectionLost:
        connection = connection or self._connection
        reason = connection.lost_reason()
        if reason is None:
            detail = f"{exc}" if exc is not None and str(exc) else "the connection was closed"
            reason = detail
        return ConnectionLost(
            f"lost the SSH connection to {self.target.label}: {reason}",
            hint="check the network and the server, then run the command again",
        )

    def _open_session(self) -> tuple[paramiko.Channel, Connection]:
        if self._closed:
            raise HostError(f"the connection to {self.target.label} was already closed")
        connection = self._connection
        if not connection.is_active():
            raise self._lost(connection=connection)
        for delay in (*_REFUSED_CHANNEL_RETRIES, None):
            try:
                channel = connection.transport.open_session(
                    window_size=WINDOW_SIZE,
                    max_packet_size=MAX_PACKET_SIZE,
                    timeout=self.target.connect_timeout,
                )
                return channel, connection
            except paramiko.ChannelException as exc:
                # sshd counts a session until it has processed its close, which it does
                # after we released our slot: a refusal right after a command ended is
                # asked again, briefly, before it counts as the server's limit.
                if delay is None or not connection.is_active():
                    error: BaseException = exc
                    break
                time.sleep(delay)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                error = exc
                break
        if connection.is_active():
            raise HostError(
                f"{self.target.label} refused to open a command channel: {error}",
                hint="the server's sshd may limit sessions per connection (MaxSessions)",
            ) from error
        raise self._lost(error, connection) from error

    def _ended_by_lost_connection(
        self, channel: paramiko.Channel, connection: Connection
    ) -> bool:
        """True if a channel that ended without an exit status did so because the
        connection died (not because the command was killed by a signal)."""
        if channel.exit_status != -1:
            return False
        if not connection.is_active():
            return True
        # paramiko closes the channels of a dying transport just before it marks itself
        # inactive: give that a moment to become visible.
        end = time.monotonic() + _LOST_GRACE_SECONDS
        while time.monotonic() < end:
            if not connection.is_active():
                return True
            time.sleep(0.02)
        return False

    # -- commands ---------------------------------------------------------------------

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
        """Run ``argv`` on the server (quoted once, here) and wait for it.

        The command line is run by the login shell, which must be POSIX (sh, bash, dash,
        zsh). The exit code is -1 if the server reported no status (the command died from
        a signal). On timeout the command's process group is killed (TERM, then KILL), the
        channel closed, and :class:`CommandError` raised. A connection that breaks while
        the command runs raises :class:`ConnectionLost`.
        """
        words = check_argv(argv)
        collector = OutputCollector(on_output)
        started = time.monotonic()
        exit_code, timed_out = self._execute(
            words,
            cwd=cwd,
            env=env,
            timeout=timeout,
            stdin=None if stdin is None else io.BytesIO(stdin),
            stdin_size=None if stdin is None else len(stdin),
            on_stdout=lambda data: collector.feed(0, data),
            on_stderr=lambda data: collector.feed(1, data),
        )
        stdout, stderr = collector.finish()
        if timed_out:
            assert timeout is not None
            raise timeout_error(words, timeout, self.target.label, stderr or stdout)
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
        """Run ``argv`` in a session of its own, ``stdin`` streamed in from a thread and the
        output handed to ``sink`` as it arrives; see :class:`~deployer.hosts.base.Host`."""
        words = check_argv(argv)
        errors = bytearray()

        def keep_stderr(data: bytes) -> None:
            if len(errors) < _STDERR_TAIL_BYTES:
                errors.extend(data)

        started = time.monotonic()
        exit_code, timed_out = self._execute(
            words, cwd=None, env=None, timeout=timeout, stdin=stdin if stdin is not None else io.BytesIO(b""),
            stdin_size=None, on_stdout=sink or (lambda data: None), on_stderr=keep_stderr,
        )
        stderr = errors.decode("utf-8", "replace")
        if timed_out:
            assert timeout is not None
            raise timeout_error(words, timeout, self.target.label, stderr)
        return Result(words, exit_code, "", stderr, time.monotonic() - started)

    def _execute(
        self,
        words: tuple[str, ...],
        *,
        cwd: str | None,
        env: Mapping[str, str] | None,
        timeout: float | None,
        stdin: IO[bytes] | None,
        stdin_size: int | None,
        on_stdout: Callable[[bytes], None],
        on_stderr: Callable[[bytes], None],
    ) -> tuple[int, bool]:
        """Run a command, streaming stdin from a file object and output to callbacks.

        Returns ``(exit_code, timed_out)``; raises :class:`ConnectionLost`. Without stdin,
        or with a small one of known size, it runs in a command shell
        (:mod:`deployer.hosts.sshshell`) when one can be had.
        """
        if stdin is None or (stdin_size is not None and stdin_size <= STDIN_LIMIT):
            shell = self._take_shell()
            if shell is not None:
                data = None if stdin is None else stdin.read()
                return self._execute_in_shell(
                    shell, remote_command(words, cwd=cwd, env=env), data, timeout, on_stdout, on_stderr
                )
        report = _PidReport(f"deployer-pid-{uuid.uuid4().hex[:16]}:")
        # The prefix is a constant plus a hex token: nothing from the caller is formatted in.
        command = f"echo {report.token}$$ >&2; " + remote_command(words, cwd=cwd, env=env)
        deadline = time.monotonic() + timeout if timeout is not None else None
        timed_out = False
        exit_code = -1
        with self._sessions:
            channel, connection = self._open_session()
            feeder: _StdinFeeder | None = None
            try:
                channel.exec_command(command)
                if stdin is None:
                    channel.shutdown_write()
                else:
                    feeder = _StdinFeeder(channel, stdin, stdin_size)
                if self._pump(channel, on_stdout, on_stderr, report, deadline):
                    if self._ended_by_lost_connection(channel, connection):
                        raise self._lost(connection=connection)
                    exit_code = channel.recv_exit_status()
                else:
                    timed_out = True
                    self._stop(channel, report.pid)
                if feeder is not None and feeder.error is not None:
                    raise feeder.error
            except ConnectionLost:
                raise
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if connection.is_active() and not channel.closed:
                    raise HostError(f"SSH error on {self.target.label}: {exc}") from exc
                raise self._lost(exc, connection) from exc
            except BaseException:
                # Ctrl-C or a failing callback: do not leave the command running.
                if not timed_out:
                    with contextlib.suppress(Exception):
                        self._stop(channel, report.pid, grace=0.5)
                raise
            finally:
                channel.close()
        tail = report.flush()
        if tail:
            on_stderr(tail)
        return exit_code, timed_out

    # -- command shells -----------------------------------------------------------------

    def _take_slot(self) -> None:
        """One of the connection's session slots; an idle command shell gives its own back
        rather than have a long-lived process or stream wait for one."""
        if self._sessions.acquire(blocking=False):
            return
        with self._shells_lock:
            spare = self._idle_shells.pop() if self._idle_shells else None
        if spare is not None:
            self._discard_shell(spare)
        self._sessions.acquire()

    def _take_shell(self) -> CommandShell | None:
        """An idle command shell, or a new one; ``None`` where none can be started (the
        command then gets a session of its own, as do all later ones)."""
        with self._shells_lock:
            while self._idle_shells:
                shell = self._idle_shells.pop()
                if shell.channel.active and not shell.channel.eof_received:
                    return shell
                self._discard_shell(shell)
            if self._shells_refused is not None:
                return None
            connection = self._connection
        self._take_slot()
        channel: paramiko.Channel | None = None
        try:
            channel, _ = self._open_session()
            token = f"deployer-shell-{uuid.uuid4().hex}"
            command = remote_command(["sh", "-c", LOOP, "sh", token])
            shell = CommandShell.start(channel, command, token, self.target.connect_timeout)
        except ShellGone as exc:
            if channel is not None:
                channel.close()
            self._sessions.release()
            if not connection.is_active():
                raise self._lost(connection=connection) from exc
            self._shells_refused = str(exc)
            return None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if channel is not None:
                channel.close()
            self._sessions.release()
            raise self._lost(exc, connection) from exc
        except BaseException:
            if channel is not None:
                channel.close()
            self._sessions.release()
            raise
        shell.connection = connection
        return shell

    def _keep_shell(self, shell: CommandShell) -> None:
        with self._shells_lock:
            if (
                not self._closed
                and shell.connection is self._connection
                and len(self._idle_shells) < _IDLE_SHELLS
            ):
                self._idle_shells.append(shell)
                return
        self._discard_shell(shell)

    def _discard_shell(self, shell: CommandShell) -> None:
        shell.close()
        self._sessions.release()

    def _execute_in_shell(
        self,
        shell: CommandShell,
        command: str,
        stdin: bytes | None,
        timeout: float | None,
        on_stdout: Callable[[bytes], None],
        on_stderr: Callable[[bytes], None],
    ) -> tuple[int, bool]:
        connection = shell.connection
        assert connection is not None
        deadline = time.monotonic() + timeout if timeout is not None else None
        reusable = False
        try:
            try:
                status = shell.run(command, stdin, on_stdout, on_stderr, deadline, _EXIT_POLL_SECONDS)
            except ShellGone as exc:
                if self._ended_by_lost_connection(shell.channel, connection):
                    raise self._lost(connection=connection) from exc
                return -1, False  # the shell (and its command) was killed on the server
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if connection.is_active() and not shell.channel.closed:
                    raise HostError(f"SSH error on {self.target.label}: {exc}") from exc
                raise self._lost(exc, connection) from exc
            except BaseException:
                # Ctrl-C or a failing callback: do not leave the command running.
                with contextlib.suppress(Exception):
                    self._stop(shell.channel, shell.pid, grace=0.5)
                raise
            if status is None:
                self._stop(shell.channel, shell.pid)
                return -1, True
            reusable = True
            return status, False
        finally:
            if reusable:
                self._keep_shell(shell)
            else:
                self._discard_shell(shell)

    def _stop(
        self,
        channel: paramiko.Channel,
        pid: int | None,
        grace: float = _KILL_GRACE_SECONDS,
    ) -> None:
        """Kill a running command's process group (TERM, then KILL after ``grace``).

        Closing the channel alone would leave the command running on the server, and the
        SSH "signal" request is refused by sshd for root sessions, so the group is
        signalled with kill(1) over a second channel.
        """
        if pid is not None and not channel.exit_status_ready():
            self._signal_group(pid, "TERM")
            end = time.monotonic() + grace
            while (
                time.monotonic() < end
                and not channel.exit_status_ready()
                and not channel.closed
            ):
                channel.status_event.wait(0.05)
            if not channel.exit_status_ready() and not channel.closed:
                self._signal_group(pid, "KILL")
        channel.close()

    def _signal_group(self, pid: int, signal_name: str) -> None:
        # Bypasses the session limit on purpose: stopping a command must not wait for a slot.
        channel = self._transport.open_session(timeout=self.target.connect_timeout)
        try:
            channel.exec_command(
                remote_command(["kill", "-s", signal_name, "--", f"-{pid}"])
            )
            channel.shutdown_write()
            channel.status_event.wait(self.target.connect_timeout)
        finally:
            channel.close()

    @staticmethod
    def _pump(
        channel: paramiko.Channel,
        on_stdout: Callable[[bytes], None],
        on_stderr: Callable[[bytes], None],
        report: _PidReport,
        deadline: float | None,
    ) -> bool:
        """Read output until the command is done (True) or the deadline passes (False).

        A signal deployer received (Ctrl-C, SIGTERM) is raised here, between two reads: the
        caller then stops the remote command, and no paramiko call is cut in half.
        """
        while True:
            interrupts.check()
            while channel.recv_ready():
                on_stdout(channel.recv(_CHUNK))
            while channel.recv_stderr_ready():
                data = report.filter(channel.recv_stderr(_CHUNK))
                if data:
                    on_stderr(data)
            finished = channel.closed or (
                channel.eof_received and channel.exit_status_ready()
            )
            if (
                finished
                and not channel.recv_ready()
                and not channel.recv_stderr_ready()
            ):
                return True
            if not wait_until(channel, _EXIT_POLL_SECONDS, deadline):
                return False

    # -- long-lived processes ---------------------------------------------------------

    def start(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SSHProcess:
        """Start ``argv`` on the server and return at once; see :class:`~deployer.hosts.base.Process`.

        The process keeps a command channel (one of the connection's session slots) until
        it ends. If this program dies, the SSH connection closes and the process sees end
        of input on its stdin.
        """
        words = check_argv(argv)
        report = _PidReport(f"deployer-pid-{uuid.uuid4().hex[:16]}:")
        command = f"echo {report.token}$$ >&2; " + remote_command(words, cwd=cwd, env=env)
        self._take_slot()
        try:
            channel, connection = self._open_session()
            try:
                channel.exec_command(command)
            except BaseException:
                channel.close()
                raise
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self._sessions.release()
            raise self._lost(exc) from exc
        except BaseException:
            self._sessions.release()
            raise
        return SSHProcess(self, words, channel, connection, report, self._sessions.release)

    # -- a command on the user's terminal ------------------------------------------------

    def attach(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        tty: bool = False,
        stdin: bool = True,
    ) -> int:
        """Run ``argv`` on the server with this process's stdin, stdout and stderr; see
        :class:`~deployer.hosts.base.Host`. With ``tty`` the channel gets a PTY the size of the
        local terminal (resized with it) and the local terminal is in raw mode meanwhile: keys,
        Ctrl-C included, go to the program. Without, a signal deployer receives is sent to the
        command's process group on the server, which then ends as it chooses."""
        words = check_argv(argv)
        report = None if tty else _PidReport(f"deployer-pid-{uuid.uuid4().hex[:16]}:")
        command = remote_command(words, cwd=cwd, env=env)
        if report is not None:  # the prefix is a constant plus a hex token, as in _execute
            command = f"echo {report.token}$$ >&2; " + command
        self._take_slot()
        try:
            channel, connection = self._open_session()
            try:
                if tty:
                    size = shutil.get_terminal_size()
                    channel.get_pty(term=os.environ.get("TERM") or "xterm", width=size.columns, height=size.lines)
                channel.exec_command(command)
                signalled = _Attached(self, channel, report, tty=tty, stdin=stdin).pump()
                if self._ended_by_lost_connection(channel, connection) and signalled is None:
                    raise self._lost(connection=connection)
                status = channel.exit_status if channel.exit_status_ready() else -1
            except ConnectionLost:
                raise
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise self._lost(exc, connection) from exc
            finally:
                channel.close()
        finally:
            self._sessions.release()
        if signalled is not None:
            raise interrupts.Interrupted(signalled)
        return status

    # -- files --------------------------------------------------------------------------

    def _file_command(
        self,
        argv: list[str],
        path: str,
        *,
        stdin: IO[bytes] | None = None,
        stdin_size: int | None = None,
        sink: Callable[[bytes], None] | None = None,
    ) -> None:
        """Run one of the file scripts; map its refusals to the usual OSError types."""
        errors = bytearray()

        def keep_stderr(data: bytes) -> None:
            if len(errors) < _STDERR_TAIL_BYTES:
                errors.extend(data)

        exit_code, _ = self._execute(
            tuple(argv),
            cwd=None,
            env=None,
            timeout=None,
            stdin=stdin,
            stdin_size=stdin_size,
            on_stdout=sink or (lambda data: None),
            on_stderr=keep_stderr,
        )
        if exit_code == 0:
            return
        message = errors.decode("utf-8", "replace").strip() or f"exit status {exit_code}"
        if exit_code == scripts.MISSING:
            raise FileNotFoundError(errno.ENOENT, f"{message} on {self.target.label}", path)
        if exit_code == scripts.DENIED:
            raise PermissionError(errno.EACCES, f"{message} on {self.target.label}", path)
        if exit_code == scripts.IS_DIRECTORY:
            raise IsADirectoryError(errno.EISDIR, f"{message} on {self.target.label}", path)
        if exit_code == scripts.INCOMPLETE:
            raise ConnectionLost(
                f"the copy to {path} on {self.target.label} was cut short: {message}",
                hint="check the network and run the command again",
            )
        raise CommandError(
            f"file operation on {path} failed on {self.target.label}: {message}",
            hint="check the path, its directory's permissions and the free disk space",
            exit_status=exit_code,
            output=message,
        )

    def put(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        mode: int | None = None,
    ) -> None:
        """Upload a file atomically, streamed (temporary name next to it, fsync, rename)."""
        with open(local_path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            self._file_command(
                scripts.write_argv(remote_path, size, mode),
                remote_path,
                stdin=source,
                stdin_size=size,
            )

    def get(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        """Download a file, streamed; ``FileNotFoundError`` if it does not exist.

        The local file appears complete or not at all (written under a temporary name).
        """
        target = Path(local_path)
        fd, temp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".part", dir=target.parent
        )
        try:
            with os.fdopen(fd, "wb") as handle:

                def write(data: bytes) -> None:
                    try:
                        handle.write(data)
                    except OSError as exc:  # this disk, not the connection
                        raise _LocalWriteError(exc) from exc

                try:
                    self._file_command(scripts.read_argv(remote_path), remote_path, sink=write)
                except _LocalWriteError as exc:
                    raise exc.error from None
            os.replace(temp_name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise

    def read_text(self, path: str) -> str:
        """Return a UTF-8 text file's content; ``FileNotFoundError`` if it does not exist."""
        buffer = bytearray()
        self._file_command(scripts.read_argv(path), path, sink=buffer.extend)
        return buffer.decode("utf-8")

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        """Write a UTF-8 text file atomically, with ``mode`` set before it appears.

        A temporary file in the same directory gets the mode, the content and an fsync,
        is renamed over ``path``, and the directory is fsynced. Without ``mode`` a replaced
        file keeps its mode and a new one follows the umask.
        """
        data = text.encode("utf-8")
        self._file_command(
            scripts.write_argv(path, len(data), mode),
            path,
            stdin=io.BytesIO(data),
            stdin_size=len(data),
        )

    # -- tunnels ------------------------------------------------------------------------

    @contextlib.contextmanager
    def forward(self, remote_host: str, remote_port: int) -> Iterator[tuple[str, int]]:
        """Listen on 127.0.0.1 (a free port) and tunnel each connection to
        ``remote_host:remote_port`` as seen from the server; yields the local address."""
        if self._closed:
            raise HostError(f"the connection to {self.target.label} was already closed")
        tunnel = _Tunnel(
            self._transport, (remote_host, remote_port), self.target.connect_timeout
        )
        try:
            yield tunnel.address
        finally:
            tunnel.stop()

    # -- the engine API -------------------------------------------------------------------

    def engine(self) -> Engine:
        """The server's Docker Engine API over this connection (``docker system
        dial-stdio`` in one channel, opened on first use; a new one after reconnect)."""
        with self._connection_lock:
            if self._engine is None:
                self._engine = stream_engine(self._engine_stream, self.target.label)
            return self._engine

    def _engine_stream(self) -> _EngineChannel:
        # The stream holds one of the connection's session slots for as long as it lives.
        self._take_slot()
        try:
            channel, _ = self._open_session()
            channel.exec_command(remote_command(DIAL_STDIO))
        except BaseException:
            self._sessions.release()
            raise
        return _EngineChannel(channel, self._sessions.release)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the SSH connection and the hops in front of it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._engine is not None:
            self._engine.close()
        self._drop_idle_shells()
        self._connection.close()

    def _drop_idle_shells(self) -> None:
        with self._shells_lock:
            idle, self._idle_shells = self._idle_shells, []
        for shell in idle:
            self._discard_shell(shell)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _EngineChannel:
    """A channel running ``docker system dial-stdio``, as the socket http.client writes
    the engine's HTTP to; closing it gives its session slot back (once)."""

    def __init__(self, channel: paramiko.Channel, release: Callable[[], None]) -> None:
        self._channel = channel
        self._release: Callable[[], None] | None = release

    def sendall(self, data: bytes) -> None:
        self._channel.sendall(data)

    def makefile(self, mode: str) -> Any:
        return self._channel.makefile(mode)

    def settimeout(self, timeout: float | None) -> None:
        self._channel.settimeout(timeout)

    def close(self) -> None:
        self._channel.close()
        release, self._release = self._release, None
        if release is not None:
            release()


class _LocalWriteError(Exception):
    """Internal: writing a downloaded file on this machine failed (carries the OSError)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _StdinFeeder:
    """Streams a file object into a channel's stdin from a thread, then sends EOF.

    A thread, so a command that writes a lot before reading its input cannot deadlock
    against us while we are still sending. At most ``size`` bytes are sent.
    """

    def __init__(self, channel: paramiko.Channel, source: IO[bytes], size: int | None) -> None:
        self._channel = channel
        self._source = source
        self._size = size
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._feed, name="ssh-stdin", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        remaining = self._size
        try:
            while remaining is None or remaining > 0:
                chunk = self._source.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
                if not chunk:
                    break
                self._channel.sendall(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
            self._channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            # The command exited without reading all of its input, or the connection broke:
            # the exit status (or ConnectionLost) says which.
            pass
        except Exception as exc:  # noqa: BLE001 - a local read error, re-raised by the caller
            self.error = exc
            with contextlib.suppress(Exception):
                self._channel.close()


class SSHProcess:
    """A command started with :meth:`SSHHost.start`: a :class:`~deployer.hosts.base.Process`.

    A reader thread takes stdout apart into lines and keeps the tail of stderr, so the
    command never blocks on a full pipe even if nobody reads.
    """

    def __init__(
        self,
        host: SSHHost,
        argv: tuple[str, ...],
        channel: paramiko.Channel,
        connection: Connection,
        report: _PidReport,
        release: Callable[[], None],
    ) -> None:
        self.argv = argv
        self._host = host
        self._channel = channel
        self._connection = connection
        self._report = report
        self._release = release
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._eof = False
        self._lost: ConnectionLost | None = None
        self._finished = threading.Event()
        self._pid_known = threading.Event()
        self._stderr = bytearray()
        self._send_lock = threading.Lock()
        self._killing = False
        self._reader = threading.Thread(
            target=self._read, name=f"ssh-process {argv[0]}", daemon=True
        )
        self._reader.start()

    def __repr__(self) -> str:
        return f"SSHProcess({shlex.join(self.argv)!r} on {self._host.target.label})"

    def _read(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        partial = ""
        channel = self._channel
        try:
            while True:
                got = False
                while channel.recv_ready():
                    got = True
                    text = partial + decoder.decode(channel.recv(_CHUNK))
                    *lines, partial = text.split("\n")
                    for line in lines:
                        self._lines.put(line)
                while channel.recv_stderr_ready():
                    got = True
                    data = self._report.filter(channel.recv_stderr(_CHUNK))
                    if self._report.pid is not None or self._report._done:
                        self._pid_known.set()
                    self._stderr.extend(data)
                    del self._stderr[: max(len(self._stderr) - _STDERR_TAIL_BYTES, 0)]
                done = channel.closed or (channel.eof_received and channel.exit_status_ready())
                if done and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if not got:
                    wait_for_output(channel, _POLL_SECONDS)
            partial += decoder.decode(b"", final=True)
            if partial:
                self._lines.put(partial)
            # A command we killed ends without an exit status by design: no need to watch
            # for a dying connection then.
            if not self._killing and self._host._ended_by_lost_connection(
                channel, self._connection
            ):
                self._lost = self._host._lost(connection=self._connection)
        except (paramiko.SSHException, EOFError, OSError) as exc:  # the connection broke
            self._lost = self._host._lost(exc, self._connection)
        finally:
            self._pid_known.set()
            self._lines.put(None)
            self._finished.set()
            with contextlib.suppress(Exception):
                channel.close()
            self._release()

    @property
    def alive(self) -> bool:
        """True until the command has exited (or its connection is gone)."""
        return not self._finished.is_set() and not self._channel.exit_status_ready()

    @property
    def stderr(self) -> str:
        """The last 16 KiB the command wrote to stderr."""
        return bytes(self._stderr).decode("utf-8", "replace")

    def send(self, text: str) -> None:
        """Write ``text`` to the command's stdin; :class:`ConnectionLost` if that is gone."""
        data = text.encode("utf-8")
        with self._send_lock:
            if self._channel.closed or self._channel.eof_sent:
                raise self._gone()
            try:
                self._channel.sendall(data)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise self._gone() from exc

    def _gone(self) -> ConnectionLost:
        if self._lost is not None:
            return self._lost
        if not self._connection.is_active():
            return self._host._lost(connection=self._connection)
        if self._channel.exit_status_ready() and self._channel.exit_status != -1:
            status = f"exited with status {self._channel.exit_status}"
        elif self._channel.eof_sent:
            status = "has its stdin closed"
        else:
            status = "has ended"
        return ConnectionLost(
            f"{shlex.join(self.argv)} on {self._host.target.label} {status}: "
            "it cannot read any more input"
        )

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
        with self._send_lock, contextlib.suppress(Exception):
            self._channel.shutdown_write()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status (-1 if killed by a signal); ``None`` if still running after
        ``timeout`` seconds; :class:`ConnectionLost` if the connection broke first."""
        if not self._finished.wait(timeout):
            return None
        if self._lost is not None:
            raise self._lost
        return self._channel.exit_status

    def kill(self) -> None:
        """TERM, then KILL after a grace period, the command's process group on the host."""
        if self._finished.is_set():
            return
        self._pid_known.wait(self._host.target.connect_timeout)
        self._killing = True
        pid = self._report.pid
        try:
            if pid is not None:
                self._host._signal_group(pid, "TERM")
                if not self._finished.wait(_KILL_GRACE_SECONDS) and self._channel.active:
                    self._host._signal_group(pid, "KILL")
                    self._finished.wait(_KILL_GRACE_SECONDS)
        except (paramiko.SSHException, EOFError, OSError):
            pass  # the connection is gone: sshd closed the command's stdin and output
        finally:
            self._channel.close()
            self._finished.wait(_KILL_GRACE_SECONDS)


class _Attached:
    """The loop of :meth:`SSHHost.attach`: the channel's output to our stdout and stderr, our
    stdin to the channel (until its end), the terminal in raw mode and its size followed
    with a PTY; a signal deployer receives passed on."""

    def __init__(self, host: SSHHost, channel: paramiko.Channel, report: _PidReport | None, *, tty: bool,
                 stdin: bool) -> None:
        self._host = host
        self._channel = channel
        self._report = report
        self._tty = tty
        self._in = _fileno(sys.stdin) if stdin else None
        self._out = _binary(sys.stdout)
        self._err = _binary(sys.stderr)

    def pump(self) -> int | None:
        """Until the command ends; returns the signal that was passed on to it, if one was."""
        channel = self._channel
        raw = self._in if self._tty and self._in is not None and os.isatty(self._in) else None
        saved = _raw_terminal(raw) if raw is not None else None
        previous = _follow_size(channel) if self._tty else None
        if self._in is None:
            channel.shutdown_write()
        signalled: int | None = None
        try:
            while True:
                signum = interrupts.take()
                if signum is not None and signalled is None:
                    signalled = signum
                    self._pass_on(signum)
                watched: list[Any] = [channel] + ([self._in] if self._in is not None else [])
                ready = select.select(watched, [], [], _POLL_SECONDS)[0]
                self._drain()
                if self._in is not None and self._in in ready:
                    data = os.read(self._in, _CHUNK)
                    if data:
                        channel.sendall(data)
                    else:
                        channel.shutdown_write()
                        self._in = None
                finished = channel.closed or (channel.eof_received and channel.exit_status_ready())
                if finished and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
        finally:
            if raw is not None and saved is not None:
                _restore_terminal(raw, saved)
            if previous is not None:
                signal_module.signal(signal_module.SIGWINCH, previous)
        if self._report is not None:
            tail = self._report.flush()
            if tail:
                self._write(self._err, tail)
        return signalled

    def _drain(self) -> None:
        channel = self._channel
        while channel.recv_ready():
            self._write(self._out, channel.recv(_CHUNK))
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(_CHUNK)
            if self._report is not None:
                data = self._report.filter(data)
            if data:
                self._write(self._err, data)

    @staticmethod
    def _write(stream: IO[bytes], data: bytes) -> None:
        with contextlib.suppress(OSError, ValueError):  # our terminal went away: the command goes on to its end
            stream.write(data)
            stream.flush()

    def _pass_on(self, signum: int) -> None:
        """The command's process group on the server gets the signal; on a PTY (no pid known)
        the channel is closed, and sshd hangs the session up."""
        pid = self._report.pid if self._report is not None else None
        if pid is None:
            self._channel.close()
            return
        name = signal_module.Signals(signum).name.removeprefix("SIG")
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            self._host._signal_group(pid, name)


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno()) if stream is not None else None
    except (AttributeError, ValueError, OSError):
        return None


def _binary(stream: Any) -> IO[bytes]:
    return getattr(stream, "buffer", stream)


def _raw_terminal(fd: int) -> list[Any]:
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    return saved


def _restore_terminal(fd: int, saved: list[Any]) -> None:
    import termios

    with contextlib.suppress(termios.error, OSError):
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _follow_size(channel: paramiko.Channel) -> Any:
    """Resize the PTY with the local terminal (SIGWINCH); returns the handler it replaced
    (None: not the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def resized(signum: int, frame: object) -> None:
        size = shutil.get_terminal_size()
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            channel.resize_pty(width=size.columns, height=size.lines)

    return signal_module.signal(signal_module.SIGWINCH, resized)


class _PidReport:
    """Takes the ``TOKEN<pid>`` line the command prefix writes to stderr out of the stream.

    The session's shell reports its PID (which ``exec`` hands to the command, and which
    leads the session's process group) so a timed-out command can be killed with its
    children. Output before the line (a chatty shell startup file) is passed through.
    """

    _LIMIT = 65536

    def __init__(self, token: str) -> None:
        self.token = token
        self._token = token.encode("ascii")
        self._buffer = b""
        self._done = False
        self.pid: int | None = None

    def filter(self, data: bytes) -> bytes:
        """Return the part of ``data`` that is the command's own stderr."""
        if self._done:
            return data
        self._buffer += data
        start = self._buffer.find(self._token)
        if start == -1:
            # Wait for more unless this is clearly not coming (then give up, lose nothing).
            return self.flush() if len(self._buffer) > self._LIMIT else b""
        end = self._buffer.find(b"\n", start)
        if end == -1:
            return b""
        number = self._buffer[start + len(self._token) : end]
        self.pid = int(number) if number.isdigit() else None
        rest = self._buffer[:start] + self._buffer[end + 1 :]
        self._buffer = b""
        self._done = True
        return rest

    def flush(self) -> bytes:
        """Give up waiting for the report; return what was held back."""
        held, self._buffer, self._done = self._buffer, b"", True
        return held


class _Tunnel:
    """A listener on 127.0.0.1 whose connections are relayed over ``direct-tcpip`` channels."""

    def __init__(
        self,
        transport: paramiko.Transport,
        destination: tuple[str, int],
        timeout: float,
    ) -> None:
        self._transport = transport
        self._destination = destination
        self._timeout = timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket | paramiko.Channel] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        host, port = self._listener.getsockname()[:2]
        self.address: tuple[str, int] = (host, port)
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="ssh-forward", daemon=True
        )
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._listener], [], [], _POLL_SECONDS)
            if not readable:
                continue
            try:
                client, peer = self._listener.accept()
            except OSError:
                continue
            relay = threading.Thread(
                target=self._relay,
                args=(client, peer),
                name="ssh-forward-relay",
                daemon=True,
            )
            with self._lock:
                self._threads.append(relay)
            relay.start()

    def _relay(self, client: socket.socket, peer: tuple[str, int]) -> None:
        try:
            channel = self._transport.open_channel(
                "direct-tcpip", self._destination, peer[:2], timeout=self._timeout
            )
        except (paramiko.SSHException, EOFError, OSError):
            # The server could not reach the destination: the client sees the
            # connection close, as with `ssh -L`.
            client.close()
            return
        with self._lock:
            self._open.update((client, channel))
        try:
            _shuttle(client, channel, self._stop)
        finally:
            with self._lock:
                self._open.difference_update((client, channel))
            channel.close()
            client.close()

    def stop(self) -> None:
        self._stop.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
        with self._lock:
            leftovers = list(self._open)
        for item in leftovers:
            with contextlib.suppress(Exception):
                item.close()


def _shuttle(
    client: socket.socket, channel: paramiko.Channel, stop: threading.Event
) -> None:
    """Copy bytes both ways until both directions have ended (half-close aware)."""
    client_open = channel_open = True
    while (client_open or channel_open) and not stop.is_set():
        watch: list[socket.socket | paramiko.Channel] = []
        if client_open:
            watch.append(client)
        if channel_open:
            watch.append(channel)
        readable, _, _ = select.select(watch, [], [], _POLL_SECONDS)
        if client in readable:
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if data:
                channel.sendall(data)
            else:
                client_open = False
                channel.shutdown_write()
        if channel in readable:
            data = channel.recv(65536)
            if data:
                try:
                    client.sendall(data)
                except OSError:
                    return
            else:
                channel_open = False
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_WR)
        if channel.closed and not channel.recv_ready():
            return


__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_SERVER_ALIVE_COUNT_MAX",
    "DEFAULT_SERVER_ALIVE_INTERVAL",
    "SSHHost",
    "SSHProcess",
    "SSHTarget",
    "fingerprint",
    "library_logging",
    "resolve_target",
]
