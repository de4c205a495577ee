"""Several machines running one app: the compose stack of the example made for several hosts,
the deploy.toml that names them, and what a user checks on each (their checkouts,
journals, pages and the one database). Used by the many-host tests and the benchmark.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.bench.deployment import app_table
from tests.bench.docker import POSTGRES_IMAGE, PYTHON_IMAGE
from tests.bench.gitrepos import git
from tests.bench.machines import Machine

APP = "fleetapp"
PATH = "/srv/app"

# The example's production stack, with the two things several hosts need: the web service
# finds its database at DATABASE_HOST (the primary's address, on the other hosts) and the
# primary publishes the database on its own address (DB_BIND). The web port is published on
# every address of its machine; HEALTH_BROKEN lets one host's health check fail.
COMPOSE = """\
services:
  web:
    build:
      context: ./example
      args:
        PYTHON_IMAGE: ${PYTHON_IMAGE}
        APP_VERSION: ${APP_VERSION:-dev}
    image: ${WEB_IMAGE}:${WEB_IMAGE_TAG:-latest}
    environment:
      DATABASE_URL: postgresql://recipes:${RECIPES_DB_PASSWORD:?set it}@${DATABASE_HOST:-db}:5432/recipes
      HEALTH_BROKEN: ${HEALTH_BROKEN:-}
    ports:
      - "${WEB_PORT}:8000"
    depends_on:
      db:
        condition: service_healthy
    healthcheck:
      test: ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
      interval: 5s
      timeout: 5s
      retries: 3
      start_period: 30s
    restart: unless-stopped
  db:
    image: ${POSTGRES_IMAGE}
    environment:
      POSTGRES_USER: recipes
      POSTGRES_DB: recipes
      POSTGRES_PASSWORD: ${RECIPES_DB_PASSWORD:?set it}
    ports:
      - "${DB_BIND:-127.0.0.1}:5432:5432"
    volumes:
      - dbdata:/var/lib/postgresql/data
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -h 127.0.0.1 -U recipes -d recipes"]
      interval: 3s
      timeout: 5s
      retries: 10
      start_period: 30s
    restart: unless-stopped

volumes:
  dbdata:
