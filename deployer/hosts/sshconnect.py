"""Opening SSH connections as ``ssh`` would: the target from ``~/.ssh/config``, jump hosts,
ProxyCommand, host key checks, keepalives, and errors a user can act on.

:func:`resolve_target` turns a :class:`~deployer.hosts.spec.HostSpec` into an
:class:`SSHTarget` (a chain of them, one per hop); :meth:`Connection.open` connects it.
Multi-hop: a transport to the first hop, then a ``direct-tcpip`` channel through it as the
socket of the next, each hop's host key verified against its own known hosts.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import getpass
import hashlib
import os
import select
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

import paramiko

# Imported with paramiko: its log lines stay hidden unless --verbose asked for them.
import deployer.hosts.liblog  # noqa: F401
from deployer.errors import ConfigError, ConnectionLost, HostError, HostKeyError
from deployer.hosts.spec import HostSpec
from deployer.hosts.sshconfig import HostConfig, SSHConfig, parse_jump

DEFAULT_CONNECT_TIMEOUT = 10.0
# Keepalives unless the config says otherwise: a dead server is noticed within ~1 minute.
DEFAULT_SERVER_ALIVE_INTERVAL = 15.0
DEFAULT_SERVER_ALIVE_COUNT_MAX = 3
# How many jump hosts may stand between us and a server (ProxyJump chains, and loops).
MAX_JUMPS = 8
# Bigger windows than paramiko's default: bulk copies (backups) are several times faster.
WINDOW_SIZE = 8 * 1024 * 1024
MAX_PACKET_SIZE = 32 * 1024
# The channel to the next hop is read a few bytes at a time by the next hop's transport,
# and paramiko's channel buffer moves its whole content on every read: a smaller window
# there is faster (measured: 100 MB through one jump in 3.9 s with 2 MiB, 10.4 s with 8 MiB).
JUMP_WINDOW_SIZE = 2 * 1024 * 1024
_STDERR_TAIL_BYTES = 16 * 1024
_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


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
    ) -> NoReturn:
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


class Connection:
    """An authenticated SSH transport, the hops it runs through, and its keepalive."""

    def __init__(
        self,
        target: SSHTarget,
        client: paramiko.SSHClient,
        upstream: Connection | None,
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
    def open(cls, target: SSHTarget, *, is_jump: bool = False) -> Connection:
        """Connect (through the jump hosts or ProxyCommand) and authenticate."""
        upstream: Connection | None = None
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

    def __init__(self, connection: Connection) -> None:
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
    upstream: Connection, target: SSHTarget, is_jump: bool
) -> paramiko.Channel:
    jump = upstream.target
    try:
        return upstream.transport.open_channel(
            "direct-tcpip",
            (target.hostname, target.port),
            ("127.0.0.1", 0),
            timeout=target.connect_timeout,
            window_size=JUMP_WINDOW_SIZE,
            max_packet_size=MAX_PACKET_SIZE,
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

    def send(self, content: Any) -> int:  # bytes; typed as the stubs type the base
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
        closed = not sock.recv_ready() and bool(sock.closed or sock.eof_received)
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
            key_filename=cast(Any, list(target.key_filenames) or None),  # paramiko takes a list too
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            allow_agent=target.use_agent and not target.identities_only,
            look_for_keys=not target.identities_only,
            compress=target.compression,
            sock=sock,
        )
    except HostKeyError:
        client.close()
        raise
    except BaseException as exc:
        transport = client.get_transport()  # before close() forgets it: how far the handshake got
        client.close()
        error = _negotiation_error(target, exc, transport, is_jump) or _connect_error(target, exc, is_jump, proxy)
        if error is None:
            raise
        raise error from exc
    return client


def _negotiation_error(
    target: SSHTarget, exc: BaseException, transport: paramiko.Transport | None, is_jump: bool
) -> HostError | None:
    """A server that spoke, but not (or not all of) SSH within the timeout: paramiko gives up
    waiting without an error of its own, then fails with "No existing session"; say what
    the server did instead."""
    if not isinstance(exc, (paramiko.SSHException, EOFError, OSError)) or isinstance(exc, paramiko.AuthenticationException):
        return None
    if transport is None or transport.initial_kex_done:
        return None
    server = f"{'the jump host' if is_jump else 'the server'} at {target.address}{target.route}"
    timeout = target.connect_timeout
    if not transport.remote_version:
        return HostError(
            f"{server} accepted the connection but sent no SSH banner within {timeout:g} s",
            hint="is an SSH server listening on that port (and not another service)? "
            "a firewall or an overloaded sshd can also hold connections open silently",
        )
    return HostError(
        f"{server} sent its SSH banner ({transport.remote_version}) but did not finish the key exchange "
        f"within {timeout:g} s",
        hint="the server may be overloaded, or something on the way drops its packets; "
        "`ssh -vvv` shows how far the handshake gets",
    )


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
