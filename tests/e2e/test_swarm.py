"""Releasing to a Docker Swarm of two nodes (``engine = "swarm"``): two machines of their own
(each its own address, Docker engine, sshd and /srv), joined into one swarm, reached by the
real ``deployer`` command over SSH.

The primary (m1) is the manager: it builds, runs the database and the migration (once, in a
one-off container of the new image on the stack's network); the web service runs two tasks
across both nodes behind deployer's proxy, which every node publishes. Only m1 has the base
images at the start: the worker gets the app's image from deployer, the layers it lacks.

The kernel of this machine has no IPVS: Swarm's routing mesh and virtual IPs cannot work
here, so requests reach the tasks through deployer's proxy (host-mode port on every node,
tasks found by DNS) — which is also how deployer deploys where the mesh works.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench.cli import result as result_of
from tests.bench.deployment import EXAMPLE_HEAD, add_migration, app_table
from tests.bench.docker import HAPROXY_IMAGE, POSTGRES_IMAGE, PYTHON_IMAGE, free_port
from tests.bench.fleet import APP, HEALTH_BROKEN_WSGI, PATH, Fleet, ssh_home
from tests.bench.gitrepos import make_origin
from tests.bench.machines import Machine
from tests.bench.sshd import SSHBench

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("swarm")]

# The example's production stack as a swarm user writes it: the same compose file, with a
# quicker healthcheck and two web tasks spread over the nodes. HEALTH_BROKEN makes /health fail.
COMPOSE = """\
services:
  web:
    build:
      context: ./example
      args:
        PYTHON_IMAGE: ${PYTHON_IMAGE}
        APP_VERSION: ${APP_VERSION:-dev}
    image: ${WEB_IMAGE}:latest
    environment:
      DATABASE_URL: postgresql://recipes:${RECIPES_DB_PASSWORD:?set it}@db:5432/recipes
      HEALTH_BROKEN: ${HEALTH_BROKEN:-}
    ports:
      - "${WEB_PORT}:8000"
    depends_on:
      db:
        condition: service_healthy
    healthcheck:
      test: ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
      interval: 2s
      timeout: 3s
      retries: 3
      start_period: 20s
    deploy:
      replicas: 2
      placement:
        preferences:
          - spread: node.id
    stop_grace_period: 20s
  db:
    image: ${POSTGRES_IMAGE}
    environment:
      POSTGRES_USER: recipes
      POSTGRES_DB: recipes
      POSTGRES_PASSWORD: ${RECIPES_DB_PASSWORD:?set it}
    volumes:
      - dbdata:/var/lib/postgresql/data
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -h 127.0.0.1 -U recipes -d recipes"]
      interval: 2s
      timeout: 5s
      retries: 15
      start_period: 30s
    restart: unless-stopped

volumes:
  dbdata:
"""

def deploy_toml(machines: list[Machine], web_port: int, *, broken: bool = False) -> str:
    hosts = ", ".join(f'"{m.name}"' for m in machines)
    return app_table(APP) + f"""
[environments.production]
engine = "swarm"
hosts = [{hosts}]
path = "{PATH}"
healthcheck_url = "http://127.0.0.1:{web_port}/health"
health_timeout = 60

[environments.production.proxy]
image = "{HAPROXY_IMAGE}"

