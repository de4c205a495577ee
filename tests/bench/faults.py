"""Fault injection for end-to-end tests: users writing while a release runs, a release
running in the background, ways to find the moment a step is under way, and faults.

* :class:`Writer` POSTs users to the example app (``POST /api/users``) without pause and
  remembers every write the app acknowledged (201 with an id): after any fault, each of
  them must still be in the database.
* :class:`Background` is ``deployer ARGS`` started like a user starts it, its stderr read
  line by line as it comes (progress lines ``> STEP``), so a test can act at a step.
* Moments inside a step: :func:`wait_process` (a command of the step runs on the host:
  the bench sshd is on this machine, so the server's processes are ours to see) and
  :func:`wait_backend` (a database session doing something, from ``pg_stat_activity``).
* Faults: a signal to deployer (:meth:`Background.signal`), the SSH connection cut
  (:func:`cut_ssh`: the sshd processes serving deployer's connection killed), the db
  container killed (:func:`kill_container`), a full disk (:func:`small_tmpfs`).
* What a user checks afterwards: :func:`running_heads` (the migration heads of the code the
  web container runs, asked of that container), :func:`lease_alive`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.deployment import Deployment
from tests.bench.sshd import SSHBench

# --------------------------------------------------------------------------- users writing


class Writer:
    """Users signing up through the app's API while a release runs.

    Every request uses a new connection (as browsers behind a proxy do) and waits at most
    ``timeout`` seconds; only a ``201`` with an id counts as acknowledged. A refused
    connection or a 5xx is a failed write the user saw fail — nothing was promised.
    """

    def __init__(self, port: int, *, prefix: str | None = None, interval: float = 0.05, timeout: float = 5.0) -> None:
        self.port = port
        self.prefix = prefix or f"w{secrets.token_hex(3)}"
        self.interval = interval
        self.timeout = timeout
        self.acknowledged: dict[str, int] = {}  # email -> id the app answered with
        self.failed = 0
        self.attempts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _post(self, email: str) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            body = json.dumps({"email": email, "name": "fault-matrix writer"})
            connection.request("POST", "/api/users", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
            try:
                return response.status, json.loads(data) if data else {}
            except ValueError:
                return response.status, {}
        finally:
            connection.close()

    def _loop(self) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            email = f"{self.prefix}-{number}@example.test"
            self.attempts += 1
            try:
                status, data = self._post(email)
            except (OSError, http.client.HTTPException):
                status, data = 0, {}
            if status == 201 and isinstance(data.get("id"), int):
                self.acknowledged[email] = data["id"]
            else:
                self.failed += 1
            self._stop.wait(self.interval)

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._loop, name=f"writer-{self.prefix}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Writer:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
        return self

    def missing(self, rows: Sequence[tuple[str, int]], promised: Mapping[str, int] | None = None) -> list[str]:
        """Acknowledged writes absent from ``rows`` (email, id) — each one a lost promise.

        While the writer still runs, pass ``promised`` (:meth:`promised`, taken before the
        rows were read): a write acknowledged after the read is not in them, and not lost.
        """
        present = {(email, int(id_)) for email, id_ in rows}
        promises = self.acknowledged if promised is None else promised
        return sorted(email for email, id_ in promises.items() if (email, id_) not in present)

    def promised(self) -> dict[str, int]:
        """The writes acknowledged so far (a copy)."""
        return dict(self.acknowledged)

    def summary(self) -> str:
        return f"{len(self.acknowledged)} acknowledged, {self.failed} failed of {self.attempts} writes"


@contextlib.contextmanager
def writing(port: int, **options: object) -> Iterator[Writer]:
    """A :class:`Writer` for the duration of the block (stopped on every path)."""
    writer = Writer(port, **options).start()  # type: ignore[arg-type]
    try:
        yield writer
    finally:
        writer.stop()


# --------------------------------------------------------------------------- deployer in the background


@dataclass
class Background:
    """``deployer ARGS`` run by a user in a terminal: stdout and stderr read as they come."""

    d: Deployment
    args: tuple[str, ...]
    process: subprocess.Popen[str] = field(init=False)
    lines: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, stderr line)
    stdout: list[str] = field(default_factory=list)
    started: float = field(default=0.0)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _readers: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            self.d.deployer_argv(*self.args), cwd=self.d.laptop, env=self.d.environ(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, bufsize=1,
        )
        for stream, sink in ((self.process.stderr, self._stderr_line), (self.process.stdout, self.stdout.append)):
            thread = threading.Thread(target=self._read, args=(stream, sink), daemon=True)
            thread.start()
            self._readers.append(thread)

    def _stderr_line(self, line: str) -> None:
        with self._changed:
            self.lines.append((time.monotonic(), line))
            self._changed.notify_all()

    def _read(self, stream, sink: Callable[[str], None]) -> None:  # noqa: ANN001 - a text stream
        for line in stream:
            sink(line)
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stderr(self) -> str:
        return "".join(line for _, line in self.lines)

    @property
    def output(self) -> str:
        return "".join(self.stdout) + self.stderr

    def wait_line(self, pattern: str, timeout: float = 120.0, *, after: int = 0) -> int:
        """Wait for a stderr line matching the regular expression; returns its index.

        Fails the test (with everything printed so far) when deployer exits or the time passes first.
        """
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(after, len(self.lines)):
                    if compiled.search(self.lines[index][1]):
                        return index
                if self.process.poll() is not None and not any(t.is_alive() for t in self._readers):
                    raise AssertionError(f"deployer exited {self.process.returncode} before printing /{pattern}/:\n{self.output}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line /{pattern}/ from deployer within {timeout:.0f}s:\n{self.output}")
                self._changed.wait(min(left, 0.2))

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL: nothing of deployer runs after this (no handler, no cleanup)."""
        self.signal(signal.SIGKILL)

    def finish(self, timeout: float = 300.0) -> int:
        """Wait for deployer to end; its exit code (negative: the signal that killed it)."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
            raise AssertionError(f"deployer did not end within {timeout:.0f}s:\n{self.output}") from None
        for thread in self._readers:
            thread.join(timeout=10)
        return code


# --------------------------------------------------------------------------- moments inside a step


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                argv = [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
        except OSError:
            continue
        if argv:
            yield int(entry.name), argv


def find_processes(*contains: str, exact: Sequence[str] = ()) -> list[tuple[int, list[str]]]:
    """Processes on this machine whose argv holds each ``contains`` (in some argument) and
    each ``exact`` (as a whole argument)."""
    return [(pid, argv) for pid, argv in _processes()
            if all(any(n in a for a in argv) for n in contains) and all(e in argv for e in exact)]


def wait_process(*contains: str, exact: Sequence[str] = (), timeout: float = 120.0, alive: Background | None = None) -> int:
    """Wait until such a process runs (see :func:`find_processes`); its pid."""
    deadline = time.monotonic() + timeout
    while True:
        found = find_processes(*contains, exact=exact)
        if found:
            return found[0][0]
        if alive is not None and alive.process.poll() is not None:
            raise AssertionError(f"deployer exited before a process {contains} {exact} ran:\n{alive.output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no process {contains} {exact} within {timeout:.0f}s" + (f":\n{alive.output}" if alive else ""))
        time.sleep(0.02)


def backends(d: Deployment, application_like: str) -> list[tuple]:
    """(pid, application_name, state, wait_event_type, query) of the database sessions named like the pattern."""
    return d.sql(
        "SELECT pid, application_name, state, coalesce(wait_event_type, ''), query FROM pg_stat_activity "
        "WHERE application_name LIKE :name AND pid <> pg_backend_pid()",
        name=application_like,
    )


def wait_backend(d: Deployment, application_like: str, query_like: str = "%", *, timeout: float = 120.0,
                 alive: Background | None = None) -> tuple:
    """Wait until a database session named like ``application_like`` runs a query like ``query_like``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):  # the database may be starting
            rows = d.sql(
                "SELECT pid, application_name, state, query FROM pg_stat_activity "
                "WHERE application_name LIKE :name AND query LIKE :query AND state = 'active'",
                name=application_like, query=query_like,
            )
            if rows:
                return rows[0]
        if alive is not None and alive.process.poll() is not None:
            raise AssertionError(f"deployer exited before a session {application_like!r} ran {query_like!r}:\n{alive.output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no session {application_like!r} running {query_like!r} within {timeout:.0f}s"
                                 + (f":\n{alive.output}" if alive else ""))
        time.sleep(0.1)


