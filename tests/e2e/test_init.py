"""``deployer init`` end to end: on three differently shaped apps, the deploy.toml it writes
passes ``config check`` and a real release succeeds with it, as a user would go:
init, check, commit, release, then look at the site, the schema and ``status``.

- the example app (this repository's docker-compose.prod.yml + example/: build context
  ./example, gunicorn, PostgreSQL, health from the compose healthcheck), released locally
  behind deployer's proxy (``init --proxy``);
- tests/apps/blog (services app/postgres, flask run, a required password, health from a
  route in app.py), released over SSH through an ~/.ssh/config alias;
- tests/apps/jotter (SQLite in a volume, no database service), released locally.

Only what a user must say is passed: the host, and what the bench needs on a shared machine
(a free port, a unique project name and path, the offline base images) as ``--var``. One
release each, each on its own worker: the cheapest proof that what init writes works.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.bench.apps import AppDeployment
from tests.bench.cli import result as result_of
from tests.bench.deployment import EXAMPLE_HEAD, Deployment
from tests.bench.docker import HAPROXY_IMAGE, POSTGRES_IMAGE, PYTHON_IMAGE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def init_check_commit(run, commit, environment: str, *args: str) -> str:  # noqa: ANN001 - the deployment's own helpers
    """``deployer init ARGS`` then ``deployer config check ENV`` (both must pass), then the
    commit a user makes; the written deploy.toml."""
    init = run("init", "--environment", environment, *args)
    assert init.returncode == 0, f"{init.stdout}\n{init.stderr}"
    last = init.stdout.strip().splitlines()[-1].strip()
    assert last.startswith(f"deployer config check {environment}"), init.stdout  # it ends with the next command
    check = run("config", "check", environment)
    assert check.returncode == 0, f"{check.stdout}\n{check.stderr}"
    assert f"ready, as far as can be told from here: {environment}" in check.stdout
    commit()
    return init.stdout


def no_library_noise(stderr: str) -> None:
    """Nothing of paramiko's (its "Secsh channel N open FAILED" lines) reaches the user."""
    assert "paramiko" not in stderr and "Secsh channel" not in stderr and not re.search(r"^Traceback", stderr, re.M), stderr


@pytest.mark.xdist_group("init-example")
def test_init_on_the_example_app_then_a_local_release_behind_the_proxy(deployment_factory) -> None:  # noqa: ANN001
    d: Deployment = deployment_factory("local")
    (d.laptop / "deploy.toml").unlink()  # the bench wrote one: init writes its own

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return d.deployer(*args)

    said = init_check_commit(
        run, lambda: d.commit({}, "deploy with deployer"), d.env_name,
        "--host", "local", "--path", str(d.server_path), "--name", d.name, "--proxy", "--proxy-image", HAPROXY_IMAGE,
        "--var", f"WEB_PORT={d.web_port}", "--var", f"WEB_IMAGE={d.name}-web",
        "--var", f"PYTHON_IMAGE={PYTHON_IMAGE}", "--var", f"POSTGRES_IMAGE={POSTGRES_IMAGE}",
    )
    assert "web service    web (built from example, runs gunicorn" in said, said
    assert f"health         http://127.0.0.1:{d.web_port}/health (the web service's healthcheck)" in said, said
    written = (d.laptop / "deploy.toml").read_text()
    assert 'RECIPES_DB_PASSWORD = "${RECIPES_DB_PASSWORD}"' in written and f"[environments.{d.env_name}.proxy]" in written

    result = d.release()
    assert result["outcome"] == "succeeded", result
    assert d.server_head() == result["commit"] and d.revision() == (EXAMPLE_HEAD,)
    assert d.wait_answer("/health")[0] == 200
    status, body = d.get("/")
    assert status == 200, body
    proxy = subprocess.run(["docker", "ps", "--filter", f"name=^deployer-proxy-{d.name}$", "--format", "{{.Ports}}"],
                           capture_output=True, text=True, check=True).stdout
    assert f"127.0.0.1:{d.web_port}->" in proxy, proxy  # the proxy took over the web service's port
    state = d.deployer("status", d.env_name, "--json")
    assert state.returncode == 0 and result_of(state.stdout)["verdict"] == "up to date", state.stdout


def app_init_release(d: AppDeployment, host: str, *variables: str) -> dict:
    """init (host, unique name and path, the bench's variables), check, commit, release."""
    (d.laptop / "deploy.toml").unlink()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return d.deployer(*args)

    init_check_commit(run, lambda: d.commit({"deploy.toml": (d.laptop / "deploy.toml").read_bytes()}, "deploy with deployer"),
                      d.env_name, "--host", host, "--path", str(d.server_path), "--name", d.name,
                      *[word for pair in variables for word in ("--var", pair)])
    result = d.release()
    assert result["outcome"] == "succeeded", result
    no_library_noise(result["stderr"])
    assert d.server_head() == d.head()
    assert d.revision() == d.shape.heads_first
    status, body = d.page()
    assert status == 200, f"{body[:1500]}\n{d.logs()}"
    code, doc = d.status()
    assert code == 0 and doc["verdict"] == "up to date", doc
    return result


@pytest.mark.xdist_group("init-blog")
def test_init_on_blog_then_a_release_over_ssh(app_deployment_factory) -> None:  # noqa: ANN001
    d: AppDeployment = app_deployment_factory("blog", "ssh")
    app_init_release(d, "bench", f"BLOG_PORT={d.web_port}", f"PYTHON_IMAGE={PYTHON_IMAGE}", f"POSTGRES_IMAGE={POSTGRES_IMAGE}")
    written = (d.laptop / "deploy.toml").read_text()
    assert 'web_service = "app"' in written and 'db_service = "postgres"' in written
    assert 'BLOG_DB_PASSWORD = "${BLOG_DB_PASSWORD}"' in written  # the secret stays in the shell


@pytest.mark.xdist_group("init-jotter")
def test_init_on_jotter_then_a_local_release(app_deployment_factory) -> None:  # noqa: ANN001
    d: AppDeployment = app_deployment_factory("jotter", "local")
    app_init_release(d, "local", f"JOTTER_PORT={d.web_port}", f"PYTHON_IMAGE={PYTHON_IMAGE}")
    written = (d.laptop / "deploy.toml").read_text()
    assert 'db_service = ""' in written and f'healthcheck_url = "http://127.0.0.1:{d.web_port}/health"' in written
    assert Path(f"{d.server_path}.deployer").is_dir()  # deployer's files beside the checkout, outside the build context
