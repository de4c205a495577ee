"""Machines of their own on this one box: each with an address, a Docker engine, an sshd
and a filesystem of its own, for the many-host and Swarm tests.

Docker-in-Docker is refused here (no privileged containers), so a machine is made of
namespaces instead. One holder process (``unshare --net --mount``, then ``sleep``) owns
a network namespace, a mount namespace and a host name; a veth pair links its namespace to a bridge on
this machine (``10.231.0.0/24``; this machine is ``.1``, machines ``.2`` on); inside it
are mounted a private ``/run``, ``/var/lib/docker``, ``/etc/docker`` and ``/srv``. ``dockerd`` and ``sshd``
are started in both namespaces (``nsenter``), so the docker CLI an SSH session runs finds
that machine's engine at the usual ``/var/run/docker.sock``, the engine resolves bind
mounts in that machine's ``/srv``, and one machine's checkout or state is not another's.
The machines reach one another over the bridge (a swarm's gossip and overlay traffic too);
tests talk to them at their addresses, which the test run made.

Everything a machine has lives in one directory on this machine (``root``): ``srv`` is
what that machine sees as ``/srv``, so a test reads a machine's files directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.bench.sshd import SSHBench, write_ed25519_key

BRIDGE = "dplbr0"
SUBNET = "10.231.0"
PREFIX = 24
START_TIMEOUT = 60.0


class MachineError(RuntimeError):
    """A machine could not be made (the message says which step, with its output)."""


def _run(argv: Sequence[str], *, timeout: float = 60, check: bool = True,
         input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False)
    if check and result.returncode != 0:
        raise MachineError(f"{' '.join(argv)} exited {result.returncode}: {(result.stderr or result.stdout).strip()[-800:]}")
    return result


def _ensure_bridge() -> None:
    """The bridge the machines' veths join, with this machine at ``.1`` (idempotent)."""
    if _run(["ip", "link", "show", BRIDGE], check=False).returncode != 0:
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{SUBNET}.1/{PREFIX}", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    # Docker's FORWARD policy drops what it did not allow; frames between two machines on
    # the bridge pass through it when br_netfilter is loaded.
    rule = ["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]
    if _run(["iptables", "-C", "FORWARD", *rule], check=False).returncode != 0:
        _run(["iptables", "-I", "FORWARD", *rule])


@dataclass
class Machine:
    """One machine: its address, its engine's socket (as seen from here), its files."""

    name: str
    index: int  # its address is SUBNET.(index + 1)
    root: Path
    holder: subprocess.Popen[bytes] | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index + 1}"

    @property
    def veth(self) -> str:
        return f"dplm{self.index}"

    @property
    def srv(self) -> Path:
        """What the machine sees as ``/srv``."""
        return self.root / "srv"

    @property
    def docker_socket(self) -> Path:
        """The machine's engine socket, reachable from this machine."""
        return self.root / "run" / "docker.sock"

    @property
    def pid(self) -> int:
        assert self.holder is not None
        return self.holder.pid

    def enter(self, *argv: str) -> list[str]:
        """``argv`` run inside the machine (its network and its mounts)."""
        return ["nsenter", "--target", str(self.pid), "--net", "--mount", "--uts", "--", *argv]

    def run(self, *argv: str, timeout: float = 60, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002
        return _run(self.enter(*argv), timeout=timeout, check=check, input=input)

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this machine's engine."""
        return _run(["docker", "-H", f"unix://{self.docker_socket}", *args], timeout=timeout, check=check)

    # ------------------------------------------------------------------ life cycle

    def start_namespaces(self) -> None:
        """The holder and its address (the veth that claims the index)."""
        for sub in ("run", "docker", "etc-docker", "srv", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # The holder: new network and mount namespaces, mounts private from the start.
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--uts", "--propagation", "private", "sleep", "infinity"],
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            if time.monotonic() > deadline or self.holder.poll() is not None:
                raise MachineError(f"{self.name}: unshare did not make its namespaces")
            time.sleep(0.02)
        self._network()

    def start(self, *, sshd_config: Callable[[Machine], str] | None = None) -> None:
        """Mounts, the engine, and sshd when a config is given (after :meth:`start_namespaces`)."""
        # /run private (dockerd's exec-root, pid files, containerd's sockets, sshd's privsep
        # directory), the engine's data, and /srv: the machine's own.
        self.run("mount", "--bind", str(self.root / "run"), "/run")
        self.run("mkdir", "-p", "/run/sshd", "/run/lock")
        self.run("mount", "--bind", str(self.root / "docker"), "/var/lib/docker")
        # The engine's identity (20.10 keeps it in /etc/docker/key.json) is the machine's too.
        self.run("mount", "--bind", str(self.root / "etc-docker"), "/etc/docker")
        self.run("hostname", self.name)
        self.run("mount", "--bind", str(self.srv), "/srv")
        # Name lookups go to this machine's end of the bridge, where nothing answers: a lookup
        # of a name no container holds (the engine asking a registry for an image it has
        # under a name) fails at once instead of leaving this box.
        resolv = self.root / "resolv.conf"
        resolv.write_text(f"nameserver {SUBNET}.1\n")
        self.run("mount", "--bind", str(resolv), "/etc/resolv.conf")
        self._dockerd()
        if sshd_config is not None:
            self._sshd(sshd_config(self))

    def _network(self) -> None:
        _ensure_bridge()
        # An address a machine that stopped had is still in this machine's neighbour table with
        # that machine's MAC: until the entry goes stale (tens of seconds under load) nothing
        # sent to the new machine reaches it. Forget it.
        _forget_neighbour(self.address)
        _run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", str(self.pid)])
        _run(["ip", "link", "set", self.veth, "master", BRIDGE, "up"])
        for argv in (["ip", "link", "set", "lo", "up"],
                     ["ip", "addr", "add", f"{self.address}/{PREFIX}", "dev", "eth0"],
                     ["ip", "link", "set", "eth0", "up"],
                     ["ip", "route", "add", "default", "via", f"{SUBNET}.1"]):
            _run(["nsenter", "--target", str(self.pid), "--net", "--", *argv])

    def _spawn(self, argv: Sequence[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.root / "log" / log, "ab") as out:
            process = subprocess.Popen(self.enter(*argv), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.processes.append(process)
        return process

    def _dockerd(self) -> None:
        process = self._spawn(["dockerd", "--host", "unix:///run/docker.sock", "--data-root", "/var/lib/docker",
                               "--exec-root", "/run/docker", "--pidfile", "/run/docker.pid"], "dockerd.log")
        deadline = time.monotonic() + START_TIMEOUT
        while self.docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=10).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise MachineError(f"{self.name}: dockerd did not start:\n{self.log('dockerd.log')}")
            time.sleep(0.2)

    def _sshd(self, config: str) -> None:
        path = self.root / "sshd_config"
        path.write_text(config)
        process = self._spawn(["/usr/sbin/sshd", "-D", "-e", "-f", str(path)], "sshd.log")
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection((self.address, 22), timeout=0.5) as conn:
                conn.settimeout(2)
                if conn.recv(64).startswith(b"SSH-"):
                    return
            if process.poll() is not None or time.monotonic() > deadline:
                raise MachineError(f"{self.name}: sshd did not answer on {self.address}:22:\n{self.log('sshd.log')}")
            time.sleep(0.05)

    def log(self, name: str) -> str:
        path = self.root / "log" / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def load_images(self, *images: str) -> None:
        """Copy images from this machine's engine to the machine's (``docker save | load``)."""
        save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "-H", f"unix://{self.docker_socket}", "load", "-q"], stdin=save.stdout,
                              capture_output=True, text=True, timeout=600, check=False)
        assert save.stdout is not None
        save.stdout.close()
        if save.wait(600) != 0 or load.returncode != 0:
            raise MachineError(f"{self.name}: loading {', '.join(images)} failed: {load.stderr.strip()[-500:]}")

    def stop(self) -> None:
        """Everything of the machine ends: its containers, engine, sshd, mounts and address."""
        if self.holder is None:
            return
        with contextlib.suppress(Exception):
            # Out of any swarm first, or it starts the tasks removed next again.
            self.docker("swarm", "leave", "--force", check=False, timeout=30)
            ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=120)
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        # The namespaces go with their last process; their mounts with them.
        self.holder.kill()
        self.holder.wait(10)
        self.holder = None
        _run(["ip", "link", "del", self.veth], check=False)
        _forget_neighbour(self.address)
        # The engine's files are root's, some still mounted while containerd's shims exit.
        shutil.rmtree(self.root, ignore_errors=True)