# --------------------------------------------------------------------------- faults


def client_ports(pid: int, server_port: int) -> list[int]:
    """The local ports of ``pid``'s TCP connections to ``server_port`` on loopback."""
    listing = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( dport = :{server_port} )"],
        capture_output=True, text=True, check=True,
    ).stdout
    ports = []
    for line in listing.splitlines():
        if f"pid={pid}," not in line:
            continue
        fields = line.split()
        local = fields[2] if len(fields) > 2 else ""
        with contextlib.suppress(ValueError):
            ports.append(int(local.rsplit(":", 1)[1]))
    return sorted(set(ports))


def cut_ssh(sshd: SSHBench, run: Background) -> list[int]:
    """Kill the sshd processes serving deployer's SSH connection(s): the connection is cut
    at the server, as when a network or the server's sshd goes away. Returns their pids."""
    killed: list[int] = []
    ports = client_ports(run.pid, sshd.port)
    assert ports, f"deployer (pid {run.pid}) has no connection to sshd port {sshd.port}"
    for port in ports:
        for pid in sshd.session_pids(port):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    assert killed, f"no sshd process serves deployer's connections {ports}"
    return killed


def kill_container(d: Deployment, service: str) -> str:
    """``docker kill`` the service's container (SIGKILL: a crash, not a stop)."""
    ids = d.compose("ps", "-q", service).stdout.split()
    assert ids, f"no {service} container runs"
    subprocess.run(["docker", "kill", ids[0]], capture_output=True, text=True, check=True)
    return ids[0]


