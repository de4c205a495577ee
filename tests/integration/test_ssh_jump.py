"""Reaching servers as ``~/.ssh/config`` says: ProxyJump (one and two hops), ProxyCommand,
Include — against real sshd instances on 127.0.0.1, each with its own host key."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from deployer.errors import ConfigError, HostError, HostKeyError
from deployer.hosts import connect
from deployer.hosts.spec import HostSpec, parse_host
from deployer.hosts.ssh import SSHHost
from tests.bench.sshd import SilentServer, SSHBench, SSHDFactory, SSHHome, free_port

pytestmark = pytest.mark.integration


def host_block(alias: str, bench: SSHBench, *extra: str, known_hosts: Path | None = None) -> str:
    """A Host entry reaching ``bench`` by ``alias``, with its own known_hosts file."""
    lines = [
        f"Host {alias}",
        "    HostName 127.0.0.1",
        f"    Port {bench.port}",
        f"    User {bench.user}",
        f"    IdentityFile {bench.key_path}",
        f"    UserKnownHostsFile {known_hosts or bench.known_hosts}",
        "    IdentitiesOnly yes",
        *(f"    {line}" for line in extra),
    ]
    return "\n".join(lines) + "\n"


def forwarded_to(jump: SSHBench, port: int) -> bool:
    """True when the jump sshd logged a forwarded connection to 127.0.0.1:port (DEBUG1)."""
    return f"target 127.0.0.1 port {port}" in jump.log()


@pytest.fixture(scope="module")
def jumps(sshd_factory: SSHDFactory) -> tuple[SSHBench, SSHBench]:
    """Two jump hosts that log every forwarded connection."""
    return sshd_factory(log_level="DEBUG1"), sshd_factory(log_level="DEBUG1")


@pytest.fixture(scope="module")
def app_server(sshd_factory: SSHDFactory) -> SSHBench:
    """The server we deploy to, behind the jump hosts (here: only loopback, of course)."""
    return sshd_factory()


def test_proxyjump_one_hop(
    ssh_home: SSHHome, jumps: tuple[SSHBench, SSHBench], app_server: SSHBench
) -> None:
    j1, _ = jumps
    ssh_home.config.write_text(
        host_block("j1", j1) + host_block("app", app_server, "ProxyJump j1")
    )
    with connect(parse_host("app")) as host:
        assert isinstance(host, SSHHost)
        assert host.target.jump is not None and host.target.jump.port == j1.port
        result = host.run(["sh", "-c", "echo through; echo $SSH_CONNECTION"], check=True)
        assert result.stdout.splitlines()[0] == "through"
        # The app server saw a connection to its own port, and the jump host forwarded it.
        assert result.stdout.split()[-1] == str(app_server.port)
        assert forwarded_to(j1, app_server.port), j1.log()[-2000:]


def test_proxyjump_two_hops_each_with_its_own_user_port_and_key(
    ssh_home: SSHHome, jumps: tuple[SSHBench, SSHBench], app_server: SSHBench, tmp_path: Path
) -> None:
    j1, j2 = jumps
    # j2 is named in the hop list as user@host:port, with its own config entry for the key
    # and known hosts; j1 only through its alias.
    j2_key = tmp_path / "j2_key"
    shutil.copyfile(j2.key_path, j2_key)
    j2_key.chmod(0o600)
    ssh_home.config.write_text(
        host_block("j1", j1)
        + "Host 127.0.0.1\n"
        + f"    IdentityFile {j2_key}\n"
        + f"    UserKnownHostsFile {j2.known_hosts}\n"
        + "    IdentitiesOnly yes\n"
        + host_block("app", app_server, f"ProxyJump j1,{j2.user}@127.0.0.1:{j2.port}")
    )
    with connect(parse_host("app")) as host:
        assert isinstance(host, SSHHost)
        hop2 = host.target.jump
        assert hop2 is not None and hop2.port == j2.port and hop2.key_filenames == (str(j2_key),)
        assert hop2.jump is not None and hop2.jump.port == j1.port
        assert host.run(["echo", "two hops"], check=True).stdout == "two hops\n"
        # j1 carried the connection to j2, and j2 the one to the app server.
        assert forwarded_to(j1, j2.port), j1.log()[-2000:]
        assert forwarded_to(j2, app_server.port), j2.log()[-2000:]
        # Files and tunnels go through the hops too.
        host.write_text(str(tmp_path / "via-jumps.txt"), "hops ✓\n")
        assert host.read_text(str(tmp_path / "via-jumps.txt")) == "hops ✓\n"


def test_proxycommand_with_the_openssh_client(
    ssh_home: SSHHome, jumps: tuple[SSHBench, SSHBench], app_server: SSHBench, tmp_path: Path
) -> None:
    j1, _ = jumps
    ssh = shutil.which("ssh")
    assert ssh is not None, "the OpenSSH client (ssh) is needed: run scripts/setup"
    # The OpenSSH client reads the passwd home, not $HOME: give it -F and the key explicitly.
    client_config = tmp_path / "openssh_config"
    client_config.write_text(
        host_block("jumpalias", j1, "BatchMode yes", "StrictHostKeyChecking yes")
        + "    GlobalKnownHostsFile /dev/null\n"
    )
    ssh_home.config.write_text(
        host_block(
            "app",
            app_server,
            f"ProxyCommand {ssh} -F {client_config} -i {j1.key_path} -W %h:%p jumpalias",
        )
    )
    with connect(parse_host("app")) as host:
        assert isinstance(host, SSHHost)
        assert host.target.proxy_command is not None
        assert f"-W 127.0.0.1:{app_server.port} jumpalias" in host.target.proxy_command
        assert host.run(["echo", "proxied"], check=True).stdout == "proxied\n"
        assert forwarded_to(j1, app_server.port)


def test_failing_proxycommand_reports_its_stderr(ssh_home: SSHHome, app_server: SSHBench) -> None:
    ssh_home.config.write_text(
        host_block(
            "app",
            app_server,
            "ProxyCommand sh -c 'echo \"proxy: no route to %h\" >&2; exit 3'",
            "ConnectTimeout 5",
        )
    )
    started = time.monotonic()
    with pytest.raises(HostError) as caught:
        connect(parse_host("app"))
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "the ProxyCommand for" in message and "exited with status 3" in message
    assert "proxy: no route to 127.0.0.1" in message


def test_include_with_a_glob(
    ssh_home: SSHHome, jumps: tuple[SSHBench, SSHBench], app_server: SSHBench
) -> None:
    j1, _ = jumps
    conf_d = ssh_home.home / ".ssh" / "conf.d"
    conf_d.mkdir()
    (conf_d / "10-jump.conf").write_text(host_block("j1", j1))
    (conf_d / "20-app.conf").write_text(host_block("app", app_server, "ProxyJump j1"))
    (conf_d / "README").write_text("Host app\n    Port 1\n")  # not *.conf: never read
    ssh_home.config.write_text("Include conf.d/*.conf\n")
    with connect(parse_host("app")) as host:
        assert host.run(["echo", "included"], check=True).stdout == "included\n"


def test_a_jump_host_that_refuses_forwarding(
    ssh_home: SSHHome,
    sshd_factory: SSHDFactory,
    app_server: SSHBench,
    capfd: pytest.CaptureFixture[str],
) -> None:
    closed = sshd_factory(allow_tcp_forwarding=False)
    ssh_home.config.write_text(
        host_block("closed", closed) + host_block("app", app_server, "ProxyJump closed")
    )
    capfd.readouterr()
    with pytest.raises(HostError) as caught:
        connect(parse_host("app"))
    message = str(caught.value)
    assert message.startswith(
        f"the jump host {closed.user}@127.0.0.1:{closed.port} (closed) refused to open a "
        f"connection to 127.0.0.1:{app_server.port} (administratively prohibited"
    ), message
    assert "AllowTcpForwarding no" in message
    # paramiko's own "Secsh channel 0 open FAILED" line never reaches the user.
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_a_jump_host_with_an_unknown_key_is_refused(
    ssh_home: SSHHome, jumps: tuple[SSHBench, SSHBench], app_server: SSHBench, tmp_path: Path
) -> None:
    j1, _ = jumps
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    ssh_home.config.write_text(
        host_block("j1", j1, known_hosts=empty) + host_block("app", app_server, "ProxyJump j1")
    )
    with pytest.raises(HostKeyError) as caught:
        connect(parse_host("app"))
    message = str(caught.value)
    assert message.startswith(
        f"the SSH host key of the jump host {j1.user}@127.0.0.1:{j1.port} (j1) is unknown"
    ), message
    assert f"ssh-keyscan -t ssh-ed25519 -p {j1.port} 127.0.0.1 >> {empty}" in message


def test_the_target_behind_a_jump_is_verified_too(
    ssh_home: SSHHome, jumps: tuple[SSHBench, SSHBench], app_server: SSHBench, tmp_path: Path
) -> None:
    j1, _ = jumps
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    ssh_home.config.write_text(
        host_block("j1", j1) + host_block("app", app_server, "ProxyJump j1", known_hosts=empty)
    )
    with pytest.raises(HostKeyError) as caught:
        connect(parse_host("app"))
    message = str(caught.value)
    assert message.startswith(f"the SSH host key of {app_server.user}@127.0.0.1:{app_server.port} (app) is unknown")
    assert "on the jump host" in message  # where ssh-keyscan can reach it


def test_an_unreachable_jump_host_is_named(ssh_home: SSHHome, app_server: SSHBench) -> None:
    port = free_port()
    ssh_home.config.write_text(
        f"Host gone\n    HostName 127.0.0.1\n    Port {port}\n"
        + host_block("app", app_server, "ProxyJump gone")
    )
    with pytest.raises(HostError) as caught:
        connect(parse_host("app"))
    assert str(caught.value).splitlines()[0] == (
        f"cannot connect to the jump host {app_server.user}@127.0.0.1:{port} (gone): connection refused"
    )


def test_a_jump_host_that_cannot_reach_the_target(
    ssh_home: SSHHome, jumps: tuple[SSHBench, SSHBench]
) -> None:
    j1, _ = jumps
    port = free_port()
    ssh_home.config.write_text(
        host_block("j1", j1) + f"Host nowhere\n    HostName 127.0.0.1\n    Port {port}\n    ProxyJump j1\n"
    )
    with pytest.raises(HostError) as caught:
        connect(parse_host("nowhere"))
    message = str(caught.value)
    assert f"the jump host {j1.user}@127.0.0.1:{j1.port} (j1) refused to open a connection to 127.0.0.1:{port}" in message
    assert "connect failed" in message


def test_a_silent_server_fails_within_the_connect_timeout(
    ssh_home: SSHHome, silent: SilentServer, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    started = time.monotonic()
    with pytest.raises(HostError) as caught:
        connect(
            HostSpec("127.0.0.1", user="deploy", port=silent.port),
            ssh_config_path=os.devnull,
            connect_timeout=1.5,
        )
    elapsed = time.monotonic() - started
    assert 1.4 < elapsed < 8, elapsed
    assert str(caught.value).splitlines()[0] == (
        f"the server at 127.0.0.1:{silent.port} accepted the connection but sent no SSH banner within 1.5 s"
    )
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.parametrize(("greeting", "said"), [
    (b"220 mail.example.invalid ESMTP\r\n", "accepted the connection but sent no SSH banner within 1.5 s"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "sent its SSH banner (SSH-2.0-OpenSSH_9.2) but did not finish the key exchange within 1.5 s"),
], ids=["another-service", "banner-then-nothing"])
def test_a_server_that_stops_talking_fails_within_the_connect_timeout(
    ssh_home: SSHHome, capfd: pytest.CaptureFixture[str], greeting: bytes, said: str
) -> None:
    """Something that speaks first and then stops (another service on the port, a hung sshd
    after its banner): paramiko alone fails with "No existing session"."""
    server = SilentServer(greeting)
    capfd.readouterr()
    try:
        started = time.monotonic()
        with pytest.raises(HostError) as caught:
            connect(HostSpec("127.0.0.1", user="deploy", port=server.port), ssh_config_path=os.devnull, connect_timeout=1.5)
        assert time.monotonic() - started < 8
    finally:
        server.close()
    assert str(caught.value).splitlines()[0] == f"the server at 127.0.0.1:{server.port} {said}"
    assert "No existing session" not in str(caught.value)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_a_silent_server_behind_a_jump(
    ssh_home: SSHHome, jumps: tuple[SSHBench, SSHBench], silent: SilentServer
) -> None:
    j1, _ = jumps
    ssh_home.config.write_text(
        host_block("j1", j1)
        + f"Host mute\n    HostName 127.0.0.1\n    Port {silent.port}\n    ProxyJump j1\n    ConnectTimeout 2\n"
    )
    started = time.monotonic()
    with pytest.raises(HostError) as caught:
        connect(parse_host("mute"))
    assert time.monotonic() - started < 5
    assert str(caught.value).splitlines()[0] == (
        f"the server at 127.0.0.1:{silent.port} through the jump host {j1.user}@127.0.0.1:{j1.port} (j1) "
        "accepted the connection but sent no SSH banner within 2 s"
    )


def test_unsupported_config_is_refused_before_connecting(ssh_home: SSHHome, app_server: SSHBench) -> None:
    ssh_home.config.write_text(host_block("app", app_server, "HostKeyAlias elsewhere"))
    with pytest.raises(ConfigError) as caught:
        connect(parse_host("app"))
    assert "HostKeyAlias applies to app" in str(caught.value)
