"""Shared parts of the benchmark scripts: a throwaway app deployment, an sshd, a probe, statistics.

Everything here is plain Python timing on the real engine. A :class:`Stack` is an origin
repository, a "laptop" clone holding a deploy.toml and an empty server directory, deployed
by the real ``deployer`` command (a subprocess, as a user runs it). :meth:`Stack.cleanup`
removes every container, volume, network, image tag and directory the stack made; the
scripts call it in a ``finally`` so a failed run leaves nothing behind.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from deployer.commands.compose import V2, Compose  # noqa: E402
from tests.bench.deployment import add_migration  # noqa: E402
from tests.bench.docker import HAPROXY_IMAGE, POSTGRES_IMAGE, PYTHON_IMAGE, free_port  # noqa: E402
from tests.bench.gitrepos import git, make_origin  # noqa: E402

BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-base-images"
FIRST_HEAD = "56b6764ae94a"  # the example app's newest migration


# --------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_runs(values: Sequence[float], unit: str = "s", digits: int = 2) -> str:
    """``median (min–max, n=N)``."""
    if not values:
        return "n/a"
    return f"{median(values):.{digits}f} {unit} ({min(values):.{digits}f}–{max(values):.{digits}f}, n={len(values)})"


# --------------------------------------------------------------------------- the machine


def machine_info() -> dict[str, str]:
    """Cores, memory, CPU model, docker and compose versions, load: the table's header."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass

    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout.strip()
        except OSError:
            return "missing"

    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "docker": out(["docker", "version", "--format", "{{.Server.Version}}"]),
        "compose": out(["docker", "compose", "version", "--short"]),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def load_now() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- availability probe


@dataclass(frozen=True)
class Sample:
    start: float
    end: float
    ok: bool
    detail: str


@dataclass(frozen=True)
class Availability:
    requests: int
    failed: int
    longest_gap: float  # seconds without a successful answer around failed requests
    slowest: float  # the slowest successful answer (a queued connection during start-up)

    def row(self) -> str:
        return f"{self.failed}/{self.requests} failed, longest unavailable {self.longest_gap:.2f} s, slowest answer {self.slowest:.2f} s"


class Probe:
    """GET ``url`` every ``interval`` seconds in a thread, recording each answer."""

    def __init__(self, url: str, interval: float = 0.02, timeout: float = 2.0) -> None:
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            start = time.time()
            try:
                with urllib.request.urlopen(self.url, timeout=self.timeout) as response:
                    response.read()
                    ok, detail = response.status == 200, f"HTTP {response.status}"
            except urllib.error.HTTPError as error:
                ok, detail = False, f"HTTP {error.code}"
            except (OSError, ValueError) as error:  # refused, reset, timeout, bad status line
                ok, detail = False, type(error).__name__
            self.samples.append(Sample(start, time.time(), ok, detail))
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def result(self) -> Availability:
        return summarize(self.samples)


def summarize(samples: Sequence[Sample]) -> Availability:
    """Failed requests, and the longest time between two successful answers that had failures between them."""
    failed = sum(1 for s in samples if not s.ok)
    longest = 0.0
    last_ok_end: float | None = samples[0].start if samples else None
    failing = False
    for sample in samples:
        if sample.ok:
            if failing and last_ok_end is not None:
                longest = max(longest, sample.end - last_ok_end)
            failing = False
            last_ok_end = sample.end
        else:
            failing = True
    if failing and last_ok_end is not None and samples:
        longest = max(longest, samples[-1].end - last_ok_end)
    slowest = max((s.end - s.start for s in samples if s.ok), default=0.0)
    return Availability(len(samples), failed, longest, slowest)


# --------------------------------------------------------------------------- base images