"""

# The example's WSGI entry point with a /health that fails where HEALTH_BROKEN is set (and
# nowhere else): one host's, or every task's, health check failing.
HEALTH_BROKEN_WSGI = '''"""WSGI entry point; /health fails where HEALTH_BROKEN is set."""
import os

from flask import request

from recipes import create_app

app = create_app()


@app.before_request
def _broken_here():
    if request.path == "/health" and os.environ.get("HEALTH_BROKEN"):
        return "broken on this host", 503
    return None
'''



@dataclass
class Fleet:
    machines: list[Machine]
    laptop: Path
    home: Path
    password: str
    web_port: int

    @property
    def primary(self) -> Machine:
        return self.machines[0]

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "DEPLOYER_CONFIG")}
        env.update({"HOME": str(self.home), "RECIPES_DB_PASSWORD": self.password, "GIT_CONFIG_NOSYSTEM": "1"})
        return env

    def deployer_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "deployer", *args]

    def deployer(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.deployer_argv(*args), cwd=self.laptop, env=self.environ(),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)

    def commit(self, files: dict[str, str], message: str) -> str:
        for path, text in files.items():
            (self.laptop / path).parent.mkdir(parents=True, exist_ok=True)
            (self.laptop / path).write_text(text)
        git("add", "-A", cwd=self.laptop)
        git("commit", "-q", "-m", message, cwd=self.laptop)
        git("push", "-q", "origin", "HEAD:main", cwd=self.laptop)
        return git("rev-parse", "HEAD", cwd=self.laptop).strip()

    # -- what a user checks
    def head(self, machine: Machine) -> str | None:
        checkout = machine.srv / "app"
        if not (checkout / ".git").exists():
            return None
        return git("-C", str(checkout), "rev-parse", "HEAD").strip()

    def journal(self, machine: Machine) -> list[dict]:
        path = machine.srv / "app.deployer" / "journal.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def get(self, machine: Machine, path: str = "/health") -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{machine.address}:{self.web_port}{path}", timeout=5) as response:  # noqa: S310
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def post_user(self, machine: Machine, email: str) -> int:
        request = urllib.request.Request(  # noqa: S310 - a bench machine's address
            f"http://{machine.address}:{self.web_port}/api/users", method="POST",
            data=json.dumps({"email": email, "name": "n"}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status

    def sql(self, statement: str) -> list[tuple]:
        from sqlalchemy import create_engine, text

        engine = create_engine(f"postgresql+psycopg2://recipes:{self.password}@{self.primary.address}:5432/recipes")
        try:
            with engine.begin() as connection:
                result = connection.execute(text(statement))
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def revision(self) -> tuple[str, ...]:
        return tuple(sorted(r[0] for r in self.sql("SELECT version_num FROM alembic_version")))

    def containers(self, machine: Machine) -> list[str]:
        out = machine.docker("ps", "-a", "--filter", f"label=com.docker.compose.project={APP}",
                             "--format", "{{.Label \"com.docker.compose.service\"}}").stdout
        return sorted(out.split())

    def images(self, machine: Machine) -> dict[str, str]:
        """service -> image id of the project's running containers."""
        rows = {}
        for line in machine.docker("ps", "--filter", f"label=com.docker.compose.project={APP}", "--format",
                                   "{{.Label \"com.docker.compose.service\"}} {{.Image}}").stdout.splitlines():
            service, _, image = line.partition(" ")
            rows[service] = machine.docker("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
        return rows


def hosts_entries(machines: Sequence[Machine], *, broken_host: str | None = None) -> str:
    """The ``hosts`` array: the first machine the primary, publishing the database; the
    others reaching it at its address."""
    primary = machines[0].address
    entries = []
    for number, machine in enumerate(machines, start=1):
        env = {"DB_BIND": primary} if number == 1 else {"DATABASE_HOST": primary}
        if machine.name == broken_host:
            env["HEALTH_BROKEN"] = "1"
        shown = ", ".join(f'{k} = "{v}"' for k, v in env.items())
        entries.append(f'  {{host = "{machine.name}", {"primary = true, " if number == 1 else ""}env = {{{shown}}}}},')
    return "\n".join(entries)


def deploy_toml(fleet: Fleet, *, broken_host: str | None = None,
                environments: Mapping[str, Sequence[Machine]] | None = None, rollout: str = "{batch = 1, pause = 1}") -> str:
    """The app's deploy.toml: ``production`` on every machine of the fleet (or each of
    ``environments`` on its machines)."""
    envs = environments or {"production": fleet.machines}
    tables = "".join(environment_toml(name, machines, fleet.web_port, broken_host=broken_host, rollout=rollout)
                     for name, machines in envs.items())
    return app_table(APP) + "\n" + tables


def environment_toml(name: str, machines: Sequence[Machine], web_port: int, *, broken_host: str | None = None,
                     rollout: str = "{batch = 1, pause = 1}") -> str:
    hosts = hosts_entries(machines, broken_host=broken_host)
    return f"""
[environments.{name}]
hosts = [
{hosts}
]
rollout = {rollout}
path = "{PATH}"
healthcheck_url = "http://127.0.0.1:{web_port}/health"
health_timeout = 40

[environments.{name}.env]
RECIPES_DB_PASSWORD = "${{RECIPES_DB_PASSWORD}}"
WEB_PORT = "{web_port}"
WEB_IMAGE = "{APP}-web"
PYTHON_IMAGE = "{PYTHON_IMAGE}"
POSTGRES_IMAGE = "{POSTGRES_IMAGE}"
"""


def ssh_home(base: Path, machines: Sequence[Machine], key: Path) -> Path:
    """A $HOME whose ~/.ssh/config names each machine (``m1`` …) by its address, with the
    bench key and the machines' known_hosts."""
    home = base / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    mine = home / ".ssh" / "id_ed25519"
    shutil.copyfile(key, mine)
    mine.chmod(0o600)
    known = machines[0].root.parent / "known_hosts"
    (home / ".ssh" / "config").write_text("".join(
        f"Host {m.name}\n    HostName {m.address}\n    User root\n    IdentityFile {mine}\n"
        f"    UserKnownHostsFile {known}\n    IdentitiesOnly yes\n" for m in machines))
    return home