[environments.production.env]
RECIPES_DB_PASSWORD = "${{RECIPES_DB_PASSWORD}}"
WEB_PORT = "{web_port}"
WEB_IMAGE = "{APP}-web"
PYTHON_IMAGE = "{PYTHON_IMAGE}"
POSTGRES_IMAGE = "{POSTGRES_IMAGE}"
{'HEALTH_BROKEN = "1"' if broken else ""}
"""


class SwarmFleet(Fleet):
    """The fleet's checks, with the database reached in its task container (it publishes no port)."""

    def sql(self, statement: str) -> list[tuple]:
        container = self.primary.docker("ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={APP}_db",
                                        "--filter", "status=running").stdout.split()
        assert container, "no running db task on the primary"
        out = self.primary.docker("exec", container[0], "psql", "-U", "recipes", "-d", "recipes", "-tA", "-F", "|",
                                  "-c", statement).stdout
        rows = []
        for line in out.splitlines():
            if line.strip():
                rows.append(tuple(int(v) if v.isdigit() else v for v in line.split("|")))
        return rows

    def service_images(self) -> dict[str, str]:
        out = self.primary.docker("service", "ls", "--filter", f"label=com.docker.stack.namespace={APP}",
                                  "--format", "{{.Name}} {{.Image}}").stdout
        return {name.removeprefix(f"{APP}_"): image for name, _, image in (line.partition(" ") for line in out.splitlines())}

    def web_tasks(self) -> list[tuple[str, str]]:
        """(node, image) of the web service's running tasks."""
        out = self.primary.docker("service", "ps", f"{APP}_web", "--filter", "desired-state=running",
                                  "--format", "{{.Node}} {{.Image}} {{.CurrentState}}").stdout
        return sorted((line.split()[0], line.split()[1]) for line in out.splitlines() if " Running " in f" {line} ")


class Observer:
    """GETs /health through both nodes' published port every 20 ms, on a new connection each
    time, as users would, and counts what failed."""

    def __init__(self, fleet: SwarmFleet) -> None:
        self.fleet = fleet
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        machines = self.fleet.machines
        n = 0
        while not self._stop.is_set():
            machine = machines[n % len(machines)]
            n += 1
            try:
                with urllib.request.urlopen(f"http://{machine.address}:{self.fleet.web_port}/health", timeout=30) as answer:  # noqa: S310
                    answer.read()
                self.ok += 1
            except (urllib.error.URLError, OSError) as error:
                self.failed.append(f"{machine.name}: {error}")
            time.sleep(0.02)

    def __enter__(self) -> Observer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(40)


@pytest.fixture(scope="module")
def swarm(machine_factory, sshd: SSHBench) -> Iterator[SwarmFleet]:  # noqa: ANN001
    machines = machine_factory(2)
    manager, worker = machines
    manager.docker("swarm", "init", "--advertise-addr", manager.address)
    token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    worker.docker("swarm", "join", "--token", token, f"{manager.address}:2377")
    # Only the manager has the base images; the worker gets what it needs from deployer.
    manager.load_images(PYTHON_IMAGE, POSTGRES_IMAGE, HAPROXY_IMAGE)
    base = Path(tempfile.mkdtemp(prefix="deployer-e2e-swarm-"))
    origin = make_origin(base / "origin", {"docker-compose.prod.yml": COMPOSE, "example/wsgi.py": HEALTH_BROKEN_WSGI})
    laptop = origin.clone(base / "laptop")
    home = ssh_home(base, machines, sshd.key_path)
    made = SwarmFleet(machines, laptop, home, "pw-" + secrets.token_hex(8), free_port())
    made.commit({"deploy.toml": deploy_toml(machines, made.web_port)}, "deploy to a swarm")
    try:
        yield made
    finally:
        shutil.rmtree(base, ignore_errors=True)