def _forget_neighbour(address: str) -> None:
    _run(["ip", "neigh", "flush", "to", address, "dev", BRIDGE], check=False)


ALLOCATION_LOCK = "/run/deployer-bench-machines.lock"
MAX_MACHINES = 200


@contextlib.contextmanager
def _allocating() -> Iterator[None]:
    """Several test processes (xdist workers) make machines at once: one at a time picks."""
    with open(ALLOCATION_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_index() -> int:
    """The lowest index no machine uses (its veth names it; call it while allocating)."""
    used = set()
    for line in _run(["ip", "-o", "link", "show"]).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith("dplm") and name[4:].isdigit():
            used.add(int(name[4:]))
    for index in range(1, MAX_MACHINES + 1):
        if index not in used:
            return index
    raise MachineError(f"all {MAX_MACHINES} machine addresses are in use")


@contextlib.contextmanager
def machines(count: int, root: Path, *, sshd_config: Callable[[Machine], str] | None = None) -> Iterator[list[Machine]]:
    """``count`` machines, ``m1`` … (their indexes, so addresses, are the first free ones)."""
    made: list[Machine] = []
    try:
        for number in range(1, count + 1):
            with _allocating():
                index = _free_index()
                machine = Machine(f"m{number}", index, root / f"m{number}")
                made.append(machine)
                machine.start_namespaces()
            machine.start(sshd_config=sshd_config)
        yield made
    finally:
        for machine in made:
            machine.stop()


def sshd_config(bench: SSHBench, directory: Path) -> Callable[[Machine], str]:
    """An sshd config for each machine, on its address, port 22, letting the bench key in as
    any user (root included: the tests drive that machine's docker over SSH)."""
    authorized = directory / "authorized_keys"
    authorized.write_text(bench.key_path.with_name(bench.key_path.name + ".pub").read_text())

    def config(machine: Machine) -> str:
        host_key = machine.root / "ssh_host_ed25519_key"
        if not host_key.exists():
            write_ed25519_key(host_key, f"{machine.name}-host")
        return "\n".join([
            "Port 22", f"ListenAddress {machine.address}", f"HostKey {host_key}", "PidFile /run/sshd.pid",
            f"AuthorizedKeysFile {authorized} .ssh/authorized_keys", "PubkeyAuthentication yes",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "PermitRootLogin prohibit-password", "AllowTcpForwarding yes", "Subsystem sftp internal-sftp",
            "UseDNS no", "PrintMotd no", "LogLevel VERBOSE", "",
        ])

    return config


def known_hosts(machines: Sequence[Machine], path: Path) -> Path:
    """A known_hosts file naming every machine's host key at its address."""
    lines = []
    for machine in machines:
        public = (machine.root / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        lines.append(f"{machine.address} {' '.join(public)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def machine_factory(sshd: SSHBench) -> Iterator[Callable[[int], list[Machine]]]:
    """Make ``count`` machines with sshd on port 22 of their addresses; all stop when the
    module ends."""
    directory = Path(tempfile.mkdtemp(prefix="deployer-machines-"))
    stack = contextlib.ExitStack()
    sets = itertools.count(1)

    def make(count: int) -> list[Machine]:
        root = directory / f"set{next(sets)}"
        made = stack.enter_context(machines(count, root, sshd_config=sshd_config(sshd, directory)))
        known_hosts(made, root / "known_hosts")
        return made

    try:
        yield make
    finally:
        stack.close()
        shutil.rmtree(directory, ignore_errors=True)
