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
* paramiko logs nothing to the user unless :func:`library_logging` turns it on.
"""

from __future__ import annotations

import base64
import codecs
import collections
import contextlib
import errno
import getpass
import hashlib
import io
import logging
import os
import queue
import select
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self

import paramiko

from deployer.errors import (
    CommandError,
    ConfigError,
    ConnectionLost,
    HostError,
    HostKeyError,
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
from deployer.hosts.spec import HostSpec
from deployer.hosts.sshconfig import HostConfig, SSHConfig, parse_jump

DEFAULT_CONNECT_TIMEOUT = 10.0
# Keepalives unless the config says otherwise: a dead server is noticed within ~1 minute.
DEFAULT_SERVER_ALIVE_INTERVAL = 15.0
DEFAULT_SERVER_ALIVE_COUNT_MAX = 3
# How many jump hosts may stand between us and a server (ProxyJump chains, and loops).
MAX_JUMPS = 8
# OpenSSH allows 10 sessions per connection by default (MaxSessions); two stay free so
# that a command can always be signalled over a channel of its own.
_MAX_CONCURRENT_COMMANDS = 8
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
# Bigger windows than paramiko's default: bulk copies (backups) are several times faster.
_WINDOW_SIZE = 8 * 1024 * 1024
_MAX_PACKET_SIZE = 32 * 1024
_STDERR_TAIL_BYTES = 16 * 1024
_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


# -- paramiko's log lines ----------------------------------------------------------------

_LIBRARY_LOGGER = logging.getLogger("paramiko")
_QUIET = logging.NullHandler()
_LOUD = logging.StreamHandler(sys.stderr)
_LOUD.setFormatter(logging.Formatter("paramiko: %(message)s"))


def library_logging(enabled: bool) -> None:
    """Show paramiko's own log lines on stderr (``--verbose``), or hide them (the default).

    Hidden, nothing paramiko logs ("Secsh channel 3 open FAILED", banner tracebacks) ever
    reaches the user: deployer's own error says what happened.
    """
    _LIBRARY_LOGGER.propagate = False
    for handler in (_QUIET, _LOUD):
        _LIBRARY_LOGGER.removeHandler(handler)
    if enabled:
        _LOUD.stream = sys.stderr
        _LIBRARY_LOGGER.addHandler(_LOUD)
        _LIBRARY_LOGGER.setLevel(logging.DEBUG)
    else:
        # A handler that drops everything also keeps logging's last-resort stderr output away.
        _LIBRARY_LOGGER.addHandler(_QUIET)
        _LIBRARY_LOGGER.setLevel(logging.CRITICAL + 1)


library_logging(False)


# -- where to connect ----------------------------------------------------------------------


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
    use_agent: bool = True
    # The host in front of this one (ProxyJump): a direct-tcpip channel through it is our
    # socket. Each hop is a full target: its own user, key, known hosts and jump.
    jump: SSHTarget | None = None
    # ProxyCommand, tokens expanded: its stdin/stdout are our socket.
    proxy_command: str | None = None
    server_alive_interval: float = DEFAULT_SERVER_ALIVE_INTERVAL
    server_alive_count_max: int = DEFAULT_SERVER_ALIVE_COUNT_MAX
    tcp_keepalive: bool = True
    address_family: str = "any"
    compression: bool = False
    connection_attempts: int = 1

    @property
    def label(self) -> str:
        """``user@host:port``, plus the alias when one was used."""
        address = f"{self.user}@{_bracket(self.hostname)}:{self.port}"
        bare = self.name.rsplit("@", 1)[-1].removeprefix("ssh://")
        bare = bare.removesuffix(f":{self.port}")
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

    @property
    def address(self) -> str:
        """``host:port`` as a socket address."""
        return f"{_bracket(self.hostname)}:{self.port}"

    @property
    def route(self) -> str:
        """How the connection gets there: ``""``, or `` through the jump host X``."""
        if self.jump is not None:
            return f" through the jump host {self.jump.label}"
        if self.proxy_command is not None:
            return " through its ProxyCommand"
        return ""


def resolve_target(
    spec: HostSpec,
    *,
    ssh_config_path: str | os.PathLike[str] | None = None,
    known_hosts_path: str | os.PathLike[str] | None = None,
    connect_timeout: float | None = None,
) -> SSHTarget:
    """Apply the SSH client config to ``spec``; explicit user and port in ``spec`` win.

    Reads ``ssh_config_path`` alone when given (like ``ssh -F``); otherwise
    ``~/.ssh/config`` and then /etc/ssh/ssh_config, as ``ssh`` does. Known hosts come from
    ``known_hosts_path`` alone when given (for every hop); otherwise from the config's
    UserKnownHostsFile and GlobalKnownHostsFile, or ssh's defaults. ProxyJump hops are
    resolved through the same config, each with its own settings.
    Raises :class:`ConfigError` for a config that cannot be read or honoured.
    """
    config = (
        SSHConfig.default()
        if ssh_config_path is None
        else SSHConfig(ssh_config_path, home=Path.home())
    )
    return _resolve(
        config,
        name=str(spec),
        host=spec.hostname,
        user=spec.user,
        port=spec.port,
        forced_jumps=None,
        known_hosts_path=known_hosts_path,
        connect_timeout=connect_timeout,
        seen=(),
    )


def _resolve(
    config: SSHConfig,
    *,
    name: str,
    host: str,
    user: str | None,
    port: int | None,
    forced_jumps: tuple[str, ...] | None,
    known_hosts_path: str | os.PathLike[str] | None,
    connect_timeout: float | None,
    seen: tuple[str, ...],
) -> SSHTarget:
    if len(seen) > MAX_JUMPS:
        raise ConfigError(
            f"reaching {seen[0]} takes more than {MAX_JUMPS} jump hosts "
            f"({' -> '.join(reversed(seen))})",
            hint="ProxyJump entries in ~/.ssh/config probably point at each other; break the loop",
        )
    entry = config.lookup(host, user=user, port=port)
    hops = entry.proxy_jump if forced_jumps is None else forced_jumps
    proxy_command = entry.proxy_command if forced_jumps is None else None
    jump: SSHTarget | None = None
    if hops:
        # ssh -J a,b,c: c is reached through b through a. The last hop is the one in front
        # of this host; the hops before it are *its* jumps, overriding its own config, and
        # the first hop is reached as its own config says (ssh_config(5), ProxyJump).
        hop_user, hop_host, hop_port = parse_jump(hops[-1])
        jump = _resolve(
            config,
            name=hops[-1],
            host=hop_host,
            user=hop_user,
            port=hop_port,
            forced_jumps=hops[:-1] or None,
            known_hosts_path=known_hosts_path,
            connect_timeout=connect_timeout,
            seen=(*seen, name),
        )
    return _target_from_entry(
        entry,
        name=name,
        jump=jump,
        proxy_command=proxy_command if jump is None else None,
        known_hosts_path=known_hosts_path,
        connect_timeout=connect_timeout,
    )


def _target_from_entry(
    entry: HostConfig,
    *,
    name: str,
    jump: SSHTarget | None,
    proxy_command: str | None,
    known_hosts_path: str | os.PathLike[str] | None,
    connect_timeout: float | None,
) -> SSHTarget:
    keys = tuple(path for path in entry.identity_files if os.path.isfile(path))
    home_ssh = os.path.join(Path.home(), ".ssh")
    if known_hosts_path is not None:
        known_hosts: tuple[str, ...] = (os.fspath(known_hosts_path),)
        trust_file = os.fspath(known_hosts_path)
    else:
        user_files = (
            entry.user_known_hosts_files
            if entry.user_known_hosts_files is not None
            else (os.path.join(home_ssh, "known_hosts"), os.path.join(home_ssh, "known_hosts2"))
        )
        global_files = (
            entry.global_known_hosts_files
            if entry.global_known_hosts_files is not None
            else _GLOBAL_KNOWN_HOSTS
        )
        known_hosts = tuple(dict.fromkeys([*global_files, *user_files]))
        trust_file = user_files[0] if user_files else os.path.join(home_ssh, "known_hosts")
    interval = (
        entry.server_alive_interval
        if entry.server_alive_interval is not None
        else DEFAULT_SERVER_ALIVE_INTERVAL
    )
    return SSHTarget(
        name=name,
        hostname=entry.hostname,
        port=entry.port or 22,
        user=entry.user or getpass.getuser(),
        key_filenames=keys,
        known_hosts_files=known_hosts,
        trust_file=_tilde(trust_file),
        connect_timeout=(
            connect_timeout
            if connect_timeout is not None
            else entry.connect_timeout or DEFAULT_CONNECT_TIMEOUT
        ),
        identities_only=entry.identities_only,
        use_agent=entry.use_agent,
        jump=jump,
        proxy_command=proxy_command,
        server_alive_interval=interval,
        server_alive_count_max=entry.server_alive_count_max or DEFAULT_SERVER_ALIVE_COUNT_MAX,
        tcp_keepalive=entry.tcp_keepalive,
        address_family=entry.address_family,
        compression=entry.compression,
        connection_attempts=entry.connection_attempts or 1,
    )


def fingerprint(key: paramiko.PKey) -> str:
    """The key's fingerprint as OpenSSH prints it: ``SHA256:<unpadded base64>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _role(target: SSHTarget, is_jump: bool) -> str:
    return f"the jump host {target.label}" if is_jump else target.label


