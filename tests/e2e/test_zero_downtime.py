"""Zero-downtime releases end to end: the example app behind deployer's proxy, released over
SSH with the real command, while this test sends a GET of the page that reads the database
through the public port every 20 ms — an observer of its own, beside deployer's report.

What a user would check: the proxy owns the port and the web service publishes none; a
code-only release, an additive migration (containers overlap) and a breaking one (requests
held, never failed, for less than the pause bound) fail no request; a new container that
never answers healthy gets no request and the old one keeps serving; deployer killed in the
middle of the switch leaves the site serving and the next command converges to one
container; a rollback swaps the same way; every release says what users saw.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from deployer.proxy.probe import Prober, ProbeSummary
from tests.bench.deployment import BROKEN_HEALTH_WSGI, EXAMPLE_HEAD, PAUSE_TIMEOUT, Deployment, add_migration

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("zero-downtime")]

R_RATING = "e1f2a3b4c5d6"  # additive: a nullable column
R_DROP = "f2a3b4c5d6e7"  # breaking: drops a column the running code reads
PAUSE_BOUND_MS = PAUSE_TIMEOUT * 1000



@pytest.fixture(scope="module")
def d(deployment_factory) -> Deployment:
    return deployment_factory("ssh", health_timeout=25, proxy=True)


@contextmanager
def observed(d: Deployment) -> Iterator[list[ProbeSummary]]:
    """Probe GET / (it reads every mapped column) through the public port while the block runs."""
    seen: list[ProbeSummary] = []
    prober = Prober("127.0.0.1", d.web_port, "/", interval=0.02, timeout=30)
    with prober:
        yield seen
    seen.append(prober.summary())


def web_containers(d: Deployment) -> list[dict]:
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={d.name}",
         "--filter", "label=com.docker.compose.service=web", "--format", "{{json .}}"],
        capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def proxy_state(d: Deployment) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.State.Status}}", f"deployer-proxy-{d.name}"],
                          capture_output=True, text=True).stdout.strip()


def assert_served(seen: list[ProbeSummary], *, at_least: int = 20) -> ProbeSummary:
    summary = seen[-1]
    assert summary.failed == 0, summary
    assert summary.probes >= at_least, summary
    return summary


def test_first_release_puts_the_proxy_in_front_of_the_web_service(d: Deployment) -> None:
    result = d.release()
    assert d.revision() == (EXAMPLE_HEAD,)
    assert proxy_state(d) == "running"
    webs = web_containers(d)
    assert len(webs) == 1 and webs[0]["State"] == "running", webs
    # the web container publishes nothing: the proxy owns the port
    ports = subprocess.run(["docker", "port", webs[0]["ID"]], capture_output=True, text=True).stdout.strip()
    assert ports == "", ports
    assert d.wait_answer("/")[0] == 200
    assert result["served"] is None  # nothing served before: no one to fail
    status = d.deployer("status", d.env_name)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"proxy      deployer-proxy-{d.name} running, routes to {webs[0]['Names']}" in status.stdout, status.stdout
    names = [s["name"] for s in result["steps"]]
    assert names.index("migrate") < names.index("swap") < names.index("health")


def test_a_code_only_release_fails_no_request(d: Deployment) -> None:
    before = web_containers(d)[0]["ID"]
    d.commit({"example/CHANGES.txt": "a code-only change\n"}, "a code-only change")
    with observed(d) as seen:
        result = d.release()
    summary = assert_served(seen)
    webs = web_containers(d)
    assert len(webs) == 1 and webs[0]["ID"] != before
    # deployer measured the same: what users saw is in the result and the journal
    served = result["served"]
    assert served["failed"] == 0 and served["probes"] >= 20, served
    assert d.journal()[-1]["served"] == served
    swap = next(s for s in result["steps"] if s["name"] == "swap")
    assert "served throughout: 0 failed of" in swap["detail"] and "overlap" in swap["detail"], swap
    history = d.deployer("history", d.env_name)
    assert history.returncode == 0 and "served throughout: 0 failed of" in history.stdout, history.stdout
    text = d.deployer("release", d.env_name, "--yes", "--force")  # the same commit: --force runs it anyway
    assert text.returncode == 0, text.stderr
    assert "served throughout: 0 failed of" in text.stdout, text.stdout
    print(f"code-only release: {summary.describe()}")


def test_an_additive_migration_overlaps_and_fails_no_request(d: Deployment) -> None:
    rows = d.sql("SELECT count(*) FROM recipes")
    d.commit(add_migration(R_RATING, EXAMPLE_HEAD, "add a rating", ["op.add_column('recipes', sa.Column('rating', sa.Integer()))"],
                           ["op.drop_column('recipes', 'rating')"]), "add a rating")
    plan = d.deployer("release", d.env_name, "--dry-run")
    assert plan.returncode == 0 and "overlap: the pending migrations are additive" in plan.stdout, plan.stdout
    with observed(d) as seen:
        d.release()
    assert_served(seen)
    assert d.revision() == (R_RATING,)
    assert d.sql("SELECT count(*) FROM recipes") == rows


def test_a_breaking_migration_holds_requests_and_fails_none(d: Deployment) -> None:
    d.sql("INSERT INTO users (email, name) VALUES ('pause@example.com', 'Pause')")
    d.sql("INSERT INTO recipes (recipe_title, recipe_description, is_public, inspiration, user_id) "
          "SELECT 'soup', 'hot', true, 'grandma', id FROM users WHERE email = 'pause@example.com'")
    models = (d.laptop / "example/recipes/models.py").read_text()
    without = models.replace("    inspiration = db.Column(db.String, default=None, nullable=True)\n", "")
    assert without != models
    d.commit({"example/recipes/models.py": without,
              **add_migration(R_DROP, R_RATING, "drop inspiration", ["op.drop_column('recipes', 'inspiration')"],
                              ["op.add_column('recipes', sa.Column('inspiration', sa.String(), nullable=True))"])},
             "drop the inspiration column")
    plan = d.deployer("release", d.env_name, "--dry-run")
    assert plan.returncode == 0 and "pause:" in plan.stdout and "inspiration" in plan.stdout, plan.stdout
    with observed(d) as seen:
        result = d.release()
    summary = assert_served(seen)
    timings = {s["name"]: s["seconds"] for s in result["steps"]}
    print(f"breaking migration, pause mode: {summary.describe()}; steps {timings}")
    assert summary.slowest_ms < PAUSE_BOUND_MS, (summary, timings)
    hold = next(s for s in result["steps"] if s["name"] == "hold")
    assert hold["status"] == "ok" and "pause:" in hold["detail"], hold
    assert d.revision() == (R_DROP,)
    assert d.sql("SELECT recipe_title FROM recipes WHERE recipe_title = 'soup'") == [("soup",)]
    assert result["served"]["failed"] == 0


def test_a_new_container_that_never_answers_gets_no_request(d: Deployment) -> None:
    before = web_containers(d)[0]["ID"]
    head = d.server_head()
    wsgi = (d.laptop / "example/wsgi.py").read_text()
    d.commit({"example/wsgi.py": BROKEN_HEALTH_WSGI}, "break /health")
    with observed(d) as seen:
        failed = d.release(expect=1)
    assert_served(seen)
    assert "did not answer healthy" in failed["stderr"] and "never received a request" in failed["stderr"], failed["stderr"]
    webs = web_containers(d)
    assert [w["ID"] for w in webs] == [before], webs  # the old one serves, the new one is gone
    assert d.server_head() == head and d.revision() == (R_DROP,)
    assert d.journal()[-1]["outcome"] == "failed"
    d.commit({"example/wsgi.py": wsgi}, "mend /health")


def test_deployer_killed_during_the_switch_leaves_the_site_serving(d: Deployment) -> None:
    d.commit({"example/CHANGES.txt": "a change to kill\n"}, "a change to kill mid-switch")
    with observed(d) as seen:
        process = subprocess.Popen(
            d.deployer_argv("release", d.env_name, "--yes"), cwd=d.laptop, env=d.environ(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )
        lines = []
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "proxy: slot" in line:  # the new backend is ready in the proxy; the old one not yet drained
                process.send_signal(signal.SIGKILL)
                break
        process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL, "".join(lines)
        time.sleep(3)  # the site keeps serving with no deployer running
        assert len([w for w in web_containers(d) if w["State"] == "running"]) == 2
        status = d.deployer("status", d.env_name)
        assert "interrupted" in status.stdout, status.stdout
        assert "routes to" in status.stdout, status.stdout  # one or both containers: it serves
        recovered = d.deployer("recover", d.env_name)
        assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert_served(seen)
    webs = web_containers(d)
    assert len(webs) == 1 and webs[0]["State"] == "running", webs
    assert d.wait_answer("/")[0] == 200
    assert d.revision() == (R_DROP,)
    status = d.deployer("status", d.env_name, "--json")
    report = json.loads(status.stdout)["result"]
    assert report["interrupted"] is None and report["verdict"] == "up to date", report


def test_a_rollback_swaps_and_fails_no_request(d: Deployment) -> None:
    with observed(d) as seen:
        result = d.deployer("rollback", d.env_name, R_RATING, "--yes", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_served(seen)
    assert d.revision() == (R_RATING,)
    assert d.sql("SELECT recipe_title FROM recipes WHERE recipe_title = 'soup'") == [("soup",)]
    webs = web_containers(d)
    assert len(webs) == 1 and webs[0]["State"] == "running", webs


def test_on_this_machine_a_failed_first_release_removes_the_proxy_and_a_release_fails_no_request(deployment_factory) -> None:
    local = deployment_factory("local", health_timeout=15, proxy=True)
    wsgi = (local.laptop / "example/wsgi.py").read_text()
    local.commit({"example/wsgi.py": BROKEN_HEALTH_WSGI}, "break /health")
    failed = local.release(expect=1)
    assert "nothing was deployed" in failed["stderr"], failed["stderr"]
    assert proxy_state(local) == "" and web_containers(local) == []  # as the first release found it
    local.commit({"example/wsgi.py": wsgi}, "mend /health")
    local.release()
    assert proxy_state(local) == "running"
    local.commit({"example/CHANGES.txt": "a local change\n"}, "a local change")
    with observed(local) as seen:
        result = local.release()
    assert_served(seen)
    assert result["served"]["failed"] == 0 and result["served"]["probes"] >= 20, result["served"]
    assert [w["State"] for w in web_containers(local)] == ["running"]