@contextlib.contextmanager
def small_tmpfs(size: str = "64k") -> Iterator[Path]:
    """A directory on a tmpfs of ``size``: a disk that fills up (needs root, as the bench runs)."""
    directory = Path(tempfile.mkdtemp(prefix="deployer-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
                   check=True, capture_output=True, text=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)
        with contextlib.suppress(OSError):
            directory.rmdir()


# --------------------------------------------------------------------------- what a user checks


# Run with python3 in the web container: the heads of the migration scripts it holds
# (read with ast, as alembic's own revision map would link them; no app import needed).
_HEADS = """
import ast, glob, os, sys
revisions, parents = set(), set()
for path in glob.glob(os.path.join(sys.argv[1], "*.py")):
    values = {}
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    if "revision" in values:
        revisions.add(values["revision"])
        down = values.get("down_revision")
        parents.update(down if isinstance(down, (tuple, list)) else [down] if down else [])
print(" ".join(sorted(revisions - parents)))
"""


def running_heads(d: Deployment, service: str = "web", versions: str = "/app/migrations/versions") -> tuple[str, ...]:
    """The migration heads of the code the running web container holds, asked of that container."""
    ids = d.compose("ps", "-q", "--status", "running", service).stdout.split()
    assert ids, f"no running {service} container:\n{d.logs()}"
    result = subprocess.run(["docker", "exec", ids[0], "python3", "-c", _HEADS, versions],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tuple(result.stdout.split())


def lease_alive(d: Deployment) -> bool:
    """Whether a process holds the environment's flock (a live owner's lease)."""
    lock = d.state_path / "lock"
    if not lock.exists():
        return False
    return subprocess.run(["flock", "-n", str(lock), "true"], capture_output=True).returncode != 0


def wait_lease_gone(d: Deployment, timeout: float = 40.0) -> float:
    """Seconds until no process holds the lease (its owner died: the holder must notice)."""
    start = time.monotonic()
    while lease_alive(d):
        if time.monotonic() - start > timeout:
            raise AssertionError(f"the lease is still held {timeout:.0f}s after its owner died")
        time.sleep(0.1)
    return time.monotonic() - start


def leftover_containers(name: str) -> list[str]:
    """One-off migration / downgrade containers of the app still on the engine."""
    out = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}", "--filter", f"name={name}-"],
                         capture_output=True, text=True, check=True).stdout.split()
    return [n for n in out if "-migrate-" in n or "-downgrade-" in n]


def project_containers(name: str) -> str:
    """The compose project's containers as ``docker ps -a`` shows them (for failure messages)."""
    return subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}\t{{.Status}}\t{{.Image}}",
                           "--filter", f"label=com.docker.compose.project={name}"],
                          capture_output=True, text=True, check=False).stdout


# --------------------------------------------------------------------------- restore verification


def scratch_containers(d: Deployment) -> list[dict]:
    """The scratch databases of the environment's restore verifications (``docker inspect``
    of each, stopped ones included)."""
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=deployer.scratch={d.state_path}"],
                         capture_output=True, text=True, check=True).stdout.split()
    if not ids:
        return []
    out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=False).stdout
    return json.loads(out) if out.strip().startswith("[") else []


def wait_scratch(d: Deployment, *, timeout: float = 120.0, alive: Background | None = None,
                 running: Callable[[dict], bool] = lambda c: c["State"]["Running"]) -> dict:
    """The environment's scratch container once it runs (``running`` decides), inspected."""
    deadline = time.monotonic() + timeout
    while True:
        found = [c for c in scratch_containers(d) if running(c)]
        if found:
            return found[0]
        if alive is not None and alive.process.poll() is not None:
            raise AssertionError(f"deployer exited {alive.process.returncode} before a scratch database ran:\n{alive.output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no scratch database of {d.name} ran within {timeout:.0f}s")
        time.sleep(0.05)


def wait_no_scratch(d: Deployment, timeout: float = 40.0) -> float:
    """Seconds until no scratch container of the environment is left (its owner's cleanup,
    or the lease holder's once the owner died)."""
    start = time.monotonic()
    while scratch_containers(d):
        if time.monotonic() - start > timeout:
            raise AssertionError(f"scratch containers still there {timeout:.0f}s later: "
                                 f"{[c['Name'] for c in scratch_containers(d)]}")
        time.sleep(0.1)
    return time.monotonic() - start


def volume_exists(name: str) -> bool:
    return subprocess.run(["docker", "volume", "inspect", name], capture_output=True).returncode == 0
