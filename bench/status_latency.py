"""Latency of ``deployer status`` over SSH on loopback, next to the manual way.

Not part of the test suite. Needs what the end-to-end tests need (Docker engine, compose
v2, the bench images, /usr/sbin/sshd). Run from the repository root:

    STATUS_BENCH_RUNS=7 .venv/bin/python bench/status_latency.py

It runs itself under pytest to reuse the test bench (tests/bench: sshd on 127.0.0.1, an
origin + laptop clone + server directory, the example app released over SSH), then
prints the median wall time of RUNS runs of:

  status text        `deployer status production` (a new process each time, as a user runs it)
  status --json      `deployer status production --json`
  manual             `ssh bench 'cd APP && docker compose ... run --rm web flask db current'`
                     (the OpenSSH client, a one-off container: what one does without deployer)

The CLI runs as an installed deployer does, from compiled .pyc files (PYTHONDONTWRITEBYTECODE
is dropped for it). It also times `deployer status local` on this machine (the same app,
released locally); and, in this
process over one open SSH connection, the ways of reading the project's containers:

  engine API (used)  the engine API over `docker system dial-stdio` in one channel of the
                     open connection (deployer.hosts.dockerapi), list + inspect
  ps|inspect         one `docker ps --filter label=... | docker inspect` command (the fallback)
  docker SDK ssh://  docker.DockerClient(base_url="ssh://...", use_ssh_client=False): a second
                     (paramiko) SSH connection + `docker system dial-stdio`, import included

Everything it made is removed at the end (the bench fixtures clean up).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("STATUS_BENCH_RUNS", "7"))

CLI = "import sys\nfrom deployer import cli\ncli.main(sys.argv[1:])\n"

# What a status process imports (paramiko without its optional invoke, as deployer does).
IMPORTS = (
    "import sys; sys.modules['invoke'] = None\n"
    "import deployer.cli, deployer.cli.status, deployer.config, deployer.status, git, paramiko, psycopg2.extensions"
)

SDK_READ = (
    "import sys, time\n"
    "started = time.monotonic()\n"
    "import docker\n"
    "client = docker.DockerClient(base_url=sys.argv[1], use_ssh_client=False, timeout=30)\n"
    "rows = client.api.containers(all=True, filters={'label': 'com.docker.compose.project=' + sys.argv[2]})\n"
    "[client.api.inspect_container(r['Id']) for r in rows]\n"
    "client.close()\n"
    "print(time.monotonic() - started)\n"
)


def _median(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:7.0f} ms  (min {min(samples) * 1000:.0f}, max {max(samples) * 1000:.0f}, n={len(samples)})"


def _timed(argv: list[str], **kwargs) -> float:  # noqa: ANN003
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise AssertionError(f"{argv[:4]}... exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return elapsed


def test_status_latency(deployment_factory, sshd) -> None:  # noqa: ANN001 - pytest fixtures
    from tests.bench.docker import POSTGRES_IMAGE, PYTHON_IMAGE

    d = deployment_factory("ssh")
    d.release()
    # As an installed deployer runs: from compiled .pyc files (pip compiles them at install).
    env = {k: v for k, v in d.environ().items() if k != "PYTHONDONTWRITEBYTECODE"}
    cli = [sys.executable, "-c", CLI]
    # warm the OS caches (and write the .pyc files) once; then measure, text and JSON in turn
    _timed([*cli, "status", d.env_name], cwd=d.laptop, env=env)
    text, as_json = [], []
    for _ in range(RUNS):
        text.append(_timed([*cli, "status", d.env_name], cwd=d.laptop, env=env))
        as_json.append(_timed([*cli, "status", d.env_name, "--json"], cwd=d.laptop, env=env))
    # What status() itself reports (after interpreter start and the CLI's imports)...
    inside = [
        json.loads(subprocess.run([*cli, "status", d.env_name, "--json"], cwd=d.laptop, env=env, capture_output=True,
                                  text=True, timeout=120).stdout)["result"]["seconds"]
        for _ in range(RUNS)
    ]
    # ...and the floor: a process that only imports what status needs, doing nothing.
    floor = [_timed([sys.executable, "-c", IMPORTS], env=env) for _ in range(RUNS)]

    app = str(d.server_path)
    remote = (
        f"cd {app} && WEB_PORT={d.web_port} WEB_IMAGE={d.name}-web PYTHON_IMAGE={PYTHON_IMAGE} "
        f"POSTGRES_IMAGE={POSTGRES_IMAGE} RECIPES_DB_PASSWORD={d.password} "
        f"docker compose -p {d.name} -f docker-compose.prod.yml run --rm web flask db current"
    )
    ssh = ["ssh", "-F", str(d.home / ".ssh" / "config"), "-o", "BatchMode=yes", "bench", remote]
    manual = [_timed(ssh) for _ in range(RUNS)]

    here = deployment_factory("local")
    here.release()
    here_env = {k: v for k, v in here.environ().items() if k != "PYTHONDONTWRITEBYTECODE"}
    _timed([*cli, "status", here.env_name], cwd=here.laptop, env=here_env)
    local = [_timed([*cli, "status", here.env_name], cwd=here.laptop, env=here_env) for _ in range(RUNS)]

    from deployer.commands import docker as containers_cmds
    from deployer.config import load_config
    from deployer.server.target import open_target
    from deployer.status import read_containers

    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(d.home)  # paramiko reads ~/.ssh/config from $HOME
    try:
        cfg = load_config(d.laptop / "deploy.toml", environ=env)
        # The floor under any status over SSH, in this process (imports done): connecting
        # (TCP, key exchange, authentication, the first command shell) and the engine stream.
        connecting, streaming = [], []
        for _ in range(RUNS):
            started = time.monotonic()
            fresh = open_target(cfg, d.env_name)
            fresh.host.run(["true"], check=True)
            connecting.append(time.monotonic() - started)
            started = time.monotonic()
            read_containers(fresh.host, cfg.app.name)
            streaming.append(time.monotonic() - started)
            fresh.host.close()
        target = open_target(cfg, d.env_name)
        try:
            engine_way, one_command = [], []
            read_containers(target.host, cfg.app.name)  # opens the engine stream
            for _ in range(RUNS):
                started = time.monotonic()
                assert len([c for c in read_containers(target.host, cfg.app.name) if not c.oneoff]) == 2
                engine_way.append(time.monotonic() - started)
                started = time.monotonic()
                result = target.host.run(containers_cmds.project_argv(cfg.app.name), check=True)
                assert len(containers_cmds.parse_inspect(result.stdout)) == 2
                one_command.append(time.monotonic() - started)
        finally:
            target.host.close()
        base_url = f"ssh://{sshd.user}@{sshd.host}:{sshd.port}"
        sdk = []
        for _ in range(RUNS):
            out = subprocess.run([sys.executable, "-c", SDK_READ, base_url, d.name], capture_output=True, text=True,
                                 env={**env, "HOME": str(d.home)}, timeout=120)
            if out.returncode != 0:
                sdk = []
                sdk_error = out.stderr.strip().splitlines()[-1:] or ["failed"]
                break
            sdk.append(float(out.stdout.strip()))
    finally:
        if old_home is not None:
            os.environ["HOME"] = old_home

    print()
    print(f"deployer status over SSH on loopback, example app ({RUNS} runs each, median)")
    print(f"  status text          {_median(text)}")
    print(f"  status --json        {_median(as_json)}")
    print(f"  status() in-process  {_median(inside)}  (the report's own `seconds`)")
    print(f"  imports only         {_median(floor)}  (python + the modules status needs, nothing else)")
    print(f"  manual (ssh + compose run --rm web flask db current) {_median(manual)}")
    print(f"  status on this machine (local environment) {_median(local)}")
    print(f"  connect: handshake, authentication, first command {_median(connecting)}  (in-process)")
    print(f"  then the engine stream's first read {_median(streaming)}  (dial-stdio starts the docker CLI there)")
    print("reading the project's containers, one SSH connection already open:")
    print(f"  engine API (used)    {_median(engine_way)}")
    print(f"  ps|inspect command   {_median(one_command)}")
    if sdk:
        print(f"  docker SDK ssh://    {_median(sdk)}  (new process: import + connect + list + inspect)")
    else:
        print(f"  docker SDK ssh://    failed: {sdk_error[0]}")


if __name__ == "__main__":
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    sys.exit(
        __import__("pytest").main([
            __file__, "-q", "-s", "-p", "no:cacheprovider",
            "-p", "tests.bench.docker", "-p", "tests.bench.sshd", "-p", "tests.bench.gitrepos", "-p", "tests.bench.deployment",
            "-o", "addopts=",
        ])
    )
