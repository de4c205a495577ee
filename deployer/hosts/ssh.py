"""A server reached over SSH (paramiko): commands, files (SFTP) and port tunnels.

One SSH connection per :class:`SSHHost`, shared by every command: each ``run()`` opens
its own channel, so several commands may run at once from different threads.
``~/.ssh/config`` is honoured the way ``ssh`` would (HostName, User, Port, IdentityFile,
ConnectTimeout, UserKnownHostsFile), and the server's host key must already be known.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import os
import select
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Self

import paramiko
from paramiko.ssh_exception import NoValidConnectionsError

from deployer.errors import ConfigError, HostError, HostKeyError
from deployer.hosts.base import (
    OutputCallback,
    OutputCollector,
    Result,
    check_argv,
    remote_command,
    timeout_error,
)
from deployer.hosts.spec import HostSpec

DEFAULT_CONNECT_TIMEOUT = 10.0
# OpenSSH allows 10 sessions per connection by default (MaxSessions); SFTP takes one.
_MAX_CONCURRENT_COMMANDS = 8
# After asking the server to SIGTERM a timed-out command, how long before SIGKILL.
_KILL_GRACE_SECONDS = 2.0
_POLL_SECONDS = 0.2
# A command's exit status does not make its channel readable: without data to wake it, the
# output loop polls this often, which is what finishing a command costs at most.
_EXIT_POLL_SECONDS = 0.02
_GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


@dataclass(frozen=True)
class SSHTarget:
    """Everything needed to open one SSH connection, after ``~/.ssh/config`` was applied."""

    name: str  # what the user wrote (an alias or user@host:port)
    hostname: str
    port: int
    user: str
    key_filenames: tuple[str, ...] = ()
    known_hosts_files: tuple[str, ...] = ()
    # Where a new host key should be added; shown in the "unknown host key" hint.
    trust_file: str = "~/.ssh/known_hosts"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    # IdentitiesOnly yes: offer only the IdentityFile keys (no agent, no default key files).
    identities_only: bool = False

    @property
    def label(self) -> str:
        """``user@host:port``, plus the alias when one was used."""
        address = f"{self.user}@{_bracket(self.hostname)}:{self.port}"
        bare = self.name.rsplit("@", 1)[-1]
        if bare not in (
            self.hostname,
            f"{_bracket(self.hostname)}:{self.port}",
            f"{self.hostname}:{self.port}",
        ):
            return f"{address} ({bare})"
        return address

    @property
    def known_hosts_name(self) -> str:
        """The name this server has in known_hosts (``[host]:port`` unless port 22)."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def resolve_target(
    spec: HostSpec,
    *,
    ssh_config_path: str | os.PathLike[str] | None = None,
    known_hosts_path: str | os.PathLike[str] | None = None,
    connect_timeout: float | None = None,
) -> SSHTarget:
    """Apply the SSH client config to ``spec``; explicit user and port in ``spec`` win.

    Reads ``ssh_config_path`` or, if not given, ``~/.ssh/config`` when it exists.
    Known hosts come from ``known_hosts_path`` alone when given; otherwise from
    /etc/ssh/ssh_known_hosts, ``~/.ssh/known_hosts`` and any ``UserKnownHostsFile``.
    """
    config_file = (
        Path(ssh_config_path)
        if ssh_config_path is not None
        else Path.home() / ".ssh" / "config"
    )
    entry: dict[str, object] = {}
    if config_file.is_file():
        try:
            entry = dict(
                paramiko.SSHConfig.from_path(str(config_file)).lookup(spec.hostname)
            )
        except (paramiko.ssh_exception.ConfigParseError, ValueError, OSError) as exc:
            raise ConfigError(
                f"cannot read SSH config {config_file}: {exc}",
                hint="fix the file; `ssh -G HOST` shows how ssh itself reads it",
            ) from exc

    hostname = str(entry.get("hostname") or spec.hostname)
    user = spec.user or _optional_str(entry.get("user")) or getpass.getuser()
    port = (
        spec.port
        if spec.port is not None
        else _config_int(entry.get("port"), "Port", config_file) or 22
    )
    if connect_timeout is None:
        connect_timeout = float(
            _config_int(entry.get("connecttimeout"), "ConnectTimeout", config_file)
            or DEFAULT_CONNECT_TIMEOUT
        )

    identity_files = entry.get("identityfile") or []
    assert isinstance(identity_files, list)
    keys = tuple(
        path
        for path in (os.path.expanduser(str(item)) for item in identity_files)
        if os.path.isfile(path)
    )

    user_known_hosts = [
        os.path.expanduser(item)
        for item in str(entry.get("userknownhostsfile") or "").split()
        if item
    ]
    known_hosts: tuple[str, ...]
    if known_hosts_path is not None:
        known_hosts = (os.fspath(known_hosts_path),)
        trust_file = os.fspath(known_hosts_path)
    else:
        default = os.path.join(Path.home(), ".ssh", "known_hosts")
        known_hosts = tuple(
            dict.fromkeys([_GLOBAL_KNOWN_HOSTS, default, *user_known_hosts])
        )
        trust_file = user_known_hosts[0] if user_known_hosts else "~/.ssh/known_hosts"
    return SSHTarget(
        name=str(spec),
        hostname=hostname,
        port=port,
        user=user,
        key_filenames=keys,
        known_hosts_files=known_hosts,
        trust_file=_tilde(trust_file),
        connect_timeout=connect_timeout,
        identities_only=str(entry.get("identitiesonly", "no")).lower() == "yes",
    )