def release(fleet: SwarmFleet, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    result = fleet.deployer("release", "production", "--yes", "--json", *args)
    assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


RUNS = "5a1e00000001"  # counts its own runs


def test_a_first_release_runs_on_both_nodes(swarm: SwarmFleet) -> None:
    first = result_of(release(swarm).stdout)
    assert first["outcome"] == "succeeded", first
    assert swarm.revision() == (EXAMPLE_HEAD,)
    tasks = swarm.web_tasks()
    assert sorted(node for node, _ in tasks) == ["m1", "m2"], tasks  # spread over both nodes
    images = swarm.service_images()
    assert set(images) == {"web", "db", "deployer-proxy"}, images
    assert all(image.startswith("sha256:") for image in images.values()), images  # by id: no registry asked
    for machine in swarm.machines:
        status, body = swarm.get(machine)
        assert status == 200 and json.loads(body)["revision"] == EXAMPLE_HEAD, (machine.name, body)
        assert swarm.get(machine, "/")[0] == 200  # the page that reads the database
    # The worker got the app's image from deployer (it had no image at all).
    web_id = images["web"]
    assert swarm.machines[1].docker("image", "inspect", "--format", "{{.Id}}", web_id).stdout.strip() == web_id
    # The journal is on the primary; the checkout too (the worker needs none).
    assert swarm.journal(swarm.primary)[-1]["outcome"] == "succeeded"
    assert swarm.head(swarm.machines[1]) is None
    # status reads the stack's services and tasks, and the nodes.
    status = swarm.deployer("status", "production", "--json")
    report = result_of(status.stdout)
    assert status.returncode == 0, (report["problems"], status.stderr[-2000:])
    services = {s["service"]: s for s in report["swarm"]}
    assert services["web"]["running"] == services["web"]["desired"] == 2, services["web"]
    assert services["db"]["running"] == 1 and services["deployer-proxy"]["desired"] is None, services
    assert sorted(t.split(":")[0] for t in services["web"]["tasks"]) == ["m1", "m2"], services["web"]
    assert sorted(n["name"] for n in report["nodes"]) == ["m1", "m2"], report["nodes"]
    assert report["database"]["verdict"] == "up to date", report["database"]
    text = swarm.deployer("status", "production")
    assert "swarm      m1 ready (manager), m2 ready" in text.stdout and "web              2/2 running" in text.stdout, text.stdout


def test_a_migrating_release_runs_the_migration_once_and_fails_no_request(swarm: SwarmFleet) -> None:
    for number, machine in enumerate(swarm.machines):
        assert swarm.post_user(machine, f"before{number}@example.com") == 201
    files = add_migration(RUNS, EXAMPLE_HEAD, "count migration runs",
                          ['op.create_table("migration_runs", sa.Column("id", sa.Integer, primary_key=True))',
                           'op.execute("INSERT INTO migration_runs DEFAULT VALUES")'],
                          ['op.drop_table("migration_runs")'])
    sha = swarm.commit(files, "a migration, released to the swarm")
    before = swarm.service_images()
    # The dry run shows the stack deploy and what the stack changes of the compose file; it changes nothing.
    plan = swarm.deployer("release", "production", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr[-3000:]
    commands = {s["step"]: s["commands"] for s in result_of(plan.stdout)["steps"]}
    assert any("docker stack deploy --resolve-image never" in c for c in commands["swap"]), commands["swap"]
    assert any("fleetapp-web:latest to m2" in c or "copy " in c for c in commands["build"]), commands["build"]
    assert "stack: web: build left out" in plan.stderr and "stack: web: depends_on left out" in plan.stderr, plan.stderr
    assert swarm.service_images() == before and swarm.revision() == (EXAMPLE_HEAD,)
    with Observer(swarm) as observer:
        done = result_of(release(swarm).stdout)
    assert done["outcome"] == "succeeded" and done["commit"] == sha, done
    assert swarm.sql("SELECT count(*) FROM migration_runs") == [(1,)]  # the migration ran exactly once
    assert swarm.revision() == (RUNS,)
    after = swarm.service_images()
    assert after["web"] != before["web"] and after["db"] == before["db"], (before, after)
    assert {image for _, image in swarm.web_tasks()} == {after["web"]}
    assert observer.ok > 100 and not observer.failed, (observer.ok, observer.failed[:5])
    print(f"swarm release: {observer.ok} requests through both nodes, {len(observer.failed)} failed; "
          f"deployer's prober: {done['served']}")
    served = done["served"]
    assert served and served["failed"] == 0 and served["probes"] > 0, served
    steps = {s["name"]: s["detail"] for s in done["steps"]}
    assert "layers" in steps["build"] or "already there" in steps["build"], steps["build"]
    assert swarm.sql("SELECT count(*) FROM users WHERE email LIKE 'before%'") == [(2,)]


def test_a_rollback_downgrades_and_brings_back_the_previous_images(swarm: SwarmFleet) -> None:
    journal = swarm.journal(swarm.primary)
    previous = [r for r in journal if r["kind"] == "release" and r["outcome"] == "succeeded"][-2]
    result = swarm.deployer("rollback", "production", "--yes", "--json")
    assert result.returncode == 0, result.stderr[-5000:]
    assert swarm.revision() == (EXAMPLE_HEAD,)
    assert swarm.service_images()["web"] == previous["image_ids"]["web"]
    assert not swarm.sql("SELECT 1 FROM information_schema.tables WHERE table_name = 'migration_runs'")
    for machine in swarm.machines:
        status, body = swarm.get(machine)
        assert status == 200 and json.loads(body)["revision"] == EXAMPLE_HEAD, (machine.name, body)
    assert swarm.sql("SELECT count(*) FROM users WHERE email LIKE 'before%'") == [(2,)]


def test_a_failing_update_is_rolled_back_by_swarm_and_reported(swarm: SwarmFleet) -> None:
    release(swarm)  # forward again: the migration and its code
    assert swarm.revision() == (RUNS,)
    good = swarm.service_images()
    swarm.commit({"deploy.toml": deploy_toml(swarm.machines, swarm.web_port, broken=True)}, "a release whose health fails")
    failed = release(swarm, expect=1)
    said = failed.stdout + failed.stderr
    assert f"Swarm rolled the update of {APP}_web back" in said, said[-4000:]
    # Every service back on the images it ran; the site answers; the schema untouched.
    assert swarm.service_images() == good
    assert swarm.revision() == (RUNS,)
    for machine in swarm.machines:
        assert swarm.get(machine)[0] == 200
    record = swarm.journal(swarm.primary)[-1]
    assert record["outcome"] == "failed" and "rolled the update" in record["error"], record
    status = swarm.deployer("status", "production", "--json")
    report = result_of(status.stdout)
    assert status.returncode == 15, report
    # Recovery deployed the previous stack again: what runs is whole; the failed release is said.
    assert any(p == f"the last release {record['id']} failed" for p in report["problems"]), report["problems"]
    assert all(s["running"] == (s["desired"] or 2) for s in report["swarm"]), report["swarm"]


def test_a_run_killed_while_the_stack_updates_is_converged_by_recover(swarm: SwarmFleet) -> None:
    from tests.bench.faults import Background

    swarm.commit({"deploy.toml": deploy_toml(swarm.machines, swarm.web_port)}, "health mended")
    release(swarm)
    good = swarm.service_images()
    revision_before = swarm.revision()
    files = add_migration("5a1e00000002", revision_before[0], "a column for the killed run",
                          ['op.add_column("users", sa.Column("killed_run", sa.String(40)))'],
                          ['op.drop_column("users", "killed_run")'])
    swarm.commit(files, "a release killed while the stack updates")
    run = Background(swarm, ("release", "production", "--yes"))  # type: ignore[arg-type]
    run.wait_line(r"^> swap", timeout=600)  # migrated; the stack is being deployed
    time.sleep(3)  # the deploy is under way: the new web tasks start
    run.kill()
    assert run.finish() == -signal.SIGKILL
    assert swarm.revision() == ("5a1e00000002",)
    shown = swarm.deployer("status", "production")
    assert shown.returncode == 16, shown.stdout + shown.stderr  # interrupted, and it says how to converge
    assert "deployer recover production" in shown.stdout

    with Observer(swarm) as observer:
        recovered = swarm.deployer("recover", "production", "--json")
    assert recovered.returncode == 0, recovered.stdout[-2000:] + recovered.stderr[-5000:]
    assert swarm.revision() == revision_before
    assert swarm.service_images() == good
    assert {image for _, image in swarm.web_tasks()} == {good["web"]}
    for machine in swarm.machines:
        status, body = swarm.get(machine)
        assert status == 200 and json.loads(body)["revision"] == revision_before[0], (machine.name, body)
    assert not (swarm.primary.srv / "app.deployer" / "run.json").exists()
    assert observer.ok > 50, observer.ok
    report = result_of(swarm.deployer("status", "production", "--json").stdout)
    assert report["database"]["verdict"] == "up to date" and not report["interrupted"], report
