"""A real OpenSSH server on 127.0.0.1 for the test run (pytest plugin).

``sshd`` (session scope) runs ``/usr/sbin/sshd -D -e`` with its own config, host key and
one authorized user key, all in a temporary directory, on a free loopback port; it lets
the current user (root in CI, because tests drive docker over SSH) in with that key only.

``sshd_factory`` (session scope) starts more of them with other options: SFTP on or off,
``AllowTcpForwarding``, ``LogLevel`` (``DEBUG1`` logs each forwarded connection, for jump
hosts), extra sshd_config lines; every instance lets the same key in, and is stopped at the
end of the session.

``ssh_home`` (function scope) makes a fake ``$HOME`` with ``.ssh/config``, ``known_hosts``
and the key, so code that honours ``~/.ssh/config`` is tested as a user would run it.

``bench_user`` (session scope) is a non-root Unix user in the group that owns the Docker
socket, whose ``~/.ssh/authorized_keys`` holds the bench key: deploying as a normal
docker-group user, as production does.

``silent`` (function scope) accepts TCP connections on 127.0.0.1 and never says a word (a
hung sshd, a tarpit): what a client must time out on, clearly. ``SilentServer(greeting)``
says one thing first and then nothing.

Note: the OpenSSH ``ssh`` binary reads the *passwd* home, not ``$HOME``; paramiko uses
``$HOME``. Tests that shell out to ``ssh`` should pass ``-F`` and the key explicitly.
"""

from __future__ import annotations

import getpass
import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deployer.hosts.spec import HostSpec