def fingerprint(key: paramiko.PKey) -> str:
    """The key's fingerprint as OpenSSH prints it: ``SHA256:<unpadded base64>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


class _RejectUnknownHostKey(paramiko.RejectPolicy):
    """Refuse unknown host keys, with a message saying how to check and trust the key."""

    def __init__(self, target: SSHTarget) -> None:
        self._target = target

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        target = self._target
        keyscan = ["ssh-keyscan", "-t", key.get_name()]
        if target.port != 22:
            keyscan += ["-p", str(target.port)]
        keyscan.append(target.hostname)
        raise HostKeyError(
            f"the SSH host key of {target.label} is unknown ({key.get_name()} {fingerprint(key)}); "
            "refusing to connect to a server that cannot be verified",
            hint=(
                "check that fingerprint with the server's administrator "
                f"(on the server: ssh-keygen -lf /etc/ssh/ssh_host_{_key_file_type(key)}_key.pub), "
                "then trust it with: "
                f"{shlex.join(keyscan)} >> {target.trust_file}"
            ),
        )


class SSHHost:
    """A remote machine over one SSH connection; see :class:`deployer.hosts.Host`."""

    is_local = False

    def __init__(self, target: SSHTarget) -> None:
        """Connect and authenticate; raises :class:`HostError` / :class:`HostKeyError`."""
        self.target = target
        self.name = target.name
        self._client = _open_client(target)
        transport = self._client.get_transport()
        assert transport is not None
        # Keepalives stop idle NATs and firewalls dropping the connection during a long build.
        transport.set_keepalive(30)
        self._transport = transport
        self._sessions = threading.BoundedSemaphore(_MAX_CONCURRENT_COMMANDS)
        self._sftp_lock = threading.Lock()
        self._sftp_client: paramiko.SFTPClient | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SSHHost({self.target.label})"

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
        channel closed, and :class:`CommandError` raised.
        """
        words = check_argv(argv)
        report = _PidReport(f"deployer-pid-{uuid.uuid4().hex[:16]}:")
        # The prefix is a constant plus a hex token: nothing from the caller is formatted in.
        command = f"echo {report.token}$$ >&2; " + remote_command(
            words, cwd=cwd, env=env
        )
        started = time.monotonic()
        deadline = started + timeout if timeout is not None else None
        collector = OutputCollector(on_output)
        timed_out = False
        exit_code = -1
        with self._sessions:
            channel = self._open_session()
            try:
                channel.exec_command(command)
                self._start_stdin(channel, stdin)
                if self._pump(channel, collector, report, deadline):
                    exit_code = channel.recv_exit_status()
                else:
                    timed_out = True
                    self._stop(channel, report.pid)
            except paramiko.SSHException as exc:
                raise self._lost(exc) from exc
            except BaseException:
                # Ctrl-C or a failing callback: do not leave the command running.
                if not timed_out:
                    with contextlib.suppress(Exception):
                        self._stop(channel, report.pid, grace=0.5)
                raise
            finally:
                channel.close()
        collector.feed(1, report.flush())
        stdout, stderr = collector.finish()
        if timed_out:
            assert timeout is not None
            raise timeout_error(words, timeout, self.target.label, stderr or stdout)
        result = Result(words, exit_code, stdout, stderr, time.monotonic() - started)
        return result.check() if check else result

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

    def _open_session(self) -> paramiko.Channel:
        if self._closed:
            raise HostError(f"the connection to {self.target.label} was already closed")
        try:
            return self._transport.open_session(timeout=self.target.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc) from exc

    def _lost(self, exc: BaseException) -> HostError:
        return HostError(
            f"lost the SSH connection to {self.target.label}: {exc or type(exc).__name__}",
            hint="check the network and the server, then run the command again",
        )

    @staticmethod
    def _start_stdin(channel: paramiko.Channel, data: bytes | None) -> None:
        if data is None:
            channel.shutdown_write()
            return

        # A thread, so a command that writes a lot before reading its input cannot
        # deadlock against us while we are still sending.
        def feed() -> None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                channel.sendall(data)
                channel.shutdown_write()

        threading.Thread(target=feed, name="ssh-stdin", daemon=True).start()

    @staticmethod
    def _pump(
        channel: paramiko.Channel,
        collector: OutputCollector,
        report: _PidReport,
        deadline: float | None,
    ) -> bool:
        """Read output until the command is done (True) or the deadline passes (False)."""
        while True:
            while channel.recv_ready():
                collector.feed(0, channel.recv(65536))
            while channel.recv_stderr_ready():
                collector.feed(1, report.filter(channel.recv_stderr(65536)))
            finished = channel.closed or (
                channel.eof_received and channel.exit_status_ready()
            )
            if (
                finished
                and not channel.recv_ready()
                and not channel.recv_stderr_ready()
            ):
                return True
            wait = _EXIT_POLL_SECONDS
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait = min(wait, remaining)
            # The channel's fileno becomes readable when stdout or stderr data arrives.
            select.select([channel], [], [], wait)

    # -- files --------------------------------------------------------------------------

    def _sftp(self) -> paramiko.SFTPClient:
        if self._sftp_client is None:
            if self._closed:
                raise HostError(
                    f"the connection to {self.target.label} was already closed"
                )
            try:
                self._sftp_client = self._client.open_sftp()
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise HostError(
                    f"cannot open SFTP on {self.target.label}: {exc}",
                    hint="enable the sftp subsystem in the server's sshd_config "
                    "(Subsystem sftp internal-sftp)",
                ) from exc
        return self._sftp_client

    def put(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        mode: int | None = None,
    ) -> None:
        """Upload a file atomically (temporary name next to it, then rename)."""
        with self._sftp_lock:
            sftp = self._sftp()
            temp = _temp_name(remote_path)
            try:
                sftp.put(os.fspath(local_path), temp)
                self._finish_atomic(sftp, temp, remote_path, mode)
            except BaseException:
                with contextlib.suppress(Exception):
                    sftp.remove(temp)
                raise

    def get(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        """Download a file; ``FileNotFoundError`` if it does not exist."""
        with self._sftp_lock:
            self._sftp().get(remote_path, os.fspath(local_path))

    def read_text(self, path: str) -> str:
        """Return a UTF-8 text file's content; ``FileNotFoundError`` if it does not exist."""
        with self._sftp_lock, self._sftp().open(path, "rb") as handle:
            data: bytes = handle.read()
        return data.decode("utf-8")

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        """Write a UTF-8 text file atomically, with ``mode`` set before it appears."""
        with self._sftp_lock:
            sftp = self._sftp()
            temp = _temp_name(path)
            try:
                with sftp.open(temp, "wb") as handle:
                    handle.write(text.encode("utf-8"))
                self._finish_atomic(sftp, temp, path, mode)
            except BaseException:
                with contextlib.suppress(Exception):
                    sftp.remove(temp)
                raise

    @staticmethod
    def _finish_atomic(
        sftp: paramiko.SFTPClient, temp: str, path: str, mode: int | None
    ) -> None:
        if mode is None:
            # Replacing a file keeps its permissions, as an in-place edit would.
            with contextlib.suppress(FileNotFoundError):
                mode = sftp.stat(path).st_mode
                mode = None if mode is None else mode & 0o7777
        if mode is not None:
            sftp.chmod(temp, mode)
        # posix-rename@openssh.com replaces the target atomically (plain SFTP rename refuses).
        sftp.posix_rename(temp, path)

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

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Close SFTP and the SSH connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._sftp_client is not None:
            with contextlib.suppress(Exception):
                self._sftp_client.close()
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _open_client(target: SSHTarget) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    for path in target.known_hosts_files:
        if os.path.isfile(path):
            try:
                # "System" host keys are only read, never written back: we never add keys.
                client.load_system_host_keys(path)
            except (OSError, paramiko.SSHException) as exc:
                raise HostError(f"cannot read known hosts file {path}: {exc}") from exc
    client.set_missing_host_key_policy(_RejectUnknownHostKey(target))
    timeout = target.connect_timeout
    try:
        client.connect(
            target.hostname,
            port=target.port,
            username=target.user,
            key_filename=list(target.key_filenames) or None,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            allow_agent=not target.identities_only,
            look_for_keys=not target.identities_only,
        )
    except HostKeyError:
        client.close()
        raise
    except BaseException as exc:
        client.close()
        error = _connect_error(target, exc)
        if error is None:
            raise
        raise error from exc
    return client


def _connect_error(target: SSHTarget, exc: BaseException) -> HostError | None:
    """Translate a connection failure into a one-line HostError with a hint."""
    where = target.label
    if isinstance(exc, paramiko.BadHostKeyException):
        remove = ["ssh-keygen", "-R", target.known_hosts_name]
        if not target.trust_file.startswith("~/.ssh/known_hosts"):
            remove += ["-f", target.trust_file]
        return HostKeyError(
            f"the SSH host key of {where} has CHANGED: the server presents {exc.key.get_name()} "
            f"{fingerprint(exc.key)} but known_hosts has {fingerprint(exc.expected_key)}; "
            "this may be a man-in-the-middle attack, or the server was reinstalled",
            hint=(
                "confirm the new fingerprint with the server's administrator, then remove the old "
                f"entry with: {shlex.join(remove)} (and trust the new key with ssh-keyscan)"
            ),
        )
    if isinstance(exc, NoValidConnectionsError):
        return HostError(
            f"cannot connect to {where}: connection refused",
            hint="is sshd running there and listening on that port? check host and port in "
            "deploy.toml or ~/.ssh/config",
        )
    if isinstance(exc, socket.gaierror):
        return HostError(
            f"cannot connect to {where}: the host name {target.hostname!r} does not resolve",
            hint="check the spelling, or add a Host entry for it to ~/.ssh/config",
        )
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return HostError(
            f"cannot connect to {where}: timed out after {target.connect_timeout:g} s",
            hint="check the address, that the server is up, and that no firewall drops SSH",
        )
    if isinstance(exc, paramiko.PasswordRequiredException):
        return HostError(
            f"cannot log in to {where}: the private key is encrypted and no passphrase is available",
            hint="load the key into ssh-agent (ssh-add KEY) and run again",
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return HostError(
            f"cannot log in to {where}: the server accepted none of our keys",
            hint=f"add your public key to ~{target.user}/.ssh/authorized_keys on the server, "
            "or load the right key into ssh-agent, or set IdentityFile in ~/.ssh/config",
        )
    if isinstance(
        exc, paramiko.SSHException
    ) and "No authentication methods available" in str(exc):
        return HostError(
            f"cannot log in to {where}: there is no SSH key to offer "
            "(no ssh-agent, no ~/.ssh/id_* key, no IdentityFile)",
            hint="create a key (ssh-keygen -t ed25519), add it to the server's authorized_keys, "
            "or set IdentityFile for this host in ~/.ssh/config",
        )
    if isinstance(exc, (paramiko.SSHException, EOFError, OSError)):
        return HostError(
            f"cannot connect to {where}: {exc or type(exc).__name__}",
            hint="check that the address and port lead to an SSH server",
        )
    return None


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


def _temp_name(path: str) -> str:
    target = PurePosixPath(path)
    return str(target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"))


def _key_file_type(key: paramiko.PKey) -> str:
    """The type part of sshd's host key file name for ``key`` (rsa, ecdsa, ed25519)."""
    name = key.get_name()
    if "ed25519" in name:
        return "ed25519"
    if name.startswith("ecdsa"):
        return "ecdsa"
    return "rsa"


def _bracket(hostname: str) -> str:
    return f"[{hostname}]" if ":" in hostname else hostname


def _tilde(path: str) -> str:
    home = str(Path.home())
    if path == home or path.startswith(home + os.sep):
        return "~" + path[len(home) :]
    return path


def _optional_str(value: object) -> str | None:
    return str(value) if value else None


def _config_int(value: object, key: str, config_file: Path) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value))
    except ValueError:
        raise ConfigError(f"{config_file}: {key} {value!r} is not a number") from None