class _RejectUnknownHostKey(paramiko.RejectPolicy):
    """Refuse unknown host keys, with a message saying how to check and trust the key."""

    def __init__(self, target: SSHTarget, is_jump: bool) -> None:
        self._target = target
        self._is_jump = is_jump

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        target = self._target
        keyscan = ["ssh-keyscan", "-t", key.get_name()]
        if target.port != 22:
            keyscan += ["-p", str(target.port)]
        keyscan.append(target.hostname)
        where = _role(target, self._is_jump)
        raise HostKeyError(
            f"the SSH host key of {where} is unknown ({key.get_name()} {fingerprint(key)}); "
            "refusing to connect to a server that cannot be verified",
            hint=(
                "check that fingerprint with the server's administrator "
                f"(on the server: ssh-keygen -lf /etc/ssh/ssh_host_{_key_file_type(key)}_key.pub), "
                "then trust it with: "
                f"{shlex.join(keyscan)} >> {target.trust_file}"
                + (
                    " (run ssh-keyscan where it can reach that address, e.g. on the jump host)"
                    if target.jump is not None or target.proxy_command is not None
                    else ""
                )
            ),
        )


# -- one connection (and the hops in front of it) -------------------------------------------


class _Connection:
    """An authenticated SSH transport, the hops it runs through, and its keepalive."""

    def __init__(
        self,
        target: SSHTarget,
        client: paramiko.SSHClient,
        upstream: _Connection | None,
        proxy: _ProxyCommand | None,
        is_jump: bool,
    ) -> None:
        self.target = target
        self.client = client
        transport = client.get_transport()
        assert transport is not None
        self.transport: paramiko.Transport = transport
        self.upstream = upstream
        self.proxy = proxy
        self.is_jump = is_jump
        # Set when the keepalive gave up on the server: the reason a command failed.
        self.dead_reason: str | None = None
        self._keepalive: _Keepalive | None = None
        if target.server_alive_interval > 0:
            self._keepalive = _Keepalive(self)

    @classmethod
    def open(cls, target: SSHTarget, *, is_jump: bool = False) -> _Connection:
        """Connect (through the jump hosts or ProxyCommand) and authenticate."""
        upstream: _Connection | None = None
        proxy: _ProxyCommand | None = None
        sock: socket.socket | paramiko.Channel | _ProxyCommand
        try:
            if target.jump is not None:
                upstream = cls.open(target.jump, is_jump=True)
                sock = _open_jump_channel(upstream, target, is_jump)
            elif target.proxy_command is not None:
                proxy = sock = _ProxyCommand(target.proxy_command)
            else:
                sock = _tcp_connect(target, is_jump)
            _wait_for_banner(sock, target, is_jump, proxy)
            client = _open_client(target, sock, is_jump, proxy)
        except BaseException:
            if proxy is not None:
                proxy.close()
            if upstream is not None:
                upstream.close()
            raise
        return cls(target, client, upstream, proxy, is_jump)

    def lost_reason(self) -> str | None:
        """Why this connection (or a hop in front of it) died, when something knows."""
        if self.dead_reason is not None:
            return self.dead_reason
        if self.upstream is not None:
            reason = self.upstream.lost_reason()
            if reason is not None:
                return reason
            if not self.upstream.transport.is_active():
                return f"the connection to the jump host {self.upstream.target.label} broke"
        if self.proxy is not None and self.proxy.closed:
            tail = self.proxy.stderr_tail()
            return f"its ProxyCommand exited{': ' + tail if tail else ''}"
        return None

    def is_active(self) -> bool:
        """True while the transport works (the keepalive has not given up on it)."""
        return self.transport.is_active() and self.dead_reason is None

    def declare_dead(self, reason: str) -> None:
        """Give up on the server: every command on this connection fails now."""
        if self.dead_reason is None:
            self.dead_reason = reason
        with contextlib.suppress(Exception):
            self.transport.close()

    def close(self) -> None:
        """Close this connection, then the hops in front of it (idempotent)."""
        if self._keepalive is not None:
            self._keepalive.stop()
        with contextlib.suppress(Exception):
            self.client.close()
        if self.proxy is not None:
            self.proxy.close()
        if self.upstream is not None:
            self.upstream.close()