def ensure_bench_images() -> None:
    """Build the offline base images once (idempotent; a no-op when they exist)."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise SystemExit(f"scripts/build-base-images failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


# --------------------------------------------------------------------------- sshd


@dataclass
class SSHServer:
    """A throwaway OpenSSH server on 127.0.0.1 that lets the current user in with one key."""

    directory: Path
    port: int
    key_path: Path
    known_hosts: Path
    process: subprocess.Popen[bytes]

    def write_config(self, path: Path, alias: str = "bench") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"Host {alias}\n    HostName 127.0.0.1\n    Port {self.port}\n    User {getpass.getuser()}\n"
            f"    IdentityFile {self.key_path}\n    UserKnownHostsFile {self.known_hosts}\n"
            "    IdentitiesOnly yes\n    StrictHostKeyChecking yes\n    BatchMode yes\n"
        )
        return path

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_sshd() -> SSHServer:
    """Start sshd -D on a free loopback port (the bench's sshd configuration, as a plain function)."""
    import socket

    from tests.bench.sshd import SSHD, _sshd_config, write_ed25519_key

    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="deployer-bench-sshd-"))
    host_key = directory / "ssh_host_ed25519_key"
    host_public = " ".join(write_ed25519_key(host_key, "bench-host").split()[:2])
    key = directory / "id_ed25519"
    authorized = directory / "authorized_keys"
    authorized.write_text(write_ed25519_key(key, f"{getpass.getuser()}@bench") + "\n")
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(_sshd_config(directory, port, host_key, authorized))
    log = open(directory / "sshd.log", "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    log.close()
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public}\n")
    server = SSHServer(directory, port, key, known_hosts, process)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = (directory / "sshd.log").read_text(errors="replace")
            server.stop()
            raise SystemExit(f"sshd exited on start:\n{text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.settimeout(2)
                if sock.recv(64).startswith(b"SSH-"):
                    return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise SystemExit("sshd did not start within 15 s")


# --------------------------------------------------------------------------- a deployment


@dataclass
class Stack:
    """One app: origin, laptop clone with deploy.toml, server directory, compose project."""

    base: Path
    name: str
    env_name: str
    host: str  # "local" or an ssh alias
    laptop: Path
    server: Path
    web_port: int
    password: str
    home: Path
    head: str = FIRST_HEAD
    releases: int = 0
    notes: list[str] = field(default_factory=list)
    proxy: bool = False  # behind deployer's proxy

    @property
    def state_dir(self) -> Path:
        """deployer's files on the server: beside the checkout (``<path>.deployer``)."""
        return self.server.parent / f"{self.server.name}.deployer"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/health"

    def environ(self) -> dict[str, str]:
        # PYTHONDONTWRITEBYTECODE left out: an installed deployer runs from its compiled .pyc
        # files (pip compiles them), so the measured runs do too, after the first.
        skip = ("SSH_AUTH_SOCK", "DEPLOYER_CONFIG", "PYTHONDONTWRITEBYTECODE")
        env = {k: v for k, v in os.environ.items() if k not in skip}
        env.update({"HOME": str(self.home), "RECIPES_DB_PASSWORD": self.password, "GIT_CONFIG_NOSYSTEM": "1"})
        return env

    @property
    def compose(self) -> Compose:
        """The same compose invocation deployer uses on the server."""
        return Compose(
            program=V2,
            project=self.name,
            project_dir=str(self.server),
            files=(str(self.server / "docker-compose.prod.yml"),),
            env_file=str(self.state_dir / "compose.env"),
            overrides=(str(self.state_dir / "compose.proxy.yml"),) if self.proxy else (),
        )

    def deployer(self, *args: str, timeout: float = 900) -> tuple[float, subprocess.CompletedProcess[str]]:
        """Run ``deployer ARGS`` in the laptop clone; returns (wall seconds, result)."""
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "deployer", *args], cwd=self.laptop, env=self.environ(), capture_output=True,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
        )
        return time.monotonic() - started, result

    def release(self, *args: str) -> tuple[float, dict]:
        """``deployer release ENV --yes --json ARGS``; raises SystemExit with its output on failure."""
        seconds, result = self.deployer("release", self.env_name, "--yes", "--json", *args)
        if result.returncode != 0:
            raise SystemExit(f"deployer release failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        self.releases += 1
        return seconds, json.loads(result.stdout)

    def change(self, label: str) -> str:
        """Commit a code change plus one migration on top of the current head; returns the commit id."""
        revision = secrets.token_hex(6)
        files: dict[str, str] = {
            "example/recipes/bench_change.py": f'"""Changed by the benchmark: {label}."""\n\nCHANGE = {label!r}\n',
            **add_migration(revision, self.head, f"bench {label}",
                            [f'op.create_table("bench_{revision}", sa.Column("id", sa.Integer, primary_key=True))'],
                            [f'op.drop_table("bench_{revision}")']),
        }
        for path, text in files.items():
            target = self.laptop / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        git("add", "-A", cwd=self.laptop)
        git("commit", "-q", "-m", f"bench: {label}", cwd=self.laptop)
        git("push", "-q", "origin", "HEAD:main", cwd=self.laptop)
        self.head = revision
        return git("rev-parse", "HEAD", cwd=self.laptop).strip()

    def wait_healthy(self, deadline: float = 120) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.health_url} did not answer within {deadline:.0f} s")

    def run(self, argv: Sequence[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(argv), env=self.environ(), capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise SystemExit(f"`{' '.join(argv)}` exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return result

    def journal(self) -> list[dict]:
        path = self.state_dir / "journal.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def cleanup(self) -> None:
        """Remove every container, volume, network and image tag of the project, and the directories."""
        quiet(["docker", "rm", "--force", f"deployer-proxy-{self.name}"])
        remove_project(self.name, extra_volumes=(f"{self.name}_dbdata",))
        # Release tags: every tag of the app's own web image, and the saved tags deployer put
        # on the shared postgres image (deployer-<release id> / deployer-before-<release id>).
        tags = list(quiet(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", f"{self.name}-web"]).split())
        ids_seen = {r.get("id") for r in self.journal() if r.get("id")}
        for tag in quiet(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", POSTGRES_IMAGE.split(":")[0]]).split():
            suffix = tag.rsplit(":", 1)[-1]
            if any(suffix in (f"deployer-{i}", f"deployer-before-{i}") for i in ids_seen):
                tags.append(tag)
        for record in self.journal():
            for _image, tag in (record.get("images") or {}).items():
                if tag not in (PYTHON_IMAGE, POSTGRES_IMAGE) and not tag.endswith((":15", ":bookworm")):
                    tags.append(tag)
        tags = sorted({t for t in tags if t not in (PYTHON_IMAGE, POSTGRES_IMAGE) and "<none>" not in t})
        if tags:
            quiet(["docker", "rmi", *tags])
        shutil.rmtree(self.base, ignore_errors=True)


def deploy_toml(stack: Stack, health_timeout: int = 120) -> str:
    return f"""\
[app]
name = "{stack.name}"
compose_file = "docker-compose.prod.yml"
web_service = "web"
db_service = "db"
migrations_dir = "example/migrations"
migrate_command = "flask db upgrade"
migrate_timeout = 300
branch = "main"

[environments.{stack.env_name}]
host = "{stack.host}"
path = "{stack.server}"
healthcheck_url = "{stack.health_url}"
health_timeout = {health_timeout}
keep_backups = 3

[environments.{stack.env_name}.env]
RECIPES_DB_PASSWORD = "${{RECIPES_DB_PASSWORD}}"
WEB_PORT = "{stack.web_port}"
WEB_IMAGE = "{stack.name}-web"
PYTHON_IMAGE = "{PYTHON_IMAGE}"
POSTGRES_IMAGE = "{POSTGRES_IMAGE}"
""" + (f"""
[environments.{stack.env_name}.proxy]
image = "{HAPROXY_IMAGE}"
pause_timeout = 30
""" if stack.proxy else "")


@contextmanager
def stack(prefix: str, *, ssh: SSHServer | None = None, proxy: bool = False) -> Iterator[Stack]:
    """A fresh app deployment (not yet released); everything is removed on exit, also on failure."""
    base = Path(tempfile.mkdtemp(prefix=f"deployer-bench-{prefix}-"))
    home = base / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    s = Stack(
        base=base, name=f"bench{prefix}{secrets.token_hex(3)}", env_name="bench", host="bench" if ssh else "local",
        laptop=base / "laptop", server=base / "server" / "app", web_port=free_port(),
        password="pw" + secrets.token_hex(8), home=home, proxy=proxy,
    )
    try:
        if ssh is not None:
            ssh.write_config(home / ".ssh" / "config")
        origin = make_origin(base / "origin")
        origin.clone(s.laptop)
        (s.laptop / "deploy.toml").write_text(deploy_toml(s))
        git("add", "-A", cwd=s.laptop)
        git("commit", "-q", "-m", "add deploy.toml", cwd=s.laptop)
        git("push", "-q", "origin", "HEAD:main", cwd=s.laptop)
        yield s
    finally:
        s.cleanup()


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table (printed and returned)."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def save_result(name: str, payload: dict) -> Path:
    """Write the raw numbers of a run next to the scripts (bench/results/NAME.json, not committed)."""
    out = REPO_ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / ".gitignore").write_text("# raw numbers of local runs: not committed\n*\n")
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def quiet(argv: list[str]) -> str:
    """Run a clean-up command; its failure is not ours to report. Returns stdout."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False).stdout


def remove_project(name: str, *, extra_volumes: tuple[str, ...] = ()) -> None:
    """Remove a compose project's containers, volumes and networks, found by its label."""
    label = f"label=com.docker.compose.project={name}"
    ids = quiet(["docker", "ps", "-aq", "--filter", label]).split()
    if ids:
        quiet(["docker", "rm", "-f", "-v", *ids])
    for volume in quiet(["docker", "volume", "ls", "-q", "--filter", label]).split() + list(extra_volumes):
        quiet(["docker", "volume", "rm", "-f", volume])
    for network in quiet(["docker", "network", "ls", "-q", "--filter", label]).split():
        quiet(["docker", "network", "rm", network])


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
