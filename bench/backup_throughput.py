"""Backup throughput and memory: ``deployer backups create`` on a 1M-row database vs plain pg_dump.

Not part of the test suite. Needs the Docker engine, ``docker compose`` v2 and the bench
image deployer-bench/postgres:15 (scripts/build-base-images). Run from the repository root:

    .venv/bin/python bench/backup_throughput.py [--rows 1000000]

It starts the example stack's db service as its own compose project on this machine (host
"local"), loads ROWS rows, then measures, each on the same database:

  deployer       `deployer backups create` (dump streamed into a file on the host, read back
                 to its end with pg_restore, sha256): wall time and the peak RSS of the
                 deployer process itself (the docker client it starts is reported apart)
  verify         `deployer backups verify` of that backup (the read-back part alone)
  exec pg_dump   `docker compose exec -T db pg_dump -Fc > file`: the same pipe, no deployer
  host pg_dump   `pg_dump -Fc` on this machine over TCP to the container, if installed

and removes the project, its volume and the temporary directory at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POSTGRES_IMAGE = "deployer-bench/postgres:15"
PYTHON_IMAGE = "deployer-bench/python:bookworm"

# The real CLI, writing this process's own peak RSS to a file when it exits.
MEASURED_CLI = """\
import resource, sys
from deployer.cli import main
try:
    main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as out:
        out.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:  # noqa: ANN003
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{result.stdout}\n{result.stderr}")
    return result


def timed(argv: list[str], *, env: dict[str, str], cwd: Path | None = None, stdout: object = subprocess.PIPE) -> tuple[float, int, str]:
    """Wall seconds, the peak RSS (KiB) of the largest process in the command's tree, stdout."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as errors:
        # read stdout to its end, then reap with wait4 for the tree's rusage (communicate would reap)
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=stdout, stderr=errors)
        out = process.stdout.read() if process.stdout else b""
        _, status, usage = os.wait4(process.pid, 0)
        errors.seek(0)
        err = errors.read()
    seconds = time.monotonic() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{out.decode()}\n{err.decode()}")
    return seconds, usage.ru_maxrss, out.decode()


def mb(size: int) -> float:
    return size / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    if run(["docker", "images", "-q", POSTGRES_IMAGE]).stdout.strip() == "":
        raise SystemExit(f"image {POSTGRES_IMAGE} is missing: run scripts/build-base-images first")

    name = f"benchbackup{secrets.token_hex(3)}"
    base = Path(tempfile.mkdtemp(prefix="deployer-bench-backup-"))
    server = base / "server"
    server.mkdir()
    shutil.copyfile(REPO / "docker-compose.prod.yml", server / "docker-compose.prod.yml")
    password = "pw" + secrets.token_hex(8)
    (base / "deploy.toml").write_text(f"""\
[app]
name = "{name}"
compose_file = "docker-compose.prod.yml"

[environments.bench]
host = "local"
path = "{server}"
keep_backups = 3