class _Keepalive:
    """ssh's ServerAliveInterval/CountMax: ask the server for a reply every interval; give
    up on it when no reply came within interval x count.

    paramiko's own keepalive sends without wanting a reply, so it never notices a dead
    server; and TCP alone (even with TCP_USER_TIMEOUT) does not notice a hung one.
    """

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        target = connection.target
        self._interval = target.server_alive_interval
        self._count = target.server_alive_count_max
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"ssh-keepalive {target.label}", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        connection = self._connection
        transport = connection.transport
        patience = self._interval * self._count
        while not self._stop.wait(self._interval):
            if not transport.is_active():
                return
            timer = threading.Timer(
                patience,
                connection.declare_dead,
                args=(
                    (
                        f"the server stopped answering: no reply to keepalives for {patience:g} s "
                        f"(ServerAliveInterval {self._interval:g} x ServerAliveCountMax {self._count})"
                    ),
                ),
            )
            timer.daemon = True
            timer.start()
            try:
                # OpenSSH answers an unknown global request with a failure: any answer
                # proves the server is alive. Returns early when the transport closes.
                transport.global_request("keepalive@openssh.com", wait=True)
            except (paramiko.SSHException, EOFError, OSError):
                return
            finally:
                timer.cancel()

    def stop(self) -> None:
        self._stop.set()


