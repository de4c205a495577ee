"""An app repository, a "laptop" clone holding its deploy.toml, and an empty "server":
what the end-to-end tests release with the real ``deployer`` command.

``deployment_factory(kind)`` makes one: ``kind="ssh"`` reaches the server through the bench
sshd by an alias in a fake ``~/.ssh/config``; ``kind="local"`` uses ``host = "local"``.
Everything the release created (containers, volumes, networks, images, the checkout) is
removed at the end.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.bench.cli import result as result_of
from tests.bench.docker import HAPROXY_IMAGE, POSTGRES_IMAGE, PYTHON_IMAGE, BenchImages, DockerEngine, free_port
from tests.bench.gitrepos import GitOrigin, git, make_origin
from tests.bench.sshd import SSHBench

EXAMPLE_HEAD = "56b6764ae94a"
# Behind the proxy: how long a request may be held in pause mode. Generous: the suite's
# workers share two cores, and a pause (stop, migrate, start, gate) takes longer there.
PAUSE_TIMEOUT = 30


# A release whose /health answers 503: what a health check that never passes looks like.
BROKEN_HEALTH_WSGI = '''"""WSGI entry point (this release's /health is broken on purpose)."""
from flask import request

from recipes import create_app

app = create_app()


@app.before_request
def _broken_health():
    if request.path == "/health":
        return "broken on purpose", 503
    return None
'''


@dataclass
class Deployment:
    kind: str  # ssh | local
    env_name: str
    name: str  # app name = compose project
    origin: GitOrigin
    laptop: Path
    server_path: Path
    web_port: int
    password: str
    home: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    proxy: bool = False  # behind deployer's proxy ([environments.NAME.proxy])

    # -- running deployer as a user would
    def environ(self) -> dict[str, str]:
        import os

        env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "DEPLOYER_CONFIG")}
        env.update({"HOME": str(self.home), "RECIPES_DB_PASSWORD": self.password, "GIT_CONFIG_NOSYSTEM": "1"})
        env.update(self.extra_env)
        return env

    def deployer_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "deployer", *args]

    def deployer(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run ``deployer ARGS`` in the laptop clone; never raises on a non-zero exit."""
        return subprocess.run(
            self.deployer_argv(*args), cwd=self.laptop, env=self.environ(), capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL, check=False,
        )

    def release(self, *args: str, expect: int = 0) -> dict:
        result = self.deployer("release", self.env_name, "--yes", "--json", *args)
        assert result.returncode == expect, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{self.logs()}"
        # deployer's own errors are one message; a migration's traceback is quoted indented
        assert not re.search(r"^Traceback", result.stderr, re.MULTILINE), result.stderr
        return result_of(result.stdout) if result.returncode == 0 else {"stderr": result.stderr}

    # -- the code
    def commit(self, files: dict[str, str | None], message: str) -> str:
        """Commit on the laptop clone and push to origin; returns the new commit id."""
        for path, text in files.items():
            target = self.laptop / path
            if text is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        git("add", "-A", cwd=self.laptop)
        git("commit", "-q", "-m", message, cwd=self.laptop)
        git("push", "-q", "origin", "HEAD:main", cwd=self.laptop)
        return git("rev-parse", "HEAD", cwd=self.laptop).strip()

    # -- what a user checks on the server
    def server_head(self) -> str:
        return git("-C", str(self.server_path), "rev-parse", "HEAD").strip()

    @property
    def state_path(self) -> Path:
        """deployer's files on the server: beside the checkout, outside its build context."""
        return Path(f"{self.server_path}.deployer")

    @property
    def backup_path(self) -> Path:
        return self.state_path / "backups"

    def journal(self) -> list[dict]:
        path = self.state_path / "journal.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def lock_held(self) -> bool:
        """A live holder has the lease, or a record of one is left (the next command takes it over)."""
        lock = self.state_path / "lock"
        if (self.state_path / "lock.json").exists():
            return True
        if not lock.exists():
            return False
        return subprocess.run(["flock", "-n", str(lock), "true"], capture_output=True).returncode != 0

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "-p", self.name, "--project-directory", str(self.server_path),
                "-f", str(self.server_path / "docker-compose.prod.yml"), *args]
        env = self.environ()
        env.update({"WEB_PORT": str(self.web_port), "WEB_IMAGE": f"{self.name}-web", "PYTHON_IMAGE": PYTHON_IMAGE, "POSTGRES_IMAGE": POSTGRES_IMAGE})
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def logs(self) -> str:
        if not (self.server_path / "docker-compose.prod.yml").exists():
            return ""
        return self.compose("logs", "--no-color", "--tail", "30", check=False).stdout[-4000:]

    def db_ip(self) -> str:
        ids = self.compose("ps", "-q", "db").stdout.split()
        assert ids, "the db container does not run"
        out = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", ids[0]],
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0]

    def db_url(self) -> str:
        return f"postgresql+psycopg2://recipes:{self.password}@{self.db_ip()}:5432/recipes"

    def sql(self, statement: str, **params: object) -> list[tuple]:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.db_url())
        try:
            with engine.begin() as connection:
                result = connection.execute(text(statement), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def revision(self) -> tuple[str, ...]:
        return tuple(r[0] for r in self.sql("SELECT version_num FROM alembic_version"))

    def get(self, path: str = "/", timeout: float = 5) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def wait_answer(self, path: str = "/health", deadline: float = 60) -> tuple[int, str]:
        end = time.monotonic() + deadline
        last: tuple[int, str] = (0, "")
        while time.monotonic() < end:
            try:
                last = self.get(path)
                if last[0] == 200:
                    return last
            except OSError as error:
                last = (0, str(error))
            time.sleep(0.5)
        return last

    def containers(self) -> dict[str, str]:
        """service -> container id of the running project."""
        out = self.compose("ps", "--format", "json").stdout
        rows = json.loads(out) if out.strip().startswith("[") else [json.loads(line) for line in out.splitlines() if line.strip()]
        return {row["Service"]: row["ID"] for row in rows}

    def cleanup(self) -> None:
        if (self.server_path / "docker-compose.prod.yml").exists():
            self.compose("down", "--volumes", "--remove-orphans", check=False)
        subprocess.run(["docker", "rm", "-f", *subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.name}"],
            capture_output=True, text=True).stdout.split()], capture_output=True)
        subprocess.run(["docker", "rm", "-f", f"deployer-proxy-{self.name}"], capture_output=True)
        subprocess.run(["docker", "volume", "rm", "-f", f"{self.name}_dbdata"], capture_output=True)
        shutil.rmtree(self.state_path, ignore_errors=True)
        images = subprocess.run(["docker", "images", "-q", "--filter", f"reference={self.name}-web"], capture_output=True, text=True).stdout.split()
        if images:
            subprocess.run(["docker", "rmi", "-f", *sorted(set(images))], capture_output=True)


def app_table(name: str) -> str:
    """deploy.toml's ``[app]`` table for the example app named ``name``."""
    return f"""\
[app]
name = "{name}"
compose_file = "docker-compose.prod.yml"
web_service = "web"
db_service = "db"
migrations_dir = "example/migrations"
migrate_command = "flask db upgrade"
migrate_timeout = 180
branch = "main"
"""


def deploy_toml(d: Deployment, *, health_timeout: int = 60) -> str:
    host = "bench" if d.kind == "ssh" else "local"
    proxy = f"""
[environments.{d.env_name}.proxy]
image = "{HAPROXY_IMAGE}"
pause_timeout = {PAUSE_TIMEOUT}
""" if d.proxy else ""
    return app_table(d.name) + f"""
[environments.{d.env_name}]
host = "{host}"
path = "{d.server_path}"
healthcheck_url = "http://127.0.0.1:{d.web_port}/health"
health_timeout = {health_timeout}
keep_backups = 5

[environments.{d.env_name}.env]
RECIPES_DB_PASSWORD = "${{RECIPES_DB_PASSWORD}}"
WEB_PORT = "{d.web_port}"
WEB_IMAGE = "{d.name}-web"
PYTHON_IMAGE = "{PYTHON_IMAGE}"
POSTGRES_IMAGE = "{POSTGRES_IMAGE}"
{proxy}"""


def _fake_home(base: Path, sshd: SSHBench | None) -> Path:
    home = base / "home"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    if sshd is not None:
        key = ssh_dir / "id_ed25519"
        shutil.copyfile(sshd.key_path, key)
        key.chmod(0o600)
        known_hosts = ssh_dir / "known_hosts"
        known_hosts.write_text(sshd.known_hosts_line + "\n")
        sshd.write_ssh_config(ssh_dir / "config", "bench", identity_file=key, known_hosts=known_hosts)
    return home


@pytest.fixture(scope="module")
def deployment_factory(
    request: pytest.FixtureRequest, docker_engine: DockerEngine, bench_images: BenchImages
) -> Iterator[Callable[..., Deployment]]:
    made: list[tuple[Deployment, Path]] = []

    def make(kind: str, *, health_timeout: int = 60, proxy: bool = False) -> Deployment:
        assert kind in ("ssh", "local")
        base = Path(tempfile.mkdtemp(prefix=f"deployer-e2e-{kind}-"))
        sshd = request.getfixturevalue("sshd") if kind == "ssh" else None
        name = f"e2e{kind}{secrets.token_hex(3)}"
        origin = make_origin(base / "origin")
        laptop = origin.clone(base / "laptop")
        d = Deployment(
            kind=kind, env_name="production" if kind == "ssh" else "local", name=name, origin=origin, laptop=laptop,
            server_path=base / "server" / "app", web_port=free_port(), password="pw-" + secrets.token_hex(8),
            home=_fake_home(base, sshd), proxy=proxy,
        )
        made.append((d, base))
        (laptop / "deploy.toml").write_text(deploy_toml(d, health_timeout=health_timeout))
        d.commit({}, "add deploy.toml")
        return d

    yield make
    for d, base in made:
        d.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def add_migration(revision: str, down: str, message: str, upgrade: Sequence[str], downgrade: Sequence[str]) -> dict[str, str]:
    """Files of a new alembic revision for the example app."""
    body = "\n".join(f"    {line}" for line in upgrade) or "    pass"
    down_body = "\n".join(f"    {line}" for line in downgrade) or "    pass"
    slug = message.lower().replace(" ", "_")[:40]
    return {
        f"example/migrations/versions/{revision}_{slug}.py": f'''"""{message}

Revision ID: {revision}
Revises: {down}
"""
from alembic import op
import sqlalchemy as sa

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade():
{body}


def downgrade():
{down_body}
'''
    }