[environments.bench.env]
RECIPES_DB_PASSWORD = "{password}"
POSTGRES_IMAGE = "{POSTGRES_IMAGE}"
PYTHON_IMAGE = "{PYTHON_IMAGE}"
WEB_IMAGE = "{name}-web"
""")
    environ = {**os.environ, "RECIPES_DB_PASSWORD": password, "POSTGRES_IMAGE": POSTGRES_IMAGE, "PYTHON_IMAGE": PYTHON_IMAGE,
               "WEB_IMAGE": f"{name}-web"}
    environ.pop("DEPLOYER_CONFIG", None)
    compose = ["docker", "compose", "-p", name, "--project-directory", str(server), "-f", str(server / "docker-compose.prod.yml")]
    try:
        print(f"starting the db service of {name} ...", flush=True)
        run([*compose, "up", "--detach", "--wait", "db"], env=environ, timeout=300)
        psql = [*compose, "exec", "-T", "db", "psql", "-v", "ON_ERROR_STOP=1", "-q", "-U", "recipes", "-d", "recipes", "-c"]
        # deployer's compose commands read the environment's variables from the env file a
        # release writes; no release ran here, so write it the same way
        sys.path.insert(0, str(REPO))
        from deployer.config import load_config
        from deployer.server.target import open_target, write_env_file

        target = open_target(load_config(base / "deploy.toml", environ=environ), "bench")
        write_env_file(target)
        target.host.close()
        rss_file = base / "rss"
        cli = [sys.executable, "-c", MEASURED_CLI, str(rss_file), "backups"]
        # the same command on the empty database: what deployer needs without any data
        timed([*cli, "create", "bench", "--json"], env=environ, cwd=base)
        baseline_rss = int(rss_file.read_text())

        start = time.monotonic()
        run([*psql, f"""CREATE TABLE bench (id bigint PRIMARY KEY, name text NOT NULL, body text, n numeric, at timestamptz);
                      INSERT INTO bench SELECT g, 'row ' || g || ' ✓ é', md5(g::text) || repeat(md5((g * 31)::text), 2),
                      g * 1.5, now() - g * interval '1 second' FROM generate_series(1, {args.rows}) AS g;
                      ANALYZE bench;"""], env=environ, timeout=1800)
        table = run([*psql, "SELECT pg_size_pretty(pg_total_relation_size('bench'))", "-t"], env=environ).stdout.strip()
        print(f"loaded {args.rows} rows ({table} on disk) in {time.monotonic() - start:.1f}s", flush=True)

        seconds, tree_rss, out = timed([*cli, "create", "bench", "--json"], env=environ, cwd=base)
        deployer_rss = int(rss_file.read_text())
        made = json.loads(out)
        size = made["size"]
        verify_seconds, _, _ = timed([*cli, "verify", "bench", made["id"]], env=environ, cwd=base)

        plain = base / "plain.dump"
        with open(plain, "wb") as out_file:
            exec_seconds, exec_rss, _ = timed([*compose, "exec", "-T", "db", "pg_dump", "-Fc", "-U", "recipes", "recipes"],
                                              env=environ, stdout=out_file)
        exec_size = plain.stat().st_size

        host_line = "host pg_dump    not installed on this machine"
        if shutil.which("pg_dump"):
            ip = run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                      run([*compose, "ps", "-q", "db"], env=environ).stdout.strip()]).stdout.split()[0]
            host_dump = base / "host.dump"
            host_seconds, host_rss, _ = timed(["pg_dump", "-Fc", "-h", ip, "-U", "recipes", "-f", str(host_dump), "recipes"],
                                              env={**environ, "PGPASSWORD": password})
            host_size = host_dump.stat().st_size
            host_line = (f"host pg_dump    {host_seconds:7.2f} s  {mb(host_size):7.1f} MB  {mb(host_size) / host_seconds:7.1f} MB/s"
                         f"  peak RSS {host_rss / 1024:6.1f} MiB (pg_dump on this machine over TCP)")

        print()
        print(f"rows {args.rows}, dump {mb(size):.1f} MB (custom format, compressed)")
        print(f"deployer create {seconds:7.2f} s  {mb(size):7.1f} MB  {mb(size) / seconds:7.1f} MB/s"
              f"  peak RSS {deployer_rss / 1024:6.1f} MiB (deployer process; same command on the empty database: "
              f"{baseline_rss / 1024:.1f} MiB)")
        print(f"                  includes reading the dump back to its end and sha256; largest process in its tree "
              f"(the docker client): {tree_rss / 1024:.1f} MiB")
        print(f"deployer verify {verify_seconds:7.2f} s  (size, sha256, pg_restore --list, full read)")
        print(f"exec pg_dump    {exec_seconds:7.2f} s  {mb(exec_size):7.1f} MB  {mb(exec_size) / exec_seconds:7.1f} MB/s"
              f"  peak RSS {exec_rss / 1024:6.1f} MiB (the docker client; the same pipe without deployer)")
        print(host_line)
        print(f"ratio           deployer create / exec pg_dump = {seconds / exec_seconds:.2f}x time "
              f"({(seconds - verify_seconds) / exec_seconds:.2f}x without the read-back); deployer RSS "
              f"{(deployer_rss - baseline_rss) / 1024:+.1f} MiB over the empty-database run for a {mb(size):.0f} MB dump")
        return 0
    finally:
        subprocess.run([*compose, "down", "--volumes", "--remove-orphans"], env=environ, capture_output=True, timeout=300)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