def _tcp_connect(target: SSHTarget, is_jump: bool) -> socket.socket:
    """A TCP connection with keepalive options that notice a dead peer in about a minute."""
    family = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}.get(
        target.address_family, socket.AF_UNSPEC
    )
    where = _role(target, is_jump)
    try:
        addresses = socket.getaddrinfo(
            target.hostname, target.port, family, socket.SOCK_STREAM
        )
    except socket.gaierror as exc:
        raise HostError(
            f"cannot connect to {where}: the host name {target.hostname!r} does not resolve",
            hint="check the spelling, or add a Host entry for it to ~/.ssh/config",
        ) from exc
    failure: OSError | None = None
    for attempt in range(max(target.connection_attempts, 1)):
        if attempt:
            time.sleep(1.0)  # as ssh does between ConnectionAttempts
        for af, kind, proto, _name, address in addresses:
            sock = socket.socket(af, kind, proto)
            sock.settimeout(target.connect_timeout)
            try:
                sock.connect(address)
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            _tune_socket(sock, target)
            return sock
    assert failure is not None
    if isinstance(failure, (TimeoutError, socket.timeout)):
        raise HostError(
            f"cannot connect to {where}: timed out after {target.connect_timeout:g} s",
            hint="check the address, that the server is up, and that no firewall drops SSH",
        ) from failure
    if isinstance(failure, ConnectionRefusedError):
        raise HostError(
            f"cannot connect to {where}: connection refused",
            hint="is sshd running there and listening on that port? check host and port in "
            "deploy.toml or ~/.ssh/config",
        ) from failure
    raise HostError(
        f"cannot connect to {where}: {failure.strerror or failure}",
        hint="check the address and the network",
    ) from failure


