"""A real OpenSSH server on 127.0.0.1 for the test run (pytest plugin).

``sshd`` (session scope) runs ``/usr/sbin/sshd -D -e`` with its own config, host key and
one authorized user key, all in a temporary directory, on a free loopback port; it lets
the current user (root in CI, because tests drive docker over SSH) in with that key only.

``ssh_home`` (function scope) makes a fake ``$HOME`` with ``.ssh/config``, ``known_hosts``
and the key, so code that honours ``~/.ssh/config`` is tested as a user would run it.
Note: the OpenSSH ``ssh`` binary reads the *passwd* home, not ``$HOME``; paramiko uses
``$HOME``. Tests that shell out to ``ssh`` should pass ``-F`` and the key explicitly.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deployer.hosts.spec import HostSpec

SSHD = "/usr/sbin/sshd"
LOOPBACK = "127.0.0.1"
_START_TIMEOUT = 15.0


@dataclass(frozen=True)
class SSHBench:
    """The running test sshd and what a client needs to reach it."""

    host: str
    port: int
    user: str
    key_path: Path  # the user's private key (OpenSSH format, no passphrase)
    host_public_key: str  # "ssh-ed25519 AAAA..."
    known_hosts: Path  # one line: "[127.0.0.1]:PORT ssh-ed25519 AAAA..."
    directory: Path
    log_path: Path

    @property
    def spec(self) -> HostSpec:
        """``user@127.0.0.1:PORT`` as a HostSpec."""
        return HostSpec(hostname=self.host, user=self.user, port=self.port)

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_public_key}"

    def log(self) -> str:
        """What sshd wrote so far (useful in assertion messages)."""
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )

    def write_ssh_config(
        self,
        path: Path,
        alias: str = "bench",
        *,
        identity_file: Path | None = None,
        known_hosts: Path | None = None,
        extra_patterns: tuple[str, ...] = (),
    ) -> Path:
        """Write an ssh_config with ``Host ALIAS [extra_patterns]`` pointing at this sshd."""
        patterns = " ".join((alias, *extra_patterns))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"Host {patterns}\n"
            f"    HostName {self.host}\n"
            f"    Port {self.port}\n"
            f"    User {self.user}\n"
            f"    IdentityFile {identity_file or self.key_path}\n"
            f"    UserKnownHostsFile {known_hosts or self.known_hosts}\n"
            "    IdentitiesOnly yes\n"
        )
        return path


@dataclass(frozen=True)
class SSHHome:
    """A fake ``$HOME`` whose ``~/.ssh`` reaches the bench sshd by the alias ``bench``."""

    home: Path
    config: Path
    known_hosts: Path
    key_path: Path
    alias: str = "bench"


def write_ed25519_key(private_path: Path, comment: str) -> str:
    """Generate an ed25519 key pair in OpenSSH format; return the public key line."""
    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private_path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = f"{public.decode('ascii')} {comment}"
    private_path.with_name(private_path.name + ".pub").write_text(line + "\n")
    return line


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _sshd_config(
    directory: Path, port: int, host_key: Path, authorized_keys: Path
) -> str:
    return "\n".join(
        [
            f"Port {port}",
            f"ListenAddress {LOOPBACK}",
            f"HostKey {host_key}",
            f"PidFile {directory / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            # Tests run as root and must drive docker over SSH, as a deploy user would.
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding yes",
            "Subsystem sftp internal-sftp",
            "UseDNS no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            "",
        ]
    )


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"sshd exited with status {process.returncode} on start:\n{log_path.read_text()}"
            )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5) as connection:
                # sshd sends its banner first; reading it proves sshd (not someone else) answers.
                connection.settimeout(2.0)
                if connection.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    pytest.fail(
        f"sshd did not accept connections on {LOOPBACK}:{port} within {_START_TIMEOUT:g} s"
    )


@pytest.fixture(scope="session")
def sshd() -> Iterator[SSHBench]:
    """A running sshd on 127.0.0.1 that lets the current user in with a generated key."""
    if not os.path.exists(SSHD):
        pytest.fail(
            f"{SSHD} is missing: run scripts/setup (it installs openssh-server)"
        )
    # Debian's sshd refuses to start without its privilege separation directory, which
    # the init script normally creates (containers often lack it).
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    directory = Path(tempfile.mkdtemp(prefix="deployer-sshd-"))
    try:
        user = getpass.getuser()
        host_key = directory / "ssh_host_ed25519_key"
        host_public_key = " ".join(
            write_ed25519_key(host_key, "bench-host").split()[:2]
        )
        key_path = directory / "id_ed25519"
        user_public_key = write_ed25519_key(key_path, f"{user}@deployer-bench")
        authorized_keys = directory / "authorized_keys"
        authorized_keys.write_text(user_public_key + "\n")
        log_path = directory / "sshd.log"

        process: subprocess.Popen[bytes] | None = None
        port = 0
        for _attempt in range(3):
            port = free_port()
            config = directory / "sshd_config"
            config.write_text(_sshd_config(directory, port, host_key, authorized_keys))
            check = subprocess.run(
                [SSHD, "-t", "-f", str(config)],
                capture_output=True,
                text=True,
                check=False,
            )
            if check.returncode != 0:
                pytest.fail(f"sshd rejected the test config: {check.stderr.strip()}")
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log
                )
            time.sleep(0.05)
            if process.poll() is None:
                break
            # Lost a race for the port with another process: try another one.
        assert process is not None
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(f"[{LOOPBACK}]:{port} {host_public_key}\n")
        try:
            _wait_for_port(port, process, log_path)
            yield SSHBench(
                host=LOOPBACK,
                port=port,
                user=user,
                key_path=key_path,
                host_public_key=host_public_key,
                known_hosts=known_hosts,
                directory=directory,
                log_path=log_path,
            )
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def ssh_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sshd: SSHBench
) -> SSHHome:
    """A fake ``$HOME`` whose ~/.ssh/config reaches the bench sshd as ``bench`` (and 127.0.0.1)."""
    home = tmp_path / "home"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    key_path = ssh_dir / "id_ed25519"
    shutil.copyfile(sshd.key_path, key_path)
    key_path.chmod(0o600)
    shutil.copyfile(
        sshd.key_path.with_name(sshd.key_path.name + ".pub"), ssh_dir / "id_ed25519.pub"
    )
    known_hosts = ssh_dir / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line + "\n")
    config = sshd.write_ssh_config(
        ssh_dir / "config",
        "bench",
        identity_file=key_path,
        known_hosts=known_hosts,
        extra_patterns=(sshd.host,),
    )
    monkeypatch.setenv("HOME", str(home))
    # A developer's running ssh-agent must not decide whether a test can log in.
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return SSHHome(home=home, config=config, known_hosts=known_hosts, key_path=key_path)
