"""Apps that are not ours: the corpus under tests/apps/, released with the real ``deployer``.

Each directory of tests/apps/ is one app shape: ``repo/`` is its repository as its team
keeps it (Flask + Flask-SQLAlchemy + Flask-Migrate, a Dockerfile, a compose file, two
revisions), ``deploy.toml`` the configuration they would write (the bench fills in the
``@@...@@`` parts: project name, host, path, port, images), ``steps/NAME/`` the files a
later commit changes (``code``: no migration; ``migrate``: a new revision and the code
using it; ``broken``: a migration that fails; more for some shapes), and ``shape.toml``
what a user checks: a page that reads the database, how rows are written (a form, an
SQL statement), the heads, the text each step makes appear.

Fixtures
  app_deployment_factory   function: ``make(app, kind)`` -> :class:`AppDeployment`; kind is
                           ``"ssh"`` (the bench sshd through an alias in a fake
                           ``~/.ssh/config``) or ``"local"`` (``host = "local"``). Every
                           container, volume, network and image of the project and every
                           directory made are removed after the test.
  module_app_deployment_factory
                           the same for a module whose tests build on one deployment, in
                           order; removed after the module.

Every project gets its own name, port and directories, so stories run side by side
(pytest-xdist). Database checks talk to the containers the story made: PostgreSQL and
MariaDB at the db container's address, SQLite through a throwaway container holding the volume.

A shape whose ``shape.toml`` names a ``story`` module runs that story instead of the common
one (``app_names()`` leaves it out).
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.bench.cli import envelope, result_or_envelope
from tests.bench.cli import result as result_of
from tests.bench.docker import (
    MARIADB_IMAGE,
    POSTGRES_IMAGE,
    PROJECT_LABEL,
    PYTHON_IMAGE,
    SERVICE_LABEL,
    BenchImages,
    DockerEngine,
    free_port,
)
from tests.bench.gitrepos import git

APPS_DIR = Path(__file__).resolve().parents[1] / "apps"
ONEOFF_LABEL = "com.docker.compose.oneoff"


def app_names(*, with_own_story: bool = False) -> list[str]:
    """The app shapes of the corpus (a directory of tests/apps/ with a shape.toml) that run the
    common story (all of them with ``with_own_story``)."""
    names = sorted(p.name for p in APPS_DIR.iterdir() if (p / "shape.toml").is_file())
    return [n for n in names if with_own_story or not tomllib.loads((APPS_DIR / n / "shape.toml").read_text()).get("story")]


# --- what a shape is --------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseShape:
    """Where the app keeps its rows, as the bench reaches them for its checks."""

    kind: str  # postgresql | mysql | sqlite
    service: str = ""
    user: str = ""
    name: str = ""
    port: int = 5432
    password: str | None = None  # the secret variable holding it
    password_file: str | None = None  # the server-side secret file holding it
    volume: str = ""  # sqlite: the compose volume holding the file
    file: str = ""
    user_id: str = "0:0"


@dataclass(frozen=True)
class AppShape:
    """One directory of tests/apps/, read from its shape.toml."""

    name: str
    directory: Path
    summary: str
    web_service: str
    page: str
    secrets: tuple[str, ...]
    secret_files: tuple[str, ...]
    database: DatabaseShape
    heads_first: tuple[str, ...]
    heads_migrate: tuple[str, ...]
    rows_select: str
    rows_insert: str
    rows_shown: str
    form_path: str
    form_fields: Mapping[str, str]
    form_shown: str
    code_marker: str
    migrate_marker: str
    login_path: str | None = None
    login_fields: Mapping[str, str] = field(default_factory=dict)
    worker_service: str | None = None
    worker_done: str | None = None
    bad_health_step: str | None = None
    story: str | None = None  # the module that runs its story, when not the common one

    @classmethod
    def load(cls, name: str) -> AppShape:
        directory = APPS_DIR / name
        data = tomllib.loads((directory / "shape.toml").read_text())
        login = data.get("login") or {}
        worker = data.get("worker") or {}
        return cls(
            name=name,
            directory=directory,
            summary=data["summary"],
            web_service=data["web_service"],
            page=data["page"],
            secrets=tuple(data.get("secrets", ())),
            secret_files=tuple(data.get("secret_files", ())),
            database=DatabaseShape(**data["database"]),
            heads_first=tuple(data["heads"]["first"]),
            heads_migrate=tuple(data["heads"]["migrate"]),
            rows_select=data["rows"]["select"],
            rows_insert=data["rows"]["insert"],
            rows_shown=data["rows"]["shown"],
            form_path=data["form"]["path"],
            form_fields=dict(data["form"]["fields"]),
            form_shown=data["form"]["shown"],
            code_marker=data["markers"]["code"],
            migrate_marker=data["markers"]["migrate"],
            login_path=login.get("path"),
            login_fields=dict(login.get("fields", {})),
            worker_service=worker.get("service"),
            worker_done=worker.get("done"),
            bad_health_step=(data.get("bad_health") or {}).get("step"),
            story=data.get("story"),
        )

    def files(self, part: str) -> dict[str, bytes]:
        """The files under ``repo/`` or ``steps/NAME`` (``part``), by repository path."""
        root = self.directory / part
        assert root.is_dir(), f"{root} is missing"
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        }


# --- one deployment of one shape --------------------------------------------------------


@dataclass
class AppDeployment:
    """One app's repository, a laptop clone with its deploy.toml, and a server to release to."""

    kind: str  # ssh | local
    shape: AppShape
    name: str  # the app name = compose project
    env_name: str
    base: Path
    origin: Path  # bare repository
    laptop: Path
    server_path: Path
    web_port: int
    home: Path
    secrets: dict[str, str]
    secret_files: dict[str, str]
    engine: DockerEngine
    deployer_command: tuple[str, ...] = (sys.executable, "-m", "deployer")
    extra_env: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list, repr=False)

    # -- running deployer as its user does
    def environ(self) -> dict[str, str]:
        # Nothing of the test process decides which deployer runs or how it logs in.
        dropped = ("SSH_AUTH_SOCK", "DEPLOYER_CONFIG", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env.update({"HOME": str(self.home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull})
        env.update(self.secrets)
        env.update(self.extra_env)
        return env

    def deployer(self, *args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``deployer ARGS`` in the laptop clone. Never raises on a non-zero exit; fails the
        test when a traceback or a secret shows in the output (users must never see either)."""
        result = subprocess.run(
            [*self.deployer_command, *args], cwd=cwd or self.laptop, env=self.environ(), capture_output=True,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
        )
        shown = f"$ deployer {' '.join(args)}\n-> exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        self.outputs.append(shown)
        # deployer's own errors are one message; a migration's traceback is quoted, indented
        assert not re.search(r"^Traceback", result.stderr, re.MULTILINE), shown
        for value in self.secret_values():
            assert value not in result.stdout and value not in result.stderr, f"a secret was printed by {shown}"
        return result

    def secret_values(self) -> list[str]:
        return [v for v in (*self.secrets.values(), *self.secret_files.values()) if v]

    def run_json(self, *args: str, expect: int = 0) -> dict[str, Any]:
        """``deployer ARGS --yes --json``: the exit code must be ``expect``; the JSON document
        (or, for a failure without one, ``{"stderr": ...}``)."""
        result = self.deployer(*args, "--yes", "--json")
        assert result.returncode == expect, (
            f"expected exit {expect}, got {result.returncode}\nstdout:\n{result.stdout[-4000:]}\n"
            f"stderr:\n{result.stderr[-4000:]}\n--- logs\n{self.logs()}"
        )
        doc = envelope(result.stdout)
        document = dict(doc["result"]) if isinstance(doc.get("result"), dict) else {}
        document.setdefault("stderr", result.stderr)
        return document

    def release(self, *args: str, expect: int = 0) -> dict[str, Any]:
        return self.run_json("release", self.env_name, *args, expect=expect)

    def rollback(self, *args: str, expect: int = 0) -> dict[str, Any]:
        return self.run_json("rollback", self.env_name, *args, expect=expect)

    def status(self) -> tuple[int, dict[str, Any]]:
        result = self.deployer("status", self.env_name, "--json", timeout=180)
        return result.returncode, result_or_envelope(result.stdout)

    def history(self) -> list[dict[str, Any]]:
        """The journal, newest first, as ``deployer history --json`` shows it."""
        result = self.deployer("history", self.env_name, "--json", timeout=180)
        assert result.returncode == 0, result.stderr
        return list(result_of(result.stdout)["entries"])

    def lock_held(self) -> bool:
        result = self.deployer("lock", "status", self.env_name, "--json", timeout=180)
        assert result.returncode == 0, result.stderr
        return bool(result_of(result.stdout)["held"])

    # -- the code
    def commit(self, files: Mapping[str, bytes | str | None], message: str) -> str:
        """Write (None: delete) files in the laptop clone, commit, push; the new commit id."""
        for path, content in files.items():
            target = self.laptop / path
            if content is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        git("add", "--all", cwd=self.laptop)
        git("commit", "--quiet", "-m", message, cwd=self.laptop)
        git("push", "--quiet", "origin", "HEAD:main", cwd=self.laptop)
        return self.head()

    def apply(self, step: str) -> str:
        """Commit the app's ``steps/STEP`` files; the new commit id."""
        return self.commit(self.shape.files(f"steps/{step}"), f"{self.shape.name}: {step}")

    def revert(self, step: str) -> str:
        """Commit the removal of the files ``steps/STEP`` added (the team backs a change out)."""
        return self.commit(dict.fromkeys(self.shape.files(f"steps/{step}")), f"{self.shape.name}: revert {step}")

    def head(self) -> str:
        return git("rev-parse", "refs/heads/main", cwd=self.origin).strip()

    def server_head(self) -> str:
        return self.server_git("rev-parse", "HEAD").strip()

    def server_git(self, *args: str) -> str:
        """git in the server's checkout; it may belong to the deploy user, not to us."""
        return git("-c", f"safe.directory={self.server_path}", "-C", str(self.server_path), *args)

    # -- HTTP, as a browser would
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    def request(
        self, path: str, fields: Mapping[str, str] | None = None, *, opener: urllib.request.OpenerDirector | None = None,
        timeout: float = 10,
    ) -> tuple[int, str, Mapping[str, str]]:
        """GET (or POST ``fields``) ``path``; (status, body, headers). Follows redirects
        unless ``opener`` says otherwise; an HTTP error status is returned, not raised."""
        data = urllib.parse.urlencode(fields).encode() if fields is not None else None
        opener = opener or urllib.request.build_opener()
        try:
            with opener.open(urllib.request.Request(self.url(path), data=data), timeout=timeout) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace"), dict(error.headers)

    def browser(self) -> urllib.request.OpenerDirector:
        """A fresh cookie jar, signed in when the app needs it."""
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        if self.shape.login_path:
            fields = {k: self._expand(v) for k, v in self.shape.login_fields.items()}
            status, body, _ = self.request(self.shape.login_path, fields, opener=opener)
            assert status == 200 and "Sign in" not in body, f"login failed: {status}\n{body[:500]}"
        return opener

    def _expand(self, value: str) -> str:
        return self.secrets[value[1:]] if value.startswith("$") else value

    def page(self) -> tuple[int, str]:
        """The page that reads the database, as a signed-in user sees it."""
        status, body, _ = self.request(self.shape.page, opener=self.browser())
        return status, body

    def post_form(self) -> tuple[int, str]:
        status, body, _ = self.request(self.shape.form_path, self.shape.form_fields, opener=self.browser())
        return status, body

    def wait_page(self, text: str, deadline: float = 30) -> str:
        """The page once it shows ``text`` (e.g. a worker finished a task); fails after ``deadline``."""
        end = time.monotonic() + deadline
        body = ""
        while time.monotonic() < end:
            try:
                status, body = self.page()
                if status == 200 and text in body:
                    return body
            except OSError as error:
                body = str(error)
            time.sleep(0.5)
        raise AssertionError(f"the page never showed {text!r} within {deadline:.0f}s; last:\n{body[:2000]}\n{self.logs()}")

    # -- the database, as a user checks it
    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        """Run one statement against the app's database; its rows (none for a write)."""
        db = self.shape.database
        if db.kind == "sqlite":
            return self._sqlite(statement)
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import URL

        password = self.secrets.get(db.password) if db.password else None
        if db.password_file:
            password = self.secret_files[db.password_file]
        driver = "mysql+pymysql" if db.kind == "mysql" else "postgresql+psycopg2"
        url = URL.create(driver, username=db.user, password=password, host=self.container_ip(db.service), port=db.port,
                         database=db.name, query={"charset": "utf8mb4"} if db.kind == "mysql" else {})
        engine = create_engine(url, connect_args={"connect_timeout": 10})
        try:
            with engine.begin() as connection:
                result = connection.execute(text(statement))
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def _sqlite(self, statement: str) -> list[tuple[Any, ...]]:
        db = self.shape.database
        script = (
            "import json, sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], timeout=30)\n"
            "rows = c.execute(sys.argv[2]).fetchall()\n"
            "c.commit()\n"
            "print(json.dumps(rows))\n"
        )
        result = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "--user", db.user_id,
             "-v", f"{self.name}_{db.volume}:{posixdir(db.file)}", PYTHON_IMAGE,
             "python3", "-c", script, db.file, statement],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert result.returncode == 0, f"sqlite3 {statement!r} failed: {result.stderr}"
        return [tuple(row) for row in json.loads(result.stdout)]

    def revision(self) -> tuple[str, ...]:
        return tuple(sorted(r[0] for r in self.sql("SELECT version_num FROM alembic_version")))

    def rows(self) -> list[tuple[Any, ...]]:
        return self.sql(self.shape.rows_select)

    # -- containers
    def project_containers(self, all: bool = False) -> list[Any]:
        return self.engine.client.containers.list(all=all, filters={"label": f"{PROJECT_LABEL}={self.name}"})

    def containers(self) -> dict[str, list[dict[str, str]]]:
        """service -> its running (not one-off) containers: id, image id, state."""
        found: dict[str, list[dict[str, str]]] = {}
        for c in self.project_containers():
            if c.labels.get(ONEOFF_LABEL, "False") == "True":
                continue
            found.setdefault(c.labels.get(SERVICE_LABEL, "?"), []).append(
                {"id": c.id, "image": c.attrs["Image"], "state": c.status})
        return found

    def container_ip(self, service: str) -> str:
        for c in self.project_containers():
            if c.labels.get(SERVICE_LABEL) == service and c.labels.get(ONEOFF_LABEL, "False") != "True":
                for network in c.attrs["NetworkSettings"]["Networks"].values():
                    if network.get("IPAddress"):
                        return str(network["IPAddress"])
        raise AssertionError(f"no running {service} container in project {self.name}:\n{self.logs()}")

    def logs(self, tail: int = 25) -> str:
        parts = []
        for c in self.project_containers(all=True):
            try:
                text = c.logs(tail=tail).decode(errors="replace")
            except Exception as error:  # a container removed meanwhile
                text = str(error)
            parts.append(f"--- {c.name} ({c.status})\n{text}")
        return "\n".join(parts)[-6000:]

    def cleanup(self) -> list[str]:
        """Remove every container, volume, network and image of the project; what failed."""
        client = self.engine.client
        label = {"label": f"{PROJECT_LABEL}={self.name}"}
        problems: list[str] = []
        for kind, listing in (("container", lambda: client.containers.list(all=True, filters=label)),
                              ("volume", lambda: client.volumes.list(filters=label)),
                              ("network", lambda: client.networks.list(filters=label))):
            for item in listing():
                try:
                    if kind == "container":
                        item.remove(force=True, v=True)
                    elif kind == "volume":
                        item.remove(force=True)
                    else:
                        item.remove()
                except Exception as error:  # report, do not hide
                    problems.append(f"{kind} {getattr(item, 'name', item)}: {error}")
        bench = {PYTHON_IMAGE, POSTGRES_IMAGE, MARIADB_IMAGE}
        # One list call (images.list() inspects each image after listing: an image another
        # test removes in between makes it fail).
        for image in client.api.images():
            for tag in image.get("RepoTags") or ():
                if tag.startswith(self.name) and tag not in bench:
                    try:
                        client.images.remove(tag)
                    except Exception as error:
                        problems.append(f"image {tag}: {error}")
        return problems


def posixdir(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


# --- making one ---------------------------------------------------------------------------


def render_deploy_toml(template: str, values: Mapping[str, str], environment_keys: Mapping[str, str]) -> str:
    """The shape's deploy.toml with ``@@KEY@@`` filled in; ``environment_keys`` (raw TOML
    values) go right under the ``[environments.ENV]`` header."""
    text = template
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    leftover = re.findall(r"@@[A-Z_]+@@", text)
    assert not leftover, f"deploy.toml template has unfilled {leftover}"
    if environment_keys:
        header = f"[environments.{values['ENV']}]\n"
        assert header in text, header
        extra = "".join(f"{key} = {value}\n" for key, value in environment_keys.items())
        text = text.replace(header, header + extra, 1)
    return text


def write_ssh_home(home: Path, hosts: Sequence[tuple[str, Any, str | None]], extra_config: str = "") -> Path:
    """A fake ``$HOME/.ssh``: ``hosts`` are (alias, sshd, user or None) — each sshd's host
    key goes to known_hosts, its key becomes the IdentityFile; ``extra_config`` is appended."""
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    known_hosts = ssh_dir / "known_hosts"
    lines: list[str] = []
    blocks: list[str] = []
    for alias, sshd, user in hosts:
        key = ssh_dir / f"id_{alias}"
        shutil.copyfile(sshd.key_path, key)
        key.chmod(0o600)
        lines.append(sshd.known_hosts_line)
        blocks.append(
            f"Host {alias}\n    HostName {sshd.host}\n    Port {sshd.port}\n    User {user or sshd.user}\n"
            f"    IdentityFile {key}\n    UserKnownHostsFile {known_hosts}\n    IdentitiesOnly yes\n"
        )
    known_hosts.write_text("".join(f"{line}\n" for line in dict.fromkeys(lines)))
    config = ssh_dir / "config"
    config.write_text(extra_config + "\n".join(blocks))
    return config


class AppFactory:
    """Makes :class:`AppDeployment`s (see the fixtures below) and removes what they made."""

    def __init__(self, request: pytest.FixtureRequest, engine: DockerEngine, images: BenchImages) -> None:
        self._request = request
        self._engine = engine
        self._images = images
        self.made: list[AppDeployment] = []

    def __call__(
        self, app: str, kind: str, *, environment_keys: Mapping[str, str] | None = None,
        server_parent: Path | None = None, host: str | None = None,
    ) -> AppDeployment:
        assert kind in ("ssh", "local"), kind
        shape = AppShape.load(app)
        base = Path(tempfile.mkdtemp(prefix=f"deployer-app-{app}-{kind}-"))
        name = f"x{app}{kind[0]}{secrets.token_hex(3)}"
        home = base / "home"
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        if kind == "ssh" and host is None:
            write_ssh_home(home, [("bench", self._request.getfixturevalue("sshd"), None)])
        secrets_dir = base / "server-secrets"
        secrets_dir.mkdir(mode=0o700)
        secret_files = {}
        for file_name in shape.secret_files:
            value = "pw" + secrets.token_hex(12)
            (secrets_dir / file_name).write_text(value + "\n")
            (secrets_dir / file_name).chmod(0o600)
            secret_files[file_name] = value
        server_path = (server_parent or base / "srv") / name
        d = AppDeployment(
            kind=kind, shape=shape, name=name, env_name="production" if kind == "ssh" else "local", base=base,
            origin=base / "origin.git", laptop=base / "laptop", server_path=server_path, web_port=free_port(),
            home=home, secrets={s: secrets.token_hex(12) for s in shape.secrets}, secret_files=secret_files,
            engine=self._engine,
        )
        self.made.append(d)
        images = self._images
        values = {
            "NAME": name, "ENV": d.env_name, "HOST": host or ("bench" if kind == "ssh" else "local"),
            "PATH": str(server_path), "WEB_PORT": str(d.web_port), "PYTHON_IMAGE": images.python,
            "POSTGRES_IMAGE": images.postgres, "MARIADB_IMAGE": images.mariadb, "SECRETS_DIR": str(secrets_dir),
        }
        template = (shape.directory / "deploy.toml").read_text()
        files = shape.files("repo")
        files["deploy.toml"] = render_deploy_toml(template, values, environment_keys or {}).encode()
        _init_repository(d, files)
        return d

    def cleanup(self) -> None:
        problems: list[str] = []
        for d in self.made:
            problems += d.cleanup()
            shutil.rmtree(d.base, ignore_errors=True)
        assert not problems, "clean-up left things behind:\n" + "\n".join(problems)


@pytest.fixture
def app_deployment_factory(
    request: pytest.FixtureRequest, docker_engine: DockerEngine, bench_images: BenchImages
) -> Iterator[Callable[..., AppDeployment]]:
    """``make(app, kind, *, environment_keys=None, server_parent=None)`` -> AppDeployment.

    ``environment_keys``: more keys for the environment table (raw TOML values, e.g.
    ``{"state_dir": '"/srv/x"'}``). ``server_parent``: where the server checkout goes
    (default: a new temporary directory). ``host``: the deploy.toml host (default the
    ``bench`` alias for ssh, ``local``) — a test writing its own ~/.ssh/config passes it.
    """
    factory = AppFactory(request, docker_engine, bench_images)
    yield factory
    factory.cleanup()


@pytest.fixture(scope="module")
def module_app_deployment_factory(
    request: pytest.FixtureRequest, docker_engine: DockerEngine, bench_images: BenchImages
) -> Iterator[Callable[..., AppDeployment]]:
    """:func:`app_deployment_factory` for a module whose tests share one deployment, in order."""
    factory = AppFactory(request, docker_engine, bench_images)
    yield factory
    factory.cleanup()


def _init_repository(d: AppDeployment, files: Mapping[str, bytes]) -> None:
    """A bare origin on ``main`` and the laptop clone holding the app and its deploy.toml."""
    git("init", "--quiet", "--bare", str(d.origin))
    git("symbolic-ref", "HEAD", "refs/heads/main", cwd=d.origin)
    git("init", "--quiet", str(d.laptop))
    git("symbolic-ref", "HEAD", "refs/heads/main", cwd=d.laptop)
    for key, value in (("user.name", "App Team"), ("user.email", "team@example.invalid"), ("commit.gpgsign", "false")):
        git("config", key, value, cwd=d.laptop)
    git("remote", "add", "origin", str(d.origin), cwd=d.laptop)
    d.commit(files, f"{d.shape.name}: as its team keeps it")


# --- timing a story -----------------------------------------------------------------------


@dataclass
class Story:
    """Named, timed steps of one story; a failing step says which, with what deployer said."""

    label: str
    deployment: AppDeployment | None = None
    timings: list[tuple[str, float]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        except AssertionError as error:
            said = "\n".join(self.deployment.outputs[-2:]) if self.deployment else ""
            raise AssertionError(
                f"[{self.label}] step {name!r} failed after {time.monotonic() - began:.1f}s: {error}\n"
                f"--- last deployer commands\n{said}"
            ) from error
        finally:
            self.timings.append((name, time.monotonic() - began))

    def report(self) -> str:
        total = time.monotonic() - self.started
        steps = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.timings)
        return f"{self.label}: {total:.1f}s ({steps})"