def _tune_socket(sock: socket.socket, target: SSHTarget) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    interval = int(target.server_alive_interval)
    if target.tcp_keepalive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if interval > 0:
            for option, value in (
                ("TCP_KEEPIDLE", interval),
                ("TCP_KEEPINTVL", interval),
                ("TCP_KEEPCNT", target.server_alive_count_max),
            ):
                if hasattr(socket, option):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    if interval > 0 and hasattr(socket, "TCP_USER_TIMEOUT"):
        # Data (our keepalives included) unacknowledged this long: the peer is gone. Without
        # it a vanished server leaves writes retransmitting for ~15 minutes.
        sock.setsockopt(
            socket.IPPROTO_TCP,
            socket.TCP_USER_TIMEOUT,
            int(interval * target.server_alive_count_max * 1000),
        )


def _open_jump_channel(
    upstream: _Connection, target: SSHTarget, is_jump: bool
) -> paramiko.Channel:
    jump = upstream.target
    try:
        return upstream.transport.open_channel(
            "direct-tcpip",
            (target.hostname, target.port),
            ("127.0.0.1", 0),
            timeout=target.connect_timeout,
            window_size=_WINDOW_SIZE,
            max_packet_size=_MAX_PACKET_SIZE,
        )
    except paramiko.ChannelException as exc:
        reason = {
            1: "administratively prohibited: its sshd does not allow forwarding "
            "(AllowTcpForwarding no, or PermitOpen)",
            2: "connect failed: nothing answers there, or the name does not resolve on the jump host",
        }.get(exc.code, exc.text or f"code {exc.code}")
        raise HostError(
            f"the jump host {jump.label} refused to open a connection to {target.address} "
            f"({reason})",
            hint="check the ProxyJump entry and the jump host's sshd_config",
        ) from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if upstream.transport.is_active():
            raise HostError(
                f"the jump host {jump.label} did not open a connection to {target.address} "
                f"within {target.connect_timeout:g} s",
                hint="is the address right, and reachable from the jump host?",
            ) from exc
        raise ConnectionLost(
            f"lost the SSH connection to the jump host {jump.label} while opening a connection "
            f"to {_role(target, is_jump)}"
        ) from exc


