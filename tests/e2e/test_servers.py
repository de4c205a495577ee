"""Servers as they are: the blog of the corpus released and rolled back to sshd instances
set up the way real servers are, with the real ``deployer`` command.

- an sshd with no SFTP subsystem;
- a non-root deploy user in the docker group;
- a server with only compose v1 (``docker-compose`` 1.29; ``docker compose`` refused);
- through a bastion: ``ProxyJump`` and, separately, ``ProxyCommand`` in ~/.ssh/config
  (the jump sshd's log shows the forwarded connection); a jump host that refuses to
  forward makes the command fail clearly, exit 3;
- a failure while taking the lock (the state directory not writable by the deploy user)
  leaves no lock behind, and the next release works once the directory is fixed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.bench.apps import AppDeployment, write_ssh_home
from tests.bench.docker import free_port
from tests.bench.gitrepos import git

pytestmark = pytest.mark.e2e

APP = "blog"


def server(name: str):  # noqa: ANN201 - a list of pytest marks
    """Each server test on its own xdist group, with room for two releases and a rollback."""
    return [pytest.mark.xdist_group(f"server-{name}"), pytest.mark.timeout(900)]


def release_and_rollback(d: AppDeployment) -> None:
    """What a user checks: a first release, a migrating one, a rollback, the page each time."""
    first = d.head()
    result = d.release()
    assert result["outcome"] == "succeeded" and d.server_head() == first
    assert d.revision() == d.shape.heads_first
    status, body = d.post_form()
    assert status == 200 and d.shape.form_shown in body, body[:1000]
    rows = d.rows()

    d.apply("migrate")
    result = d.release()
    assert tuple(result["revision_after"]) == d.shape.heads_migrate
    assert d.revision() == d.shape.heads_migrate and d.rows() == rows
    status, body = d.page()
    assert status == 200 and d.shape.migrate_marker in body

    result = d.rollback()
    assert result["outcome"] == "succeeded"
    assert d.revision() == d.shape.heads_first and d.server_head() == first and d.rows() == rows
    status, body = d.page()
    assert status == 200 and d.shape.form_shown in body and d.shape.migrate_marker not in body
    assert not d.lock_held()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may enter (the bench user's server checkout goes below it)."""
    path = Path(tempfile.mkdtemp(prefix="deployer-servers-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def authorize(bench_user, sshd) -> None:  # noqa: ANN001
    """Make sure this session's key is among the deploy user's authorized keys.

    Another test session on the same machine (or another xdist worker) writes its own key
    there; sshd reads that file as the user, so the bench key file does not help.
    """
    public = sshd.key_path.with_name(sshd.key_path.name + ".pub").read_text().strip()
    authorized = bench_user.home / ".ssh" / "authorized_keys"
    lines = authorized.read_text().splitlines() if authorized.exists() else []
    if public not in lines:
        with authorized.open("a") as handle:
            handle.write(public + "\n")


@pytest.fixture
def git_server() -> Iterator[Callable[[AppDeployment], None]]:
    """Serve an app's origin with ``git daemon`` on loopback, as a git server would.

    The deploy user cannot use a local path: git refuses a repository another user owns
    ("dubious ownership"). Over git:// the daemon reads it, and the laptop pushes to it.
    """
    daemons: list[subprocess.Popen[bytes]] = []

    def serve(d: AppDeployment) -> None:
        port = free_port()
        daemon = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack", f"--base-path={d.base}",
             "--listen=127.0.0.1", f"--port={port}", str(d.base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        daemons.append(daemon)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert daemon.poll() is None and time.monotonic() < deadline, "git daemon did not start"
                time.sleep(0.1)
        git("remote", "set-url", "origin", f"git://127.0.0.1:{port}/{d.origin.name}", cwd=d.laptop)

    yield serve
    for daemon in daemons:
        daemon.terminate()
        daemon.wait(timeout=10)


@pytest.mark.parametrize("name", [pytest.param("no-sftp", marks=server("no-sftp"))])
def test_server_without_sftp(name: str, app_deployment_factory, sshd_factory) -> None:  # noqa: ANN001
    bare = sshd_factory(sftp=False)
    d = app_deployment_factory(APP, "ssh", host="nosftp")
    write_ssh_home(d.home, [("nosftp", bare, None)])
    release_and_rollback(d)
    # deployer never asked for the subsystem the server does not have
    assert "subsystem request for sftp" not in bare.log(), bare.log()[-2000:]


@pytest.mark.parametrize("name", [pytest.param("non-root", marks=server("bench-user"))])
def test_non_root_user_in_the_docker_group(name: str, app_deployment_factory, sshd, bench_user, shared_dir, git_server) -> None:  # noqa: ANN001
    srv = shared_dir / "srv"
    srv.mkdir()
    os.chown(srv, bench_user.uid, bench_user.gid)
    d = app_deployment_factory(APP, "ssh", host="deploy", server_parent=srv)
    git_server(d)
    write_ssh_home(d.home, [("deploy", sshd, bench_user.name)])
    authorize(bench_user, sshd)
    release_and_rollback(d)
    # the checkout and deployer's files were written by the deploy user, not by root
    assert d.server_path.stat().st_uid == bench_user.uid
    state = Path(f"{d.server_path}.deployer")
    assert state.is_dir() and state.stat().st_uid == bench_user.uid


@pytest.fixture
def compose_v1_path(tmp_path: Path) -> str:
    """A PATH whose ``docker`` refuses the ``compose`` subcommand: only ``docker-compose``
    (Debian's 1.29, installed by scripts/setup) can run compose there."""
    v1 = shutil.which("docker-compose", path="/usr/bin:/bin")
    if v1 is None:
        pytest.fail("docker-compose (v1) is not installed in /usr/bin: run scripts/setup (it installs Debian's docker-compose)")
    real_docker = shutil.which("docker")
    assert real_docker, "the docker command is missing"
    wrapper = tmp_path / "bin"
    wrapper.mkdir()
    script = wrapper / "docker"
    script.write_text(
        "#!/bin/sh\n"
        "# This server's docker has no compose plugin.\n"
        'if [ "$1" = compose ]; then\n'
        "    echo \"docker: 'compose' is not a docker command.\" >&2\n"
        "    exit 1\n"
        "fi\n"
        f'exec {real_docker} "$@"\n'
    )
    script.chmod(0o755)
    tmp_path.chmod(0o755)
    return f"{wrapper}:/usr/bin:/bin"


@pytest.mark.parametrize("name", [pytest.param("compose-v1", marks=server("compose-v1"))])
def test_server_with_only_compose_v1(name: str, app_deployment_factory, sshd_factory, compose_v1_path: str) -> None:  # noqa: ANN001
    old = sshd_factory(extra=[f"SetEnv PATH={compose_v1_path}"])
    d = app_deployment_factory(APP, "ssh", host="old")
    config = write_ssh_home(d.home, [("old", old, None)])
    # what the server offers, seen through the same login deployer uses
    probe = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "old", "docker compose version; echo; docker-compose version --short"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert "'compose' is not a docker command" in probe.stderr and re.search(r"^1\.29", probe.stdout, re.M), (probe.stdout, probe.stderr)
    release_and_rollback(d)
    versions = {c.labels.get("com.docker.compose.version") for c in d.project_containers()}
    assert versions and all(v and v.startswith("1.") for v in versions), versions


def jump_config(jump_alias: str, mode: str, config_path: Path) -> str:
    """The target's extra line: ``ProxyJump`` or an OpenSSH ``ProxyCommand`` through the jump."""
    if mode == "ProxyJump":
        return f"    ProxyJump {jump_alias}\n"
    return f"    ProxyCommand ssh -F {config_path} -o BatchMode=yes -W %h:%p {jump_alias}\n"


@pytest.mark.parametrize(
    "mode", [pytest.param(m, marks=server(m)) for m in ("ProxyJump", "ProxyCommand")]
)
def test_through_a_bastion(mode: str, app_deployment_factory, sshd, sshd_factory) -> None:  # noqa: ANN001
    jump = sshd_factory(log_level="DEBUG1")
    d = app_deployment_factory(APP, "ssh", host="app-server")
    config = d.home / ".ssh" / "config"
    write_ssh_home(d.home, [("bastion", jump, None), ("app-server", sshd, None)])
    config.write_text(config.read_text().replace(
        "Host app-server\n", "Host app-server\n" + jump_config("bastion", mode, config), 1))
    release_and_rollback(d)
    log = jump.log()
    forwarded = re.findall(rf"direct-tcpip.*|.*target {re.escape(sshd.host)} port {sshd.port}\b.*", log)
    assert any(str(sshd.port) in line for line in forwarded), f"the bastion never forwarded to port {sshd.port}:\n{log[-3000:]}"


@pytest.mark.parametrize("name", [pytest.param("refusing-jump", marks=server("refusing-jump"))])
def test_a_jump_host_that_refuses_fails_clearly(name: str, app_deployment_factory, sshd, sshd_factory) -> None:  # noqa: ANN001
    jump = sshd_factory(allow_tcp_forwarding=False)
    d = app_deployment_factory(APP, "ssh", host="app-server")
    config = d.home / ".ssh" / "config"
    write_ssh_home(d.home, [("bastion", jump, None), ("app-server", sshd, None)])
    config.write_text(config.read_text().replace("Host app-server\n", "Host app-server\n    ProxyJump bastion\n", 1))
    result = d.deployer("release", d.env_name, "--yes")
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    message = result.stderr.strip()
    assert message.count("\n") < 6, f"more than one clear message:\n{message}"
    assert "jump" in message.lower() and ("bastion" in message or str(jump.port) in message), message
    assert str(sshd.port) in message or "app-server" in message, message
    assert not d.server_path.exists(), "something was deployed although the server was never reached"


@pytest.mark.parametrize("name", [pytest.param("lock-failure", marks=server("bench-user"))])
def test_a_failure_while_taking_the_lock_leaves_no_lock(name: str, app_deployment_factory, sshd, bench_user, shared_dir, git_server) -> None:  # noqa: ANN001
    srv = shared_dir / "srv"
    srv.mkdir()
    os.chown(srv, bench_user.uid, bench_user.gid)
    # the operator made the state directory, as root, and forgot to hand it to the deploy user
    state = shared_dir / "state"
    state.mkdir(mode=0o755)
    d = app_deployment_factory(APP, "ssh", host="deploy", server_parent=srv, environment_keys={"state_dir": f'"{state}"'})
    git_server(d)
    write_ssh_home(d.home, [("deploy", sshd, bench_user.name)])
    authorize(bench_user, sshd)

    refused = d.deployer("release", d.env_name, "--yes")
    assert refused.returncode != 0, refused.stdout
    lock = d.deployer("lock", "status", d.env_name)
    assert lock.returncode == 0 and "free" in lock.stdout, (lock.stdout, lock.stderr)
    assert not d.lock_held()
    assert list(state.iterdir()) == [], "a half-made lock or other file was left behind"
    assert d.containers() == {}, "containers were started although the release never held the lock"

    os.chown(state, bench_user.uid, bench_user.gid)
    result = d.release()
    assert result["outcome"] == "succeeded"
    assert d.revision() == d.shape.heads_first and d.page()[0] == 200
    assert not d.lock_held()
    # the refusal was one clear message naming the directory and what is wrong with it
    assert str(state) in refused.stderr and re.search(r"(?i)permission|not writable", refused.stderr), refused.stderr
