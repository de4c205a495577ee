"""Connections that break: a killed sshd session, a hung server, and how a command, a
started process and the next command behave."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.errors import ConnectionLost
from deployer.hosts import LocalHost, connect
from deployer.hosts.ssh import SSHHost, library_logging
from tests.bench.sshd import SSHBench, SSHDFactory, SSHHome

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(sshd_factory: SSHDFactory) -> SSHBench:
    """An sshd of this module's own: its sessions get killed and frozen."""
    return sshd_factory()


def _config(path: Path, bench: SSHBench, *extra: str) -> Path:
    path.write_text(
        "Host server\n    HostName 127.0.0.1\n"
        f"    Port {bench.port}\n    User {bench.user}\n    IdentityFile {bench.key_path}\n"
        f"    UserKnownHostsFile {bench.known_hosts}\n    IdentitiesOnly yes\n"
        + "".join(f"    {line}\n" for line in extra)
    )
    return path


@pytest.fixture
def remote(server: SSHBench, ssh_home: SSHHome, tmp_path: Path) -> Iterator[SSHHost]:
    from deployer.hosts.spec import parse_host

    host = connect(parse_host("server"), ssh_config_path=_config(tmp_path / "config", server))
    assert isinstance(host, SSHHost)
    try:
        yield host
    finally:
        host.close()


def _session_pids(host: SSHHost, bench: SSHBench) -> list[int]:
    pids = bench.session_pids(host._transport.sock.getsockname()[1])
    assert pids, "no sshd process serves this connection"
    return pids


def _run_in_thread(host: SSHHost, argv: list[str]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            host.run(argv)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, errors


def test_killed_session_raises_connection_lost_then_reconnect_works(
    remote: SSHHost, server: SSHBench
) -> None:
    thread, errors = _run_in_thread(remote, ["sleep", "30"])
    time.sleep(0.5)
    started = time.monotonic()
    for pid in _session_pids(remote, server):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 8
    assert len(errors) == 1 and isinstance(errors[0], ConnectionLost), errors
    message = str(errors[0])
    assert message.startswith(f"lost the SSH connection to {server.user}@127.0.0.1:{server.port} (server)"), message
    assert errors[0].exit_code == 3
    # The next command fails at once, without a hang, until we reconnect.
    with pytest.raises(ConnectionLost):
        remote.run(["true"])
    remote.reconnect()
    assert remote.run(["echo", "back"], check=True).stdout == "back\n"
    remote.write_text(f"/tmp/deployer-reconnect-{os.getpid()}", "ok\n")
    assert remote.read_text(f"/tmp/deployer-reconnect-{os.getpid()}") == "ok\n"
    os.unlink(f"/tmp/deployer-reconnect-{os.getpid()}")


def test_a_started_process_notices_the_lost_connection(remote: SSHHost, server: SSHBench) -> None:
    process = remote.start(["cat"])
    process.send("ping\n")
    assert process.readline(timeout=10) == "ping"
    for pid in _session_pids(remote, server):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert process.readline(timeout=10) == ""
    with pytest.raises(ConnectionLost, match="lost the SSH connection"):
        process.wait(timeout=10)
    with pytest.raises(ConnectionLost):
        process.send("anyone?\n")
    assert not process.alive
    process.kill()  # nothing left to kill: no error


def test_a_hung_server_is_given_up_by_the_keepalive(
    server: SSHBench, ssh_home: SSHHome, tmp_path: Path
) -> None:
    from deployer.hosts.spec import parse_host

    config = _config(tmp_path / "config", server, "ServerAliveInterval 1", "ServerAliveCountMax 2")
    host = connect(parse_host("server"), ssh_config_path=config)
    assert isinstance(host, SSHHost)
    frozen: list[int] = []
    try:
        thread, errors = _run_in_thread(host, ["sleep", "60"])
        time.sleep(0.5)
        started = time.monotonic()
        # The server's processes stop; the kernel still ACKs every TCP segment, so only an
        # SSH-level keepalive that wants a reply can tell.
        for pid in _session_pids(host, server):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)
        assert frozen
        thread.join(15)
        elapsed = time.monotonic() - started
        assert len(errors) == 1 and isinstance(errors[0], ConnectionLost), errors
        assert 1.5 < elapsed < 6, elapsed
        assert "the server stopped answering: no reply to keepalives for 2 s" in str(errors[0])
        host.reconnect()  # a new session, served by a new (running) sshd process
        assert host.run(["echo", "alive"], check=True).stdout == "alive\n"
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)
        host.close()


def test_sockets_carry_keepalive_options(remote: SSHHost) -> None:
    sock = remote._transport.sock
    assert isinstance(sock, socket.socket)
    # Defaults: keepalive every 15 s, 3 missed = gone (45 s), at the TCP level too.
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 15
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 45_000
    assert (remote.target.server_alive_interval, remote.target.server_alive_count_max) == (15.0, 3)


def test_library_logging_is_off_unless_asked(
    server: SSHBench, ssh_home: SSHHome, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    with connect(server.spec, known_hosts_path=server.known_hosts, ssh_config_path=os.devnull) as host:
        host.run(["true"])
    assert capfd.readouterr().err == ""
    library_logging(True)
    try:
        with connect(server.spec, known_hosts_path=server.known_hosts, ssh_config_path=os.devnull) as host:
            host.run(["true"])
    finally:
        library_logging(False)
    assert "paramiko.transport: Connected (version 2.0, client OpenSSH" in capfd.readouterr().err


def test_local_reconnect_is_a_no_op() -> None:
    host = LocalHost()
    host.reconnect()
    assert host.run(["true"]).ok