class _ProxyCommand(paramiko.ProxyCommand):
    """ProxyCommand run as ssh runs it: ``$SHELL -c "exec COMMAND"``, its stderr kept.

    paramiko's own class splits the command with shlex and runs it without a shell, spins
    when the command exits, and lets its stderr fill a pipe nobody reads.
    """

    def __init__(self, command: str) -> None:
        # Replaces the parent's __init__ on purpose (see the class docstring).
        shell = os.environ.get("SHELL") or "/bin/sh"
        # The command is a shell command line by definition (ssh_config(5)): handed to the
        # shell as the one argument of -c, exactly as ssh does.
        self.cmd = [shell, "-c", f"exec {command}"]
        self.process = subprocess.Popen(
            self.cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,
        )
        self.timeout: float | None = None
        self._stderr: collections.deque[bytes] = collections.deque()
        self._stderr_size = 0
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, name="ssh-proxycommand-stderr", daemon=True
        )
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        with contextlib.suppress(OSError, ValueError):
            while chunk := self.process.stderr.read(4096):
                self._stderr.append(chunk)
                self._stderr_size += len(chunk)
                while self._stderr_size > _STDERR_TAIL_BYTES and len(self._stderr) > 1:
                    self._stderr_size -= len(self._stderr.popleft())

    def stderr_tail(self, wait: float = 0.0) -> str:
        """The last lines the command wrote to stderr."""
        if wait:
            self._stderr_thread.join(wait)
        text = b"".join(self._stderr).decode("utf-8", "replace")
        return "; ".join(line for line in text.strip().splitlines()[-5:] if line.strip())

    def send(self, content: bytes) -> int:
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(content)
        except (OSError, ValueError) as exc:
            raise paramiko.ProxyCommandFailure(" ".join(self.cmd), str(exc)) from exc
        return len(content)

    def recv(self, size: int) -> bytes:
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        if not readable:
            raise TimeoutError()
        try:
            # b"" at end of output: paramiko reads that as the connection closing.
            return os.read(self.process.stdout.fileno(), size)
        except OSError as exc:
            raise paramiko.ProxyCommandFailure(" ".join(self.cmd), str(exc)) from exc

    def fileno(self) -> int:
        assert self.process.stdout is not None
        return self.process.stdout.fileno()

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, 15)
            try:
                self.process.wait(2.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, 9)
                self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(Exception):
                pipe.close()  # type: ignore[union-attr]

    @property
    def closed(self) -> bool:
        return self.process.poll() is not None

    @property
    def _closed(self) -> bool:
        return self.closed

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout


def _wait_for_banner(
    sock: socket.socket | paramiko.Channel | _ProxyCommand,
    target: SSHTarget,
    is_jump: bool,
    proxy: _ProxyCommand | None,
) -> None:
    """Fail clearly, within the connect timeout, when the server sends nothing at all.

    Only waits until something is readable; the banner itself stays for paramiko.
    """
    timeout = target.connect_timeout
    readable, _, _ = select.select([sock], [], [], timeout)
    server = f"{'the jump host' if is_jump else 'the server'} at {target.address}{target.route}"
    if not readable:
        raise HostError(
            f"{server} accepted the connection but sent no SSH banner within {timeout:g} s",
            hint="is an SSH server listening on that port (and not another service)? "
            "a firewall or an overloaded sshd can also hold connections open silently",
        )
    closed = False
    if isinstance(sock, socket.socket):
        try:
            closed = socket.socket.recv(sock, 1, socket.MSG_PEEK) == b""
        except OSError:
            closed = True
    elif isinstance(sock, paramiko.Channel):
        closed = not sock.recv_ready() and (sock.closed or sock.eof_received)
    if proxy is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proxy.process.wait(0.2)
        if proxy.process.returncode not in (None, 0):
            tail = proxy.stderr_tail(wait=1.0)
            raise HostError(
                f"the ProxyCommand for {_role(target, is_jump)} exited with status "
                f"{proxy.process.returncode} before an SSH connection was made"
                + (f": {tail}" if tail else ""),
                hint=f"run it by hand to see why: {proxy.cmd[-1][len('exec '):]}",
            )
    if closed:
        raise HostError(
            f"{server} closed the connection before sending an SSH banner",
            hint="the server may limit connections (sshd MaxStartups), or it is not an SSH server",
        )


def _open_client(
    target: SSHTarget,
    sock: socket.socket | paramiko.Channel | _ProxyCommand,
    is_jump: bool,
    proxy: _ProxyCommand | None,
) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    for path in target.known_hosts_files:
        if os.path.isfile(path):
            try:
                # "System" host keys are only read, never written back: we never add keys.
                client.load_system_host_keys(path)
            except (OSError, paramiko.SSHException) as exc:
                sock.close()
                raise HostError(f"cannot read known hosts file {path}: {exc}") from exc
    client.set_missing_host_key_policy(_RejectUnknownHostKey(target, is_jump))
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
            allow_agent=target.use_agent and not target.identities_only,
            look_for_keys=not target.identities_only,
            compress=target.compression,
            sock=sock,  # type: ignore[arg-type]
        )
    except HostKeyError:
        client.close()
        raise
    except BaseException as exc:
        client.close()
        error = _connect_error(target, exc, is_jump, proxy)
        if error is None:
            raise
        raise error from exc
    return client