SSHD = "/usr/sbin/sshd"
LOOPBACK = "127.0.0.1"
_START_TIMEOUT = 15.0
DOCKER_SOCKET = "/var/run/docker.sock"
BENCH_USER = "deployer-bench"


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
    pid: int = 0  # the listening sshd (each connection gets child processes of it)
    options: dict[str, object] = field(default_factory=dict, compare=False)

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

    def session_pids(self, client_port: int) -> list[int]:
        """The sshd processes serving the connection that comes from ``client_port``."""
        listing = subprocess.run(
            ["ss", "-Htnp", "state", "established", f"( sport = :{self.port} and dport = :{client_port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sorted({int(pid) for pid in re.findall(r"pid=(\d+)", listing)} - {self.pid})

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


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never says a word (a hung sshd, a tarpit) —
    or only ``greeting`` (another service's line, an SSH banner with no key exchange after it)."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.sock = socket.create_server((LOOPBACK, 0))
        self.port: int = self.sock.getsockname()[1]
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
                if self.greeting:
                    conn.sendall(self.greeting)
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def _sshd_config(
    directory: Path,
    port: int,
    host_key: Path,
    authorized_keys: Path,
    *,
    sftp: bool = True,
    allow_tcp_forwarding: bool = True,
    log_level: str = "VERBOSE",
    extra: Sequence[str] = (),
) -> str:
    # sshd takes the first value it reads for a keyword: extra lines come first, so they
    # win over the defaults below.
    lines = [
        *extra,
        f"Port {port}",
        f"ListenAddress {LOOPBACK}",
        f"HostKey {host_key}",
        f"PidFile {directory / 'sshd.pid'}",
        # The bench key logs in as any user; a user's own authorized_keys works too.
        f"AuthorizedKeysFile {authorized_keys} .ssh/authorized_keys",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        # Tests run as root and must drive docker over SSH, as a deploy user would.
        "PermitRootLogin prohibit-password",
        f"AllowTcpForwarding {'yes' if allow_tcp_forwarding else 'no'}",
    ]
    if sftp:
        lines.append("Subsystem sftp internal-sftp")
    lines += ["UseDNS no", "PrintMotd no", f"LogLevel {log_level}", ""]
    return "\n".join(lines)


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


def _check_sshd_available() -> None:
    if not os.path.exists(SSHD):
        pytest.fail(
            f"{SSHD} is missing: run scripts/setup (it installs openssh-server)"
        )
    # Debian's sshd refuses to start without its privilege separation directory, which
    # the init script normally creates (containers often lack it).
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)


@dataclass
class _RunningSSHD:
    bench: SSHBench
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start_sshd(
    directory: Path,
    key_path: Path,
    user_public_key: str,
    *,
    sftp: bool = True,
    allow_tcp_forwarding: bool = True,
    log_level: str = "VERBOSE",
    extra: Sequence[str] = (),
) -> _RunningSSHD:
    """Start one sshd in ``directory`` (its own host key) letting ``key_path`` in."""
    directory.mkdir(parents=True, exist_ok=True)
    user = getpass.getuser()
    host_key = directory / "ssh_host_ed25519_key"
    host_public_key = " ".join(write_ed25519_key(host_key, "bench-host").split()[:2])
    authorized_keys = directory / "authorized_keys"
    authorized_keys.write_text(user_public_key + "\n")
    log_path = directory / "sshd.log"

    process: subprocess.Popen[bytes] | None = None
    port = 0
    for _attempt in range(3):
        port = free_port()
        config = directory / "sshd_config"
        config.write_text(
            _sshd_config(
                directory,
                port,
                host_key,
                authorized_keys,
                sftp=sftp,
                allow_tcp_forwarding=allow_tcp_forwarding,
                log_level=log_level,
                extra=extra,
            )
        )
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
    running = _RunningSSHD(
        SSHBench(
            host=LOOPBACK,
            port=port,
            user=user,
            key_path=key_path,
            host_public_key=host_public_key,
            known_hosts=known_hosts,
            directory=directory,
            log_path=log_path,
            pid=process.pid,
            options={
                "sftp": sftp,
                "allow_tcp_forwarding": allow_tcp_forwarding,
                "log_level": log_level,
                "extra": tuple(extra),
            },
        ),
        process,
    )
    try:
        _wait_for_port(port, process, log_path)
    except BaseException:
        running.stop()
        raise
    return running


@pytest.fixture(scope="session")
def sshd() -> Iterator[SSHBench]:
    """A running sshd on 127.0.0.1 that lets the current user in with a generated key."""
    _check_sshd_available()
    directory = Path(tempfile.mkdtemp(prefix="deployer-sshd-"))
    try:
        key_path = directory / "id_ed25519"
        user_public_key = write_ed25519_key(key_path, f"{getpass.getuser()}@deployer-bench")
        running = _start_sshd(directory, key_path, user_public_key)
        try:
            yield running.bench
        finally:
            running.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class SSHDFactory:
    """Starts extra sshd instances on 127.0.0.1, all letting the bench ``sshd``'s key in."""

    def __init__(self, base: SSHBench, directory: Path) -> None:
        self._base = base
        self._directory = directory
        self._running: list[_RunningSSHD] = []

    def __call__(
        self,
        *,
        sftp: bool = True,
        allow_tcp_forwarding: bool = True,
        log_level: str = "VERBOSE",
        extra: Sequence[str] = (),
    ) -> SSHBench:
        """Start an sshd: ``sftp`` off removes the Subsystem line; ``log_level="DEBUG1"``
        logs every forwarded connection; ``extra`` lines (e.g. ``"SetEnv PATH=/bin"``,
        ``"MaxSessions 2"``) come first in sshd_config and so take precedence."""
        directory = self._directory / f"sshd-{len(self._running) + 1}"
        public_key = self._base.key_path.with_name(self._base.key_path.name + ".pub").read_text().strip()
        running = _start_sshd(
            directory,
            self._base.key_path,
            public_key,
            sftp=sftp,
            allow_tcp_forwarding=allow_tcp_forwarding,
            log_level=log_level,
            extra=extra,
        )
        self._running.append(running)
        return running.bench

    def stop(self, bench: SSHBench) -> None:
        """Stop one instance early (its connections die with it)."""
        for running in self._running:
            if running.bench is bench:
                running.stop()

    def stop_all(self) -> None:
        for running in self._running:
            running.stop()


@pytest.fixture(scope="session")
def sshd_factory(sshd: SSHBench) -> Iterator[SSHDFactory]:
    """Start more sshd instances with other options (see :class:`SSHDFactory`)."""
    directory = Path(tempfile.mkdtemp(prefix="deployer-sshd-more-"))
    factory = SSHDFactory(sshd, directory)
    try:
        yield factory
    finally:
        factory.stop_all()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class BenchUser:
    """A non-root user in the Docker socket's group, reachable with the bench key."""

    name: str
    uid: int
    gid: int
    home: Path
    docker_group: str
    key_path: Path

    def spec(self, bench: SSHBench) -> HostSpec:
        """``NAME@127.0.0.1:PORT`` on one of the bench sshd instances."""
        return HostSpec(hostname=bench.host, user=self.name, port=bench.port)


@pytest.fixture(scope="session")
def bench_user(sshd: SSHBench) -> BenchUser:
    """The user ``deployer-bench`` (created if missing): not root, in the group that owns
    the Docker socket, the bench key in its ``~/.ssh/authorized_keys``."""
    if os.geteuid() != 0:
        pytest.fail("bench_user creates a Unix user and needs root (CI and the bench run as root)")
    try:
        docker_group = grp.getgrgid(os.stat(DOCKER_SOCKET).st_gid).gr_name
    except FileNotFoundError:
        pytest.fail(f"{DOCKER_SOCKET} is missing: start the Docker engine (scripts/setup)")
    if docker_group == "root":
        pytest.fail(
            f"{DOCKER_SOCKET} belongs to the group root: a non-root user cannot be given "
            "access; start dockerd with --group docker (scripts/setup does)"
        )
    try:
        entry = pwd.getpwnam(BENCH_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", "--groups", docker_group, BENCH_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(BENCH_USER)
    if BENCH_USER not in grp.getgrnam(docker_group).gr_mem:
        subprocess.run(["usermod", "-aG", docker_group, BENCH_USER], check=True, capture_output=True)
    # useradd leaves the account locked ("!"), and sshd without PAM refuses locked accounts
    # even for key logins: "*" means "no password", which is not locked.
    subprocess.run(["usermod", "-p", "*", BENCH_USER], check=True, capture_output=True)
    home = Path(entry.pw_dir)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    public_key = sshd.key_path.with_name(sshd.key_path.name + ".pub").read_text()
    authorized = ssh_dir / "authorized_keys"
    # Append: several test sessions (and xdist workers) share this user, each with its key.
    known = authorized.read_text() if authorized.exists() else ""
    if public_key.strip() not in known:
        authorized.write_text(known + ("" if not known or known.endswith("\n") else "\n") + public_key)
    for path in (home, ssh_dir, authorized):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    authorized.chmod(0o600)
    return BenchUser(
        name=BENCH_USER,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        home=home,
        docker_group=docker_group,
        key_path=sshd.key_path,
    )


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
