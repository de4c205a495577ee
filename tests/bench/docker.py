"""Docker test bench: the real engine, the locally built base images, throwaway compose stacks.

Fixtures
  docker_engine          session: the engine and `docker compose` v2 answer (else the test FAILS)
  bench_images           session: deployer-bench/python + deployer-bench/postgres exist (built once)
  compose_stack          function: factory of uniquely named compose projects, torn down after the test
  module_compose_stack   module: the same, shared by the tests of one module (one stack build)

Helpers
  free_port()                     a free TCP port on 127.0.0.1
  container_ip(client, project, service)   a compose container's address on its project network
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
from docker.errors import APIError, DockerException, NotFound

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_COMPOSE_FILE = REPO_ROOT / "docker-compose.prod.yml"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-base-images"
SETUP_HINT = "run `bash scripts/setup` (as root) to install and start Docker and the compose v2 plugin"

PYTHON_IMAGE = "deployer-bench/python:bookworm"
POSTGRES_IMAGE = "deployer-bench/postgres:15"
MARIADB_IMAGE = "deployer-bench/mariadb:10.11"
HAPROXY_IMAGE = "deployer-bench/haproxy:2.6"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


@dataclass(frozen=True)
class DockerEngine:
    """The engine the tests drive, with an SDK client for inspection."""

    server_version: str
    compose_version: str
    client: docker.DockerClient = field(repr=False, compare=False)


@dataclass(frozen=True)
class BenchImages:
    """Tags of the locally built base images (see scripts/build-base-images)."""

    python: str = PYTHON_IMAGE
    postgres: str = POSTGRES_IMAGE
    haproxy: str = HAPROXY_IMAGE
    mariadb: str = MARIADB_IMAGE


@dataclass(frozen=True)
class ComposeStack:
    """One compose project handed out to a test: a unique name, a free port, its variables.

    `env` holds what compose interpolates into docker-compose.prod.yml (PYTHON_IMAGE,
    POSTGRES_IMAGE, RECIPES_DB_PASSWORD, WEB_PORT, WEB_IMAGE, ...); pass it to anything
    else that runs compose for this project (e.g. deployer's environment env).
    """

    project: str
    web_port: int
    env: Mapping[str, str]
    compose_file: Path
    client: docker.DockerClient = field(repr=False, compare=False)

    @property
    def db_password(self) -> str:
        """The database password the stack was configured with."""
        return self.env["RECIPES_DB_PASSWORD"]

    def environ(self) -> dict[str, str]:
        """The process environment for compose: this one plus the stack's variables."""
        return {**os.environ, **self.env}

    def compose_argv(self, *args: str) -> list[str]:
        """`docker compose -f FILE -p PROJECT ARGS...` as an argv list."""
        return ["docker", "compose", "-f", str(self.compose_file), "-p", self.project, *args]

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a compose command for this project; on failure (check=True) fail the test with its output."""
        argv = self.compose_argv(*args)
        result = subprocess.run(
            argv,
            env=self.environ(),
            cwd=self.compose_file.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"`{' '.join(argv)}` exited {result.returncode}\n"
                f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}\n"
                f"--- logs\n{self.logs()}",
                pytrace=False,
            )
        return result

    def logs(self, tail: int = 60) -> str:
        """The last lines of every service's log, for failure messages."""
        result = subprocess.run(
            self.compose_argv("logs", "--no-color", "--tail", str(tail)),
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return (result.stdout + result.stderr)[-8000:]

    def url(self, path: str = "/") -> str:
        """The published web service's URL on loopback."""
        return f"http://127.0.0.1:{self.web_port}{path}"

    def container_ip(self, service: str) -> str:
        """The address of the service's (first) container on the project network."""
        return container_ip(self.client, self.project, service)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def container_ip(client: docker.DockerClient, project: str, service: str) -> str:
    """The IP address of a compose service's container on its project's network.

    Tests may connect to containers they made; the project's own network is preferred
    over any other network the container is attached to.
    """
    containers = client.containers.list(
        filters={"label": [f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}={service}"]}
    )
    if not containers:
        raise LookupError(f"no running container for service {service!r} of compose project {project!r}")
    networks: Mapping[str, Mapping[str, str]] = containers[0].attrs["NetworkSettings"]["Networks"]
    preferred = [name for name in networks if name.startswith(f"{project}_")] or list(networks)
    for name in preferred:
        address = networks[name].get("IPAddress")
        if address:
            return address
    raise LookupError(f"container of {project}/{service} has no IP address on {sorted(networks)}")


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """The Docker engine and `docker compose` v2; FAILS the test (never skips) when missing."""
    try:
        info = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=60)
    except FileNotFoundError:
        pytest.fail(f"the docker command is not installed: {SETUP_HINT}", pytrace=False)
    if info.returncode != 0 or not info.stdout.strip():
        pytest.fail(f"the Docker engine does not answer ({info.stderr.strip()}): {SETUP_HINT}", pytrace=False)
    compose = _run(["docker", "compose", "version", "--short"], timeout=60)
    if compose.returncode != 0:
        pytest.fail(f"`docker compose` (v2) is not available ({compose.stderr.strip()}): {SETUP_HINT}", pytrace=False)
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except DockerException as exc:
        pytest.fail(f"the Docker SDK cannot reach the engine ({exc}): {SETUP_HINT}", pytrace=False)
    try:
        yield DockerEngine(info.stdout.strip(), compose.stdout.strip(), client)
    finally:
        client.close()


@pytest.fixture(scope="session")
def bench_images(docker_engine: DockerEngine) -> BenchImages:
    """Build (once, idempotently) and return the bench's base image tags."""
    started = time.monotonic()
    result = _run(["bash", str(BUILD_SCRIPT)], timeout=1800)
    if result.returncode != 0:
        pytest.fail(
            f"scripts/build-base-images failed (exit {result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    images = BenchImages()
    for tag in (images.python, images.postgres, images.haproxy, images.mariadb):
        try:
            docker_engine.client.images.get(tag)
        except NotFound:
            pytest.fail(f"scripts/build-base-images succeeded but {tag} is missing", pytrace=False)
    print(f"bench images ready in {time.monotonic() - started:.1f}s")
    return images


class ComposeStacks:
    """Hands out compose projects and removes everything they made, bench images excepted."""

    def __init__(self, engine: DockerEngine, images: BenchImages) -> None:
        self._engine = engine
        self._images = images
        self._stacks: list[ComposeStack] = []

    def new(self, compose_file: Path = EXAMPLE_COMPOSE_FILE, **extra_env: str) -> ComposeStack:
        """A fresh project name (`dt` + hex), a free web port and the variables for it."""
        project = "dt" + secrets.token_hex(5)
        port = free_port()
        env = {
            "COMPOSE_PROJECT_NAME": project,
            "PYTHON_IMAGE": self._images.python,
            "POSTGRES_IMAGE": self._images.postgres,
            # Hex only: the password is placed into DATABASE_URL verbatim.
            "RECIPES_DB_PASSWORD": secrets.token_hex(12),
            "WEB_PORT": str(port),
            # A per-project image name, so parallel stacks never overwrite each other's tags.
            "WEB_IMAGE": f"{project}-web",
            **extra_env,
        }
        stack = ComposeStack(project, port, env, Path(compose_file), self._engine.client)
        self._stacks.append(stack)
        return stack

    def close(self) -> None:
        """Tear every handed-out project down; report (not hide) what could not be removed."""
        problems: list[str] = []
        for stack in reversed(self._stacks):
            result = stack.compose("down", "-v", "--remove-orphans", "--rmi", "local", "--timeout", "20",
                                   timeout=300, check=False)
            if result.returncode != 0:
                problems.append(f"{stack.project}: compose down exited {result.returncode}: {result.stderr[-500:]}")
            problems.extend(self._remove_leftovers(stack))
        self._stacks.clear()
        if problems:
            pytest.fail("compose stack teardown left things behind:\n" + "\n".join(problems), pytrace=False)

    def _remove_leftovers(self, stack: ComposeStack) -> list[str]:
        """Remove what `down` cannot know about: containers/volumes/networks labelled with the
        project (e.g. made from another checkout of the compose file) and every tag of the
        stack's web image (e.g. release tags)."""
        client = self._engine.client
        label = {"label": f"{PROJECT_LABEL}={stack.project}"}
        problems: list[str] = []
        try:
            for container in client.containers.list(all=True, filters=label):
                container.remove(force=True, v=True)
            for volume in client.volumes.list(filters=label):
                volume.remove(force=True)
            for network in client.networks.list(filters=label):
                network.remove()
            bench = {self._images.python, self._images.postgres}
            for image in client.images.list(name=stack.env["WEB_IMAGE"]):
                for tag in image.tags:
                    if tag not in bench:
                        client.images.remove(tag, noprune=False)
        except (APIError, NotFound) as exc:
            problems.append(f"{stack.project}: {exc}")
        return problems


@pytest.fixture
def compose_stack(docker_engine: DockerEngine, bench_images: BenchImages) -> Iterator[Callable[..., ComposeStack]]:
    """Factory: `compose_stack(**extra_env)` -> a new ComposeStack, removed after the test."""
    stacks = ComposeStacks(docker_engine, bench_images)
    try:
        yield stacks.new
    finally:
        stacks.close()


@pytest.fixture(scope="module")
def module_compose_stack(
    docker_engine: DockerEngine, bench_images: BenchImages
) -> Iterator[Callable[..., ComposeStack]]:
    """Like `compose_stack`, but the stacks live until the module's last test ended."""
    stacks = ComposeStacks(docker_engine, bench_images)
    try:
        yield stacks.new
    finally:
        stacks.close()