def _connect_error(
    target: SSHTarget, exc: BaseException, is_jump: bool, proxy: _ProxyCommand | None
) -> HostError | None:
    """Translate a connection failure into a one-line HostError with a hint."""
    where = _role(target, is_jump)
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
    if proxy is not None and proxy.closed:
        tail = proxy.stderr_tail(wait=1.0)
        return HostError(
            f"the ProxyCommand for {where} exited with status {proxy.process.returncode} "
            "before an SSH connection was made" + (f": {tail}" if tail else ""),
            hint=f"run it by hand to see why: {proxy.cmd[-1][len('exec '):]}",
        )
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return HostError(
            f"cannot connect to {where}{target.route}: timed out after {target.connect_timeout:g} s",
            hint="check the address, that the server is up, and that no firewall drops SSH",
        )
    if isinstance(exc, (paramiko.SSHException, EOFError, OSError)):
        return HostError(
            f"cannot connect to {where}{target.route}: {exc or type(exc).__name__}",
            hint="check that the address and port lead to an SSH server",
        )
    return None


# -- the host ----------------------------------------------------------------------------


class SSHHost:
    """A remote machine over one SSH connection; see :class:`deployer.hosts.Host`."""

    is_local = False

    def __init__(self, target: SSHTarget) -> None:
        """Connect and authenticate; raises :class:`HostError` / :class:`HostKeyError`."""
        self.target = target
        self.name = target.name
        self._connection = _Connection.open(target)
        self._connection_lock = threading.Lock()
        self._sessions = threading.BoundedSemaphore(_MAX_CONCURRENT_COMMANDS)
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
        fresh = _Connection.open(self.target)
        with self._connection_lock:
            old, self._connection = self._connection, fresh
        old.close()

    def _lost(self, exc: BaseException | None = None, connection: _Connection | None = None) -> ConnectionLost:
        connection = connection or self._connection
        reason = connection.lost_reason()
        if reason is None:
            detail = f"{exc}" if exc is not None and str(exc) else "the connection was closed"
            reason = detail
        return ConnectionLost(
            f"lost the SSH connection to {self.target.label}: {reason}",
            hint="check the network and the server; deployer reconnects on the next command "
            "it runs, or run the command again",
        )

    def _open_session(self) -> tuple[paramiko.Channel, _Connection]:
        if self._closed:
            raise HostError(f"the connection to {self.target.label} was already closed")
        connection = self._connection
        if not connection.is_active():
            raise self._lost(connection=connection)
        try:
            channel = connection.transport.open_session(
                window_size=_WINDOW_SIZE,
                max_packet_size=_MAX_PACKET_SIZE,
                timeout=self.target.connect_timeout,
            )
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if connection.is_active():
                raise HostError(
                    f"{self.target.label} refused to open a command channel: {exc}",
                    hint="the server's sshd may limit sessions per connection (MaxSessions)",
                ) from exc
            raise self._lost(exc, connection) from exc
        return channel, connection

    def _ended_by_lost_connection(
        self, channel: paramiko.Channel, connection: _Connection
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

        Returns ``(exit_code, timed_out)``; raises :class:`ConnectionLost`.
        """
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
        """Read output until the command is done (True) or the deadline passes (False)."""
        while True:
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
            wait = _EXIT_POLL_SECONDS
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait = min(wait, remaining)
            # The channel's fileno becomes readable when stdout or stderr data arrives.
            select.select([channel], [], [], wait)

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
        self._sessions.acquire()
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

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the SSH connection and the hops in front of it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
        connection: _Connection,
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
                    select.select([channel], [], [], _EXIT_POLL_SECONDS)
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
