"""Backup throughput and memory: ``deployer backups create`` vs plain ``pg_dump -Fc`` on the same database.

Not part of the test suite. Needs the Docker engine, ``docker compose`` v2 and the bench
image deployer-bench/postgres:15 (scripts/build-base-images). Run from the repository root:

    .venv/bin/python bench/backup_throughput.py [--rows 1000000] [--runs 3]

It starts the example stack's db service as its own compose project on this machine (host
"local"), loads ROWS rows, then measures, each on the same database, in rounds (one of each
per round, in turn, so that a change in the machine's load touches all of them alike):

  deployer create   `deployer backups create`: the dump streamed into a file on the host,
                    checksummed while it streams, its table of contents read back; the rows
                    of every table counted in the dump's snapshot. Wall time of the whole
                    command (start-up, lock, reads included) and the peak RSS of the
                    deployer process itself (the docker client it starts is reported apart)
  pg_dump -Fc       `docker compose exec -T db pg_dump -Fc > file`: the same pipe, no
                    deployer, pg_dump's default compression (what the ratio is against)
  pg_dump -Fc -Z1   the same at deployer's compression level: what the level alone buys
  read back         `pg_restore --file=/dev/null` of deployer's dump: what reading it back
                    to its end (as `backups verify` does, and create did before) costs
  verify --restore  `deployer backups verify ID --restore`: the scratch restore and the
                    comparison, which a release runs after its switch
  pg_dump -Fd -j 2  once: a directory-format dump with two jobs, written inside the
                    container (for comparison: not streamed out, nothing checksummed)

Throughput is the database's size on disk (pg_database_size) per second of wall time; the
ratio is deployer's throughput over plain pg_dump's (its time over deployer's). Medians,
ranges in parentheses. The project, its volume and the temporary directory are removed at
the end, also when it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
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


def spread(values: list[float], unit: str = "s", digits: int = 2) -> str:
    """``median (min–max)``."""
    return f"{statistics.median(values):.{digits}f} {unit} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
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
                      ANALYZE bench;"""], env=environ, timeout=3600)
        size = int(run([*psql, "SELECT pg_database_size('recipes')", "-t"], env=environ).stdout.strip())
        print(f"loaded {args.rows} rows ({size / 1e6:.0f} MB database) in {time.monotonic() - start:.1f}s", flush=True)

        times: dict[str, list[float]] = {k: [] for k in ("create", "plain", "level", "read", "restore")}
        sizes: dict[str, int] = {}
        deployer_rss: list[int] = []
        tree_rss: list[int] = []
        made: dict = {}
        for number in range(1, args.runs + 1):
            seconds, tree, out = timed([*cli, "create", "bench", "--json"], env=environ, cwd=base)
            made = json.loads(out)["result"] if '"schema"' in out else json.loads(out)
            times["create"].append(seconds)
            deployer_rss.append(int(rss_file.read_text()))
            tree_rss.append(tree)
            sizes["create"] = made["size"]
            for key, level in (("plain", []), ("level", ["-Z1"])):
                dump = base / f"{key}.dump"
                with open(dump, "wb") as out_file:
                    seconds, _, _ = timed([*compose, "exec", "-T", "db", "pg_dump", "-Fc", *level, "-U", "recipes", "recipes"],
                                          env=environ, stdout=out_file)
                times[key].append(seconds)
                sizes[key] = dump.stat().st_size
                dump.unlink()
            with open(made["path"], "rb") as dump_file:
                started = time.monotonic()
                run([*compose, "exec", "-T", "db", "pg_restore", "--file=/dev/null"], env=environ, stdin=dump_file)
                times["read"].append(time.monotonic() - started)
            seconds, _, out = timed([*cli, "verify", "bench", made["id"], "--restore", "--json"], env=environ, cwd=base)
            report = json.loads(out)
            report = report["result"] if isinstance(report, dict) else report
            if report[0]["verification"]["state"] != "verified":
                raise SystemExit(f"the restore verification did not verify: {report}")
            times["restore"].append(seconds)
            print(f"round {number}: create {times['create'][-1]:.2f} s, pg_dump -Fc {times['plain'][-1]:.2f} s, "
                  f"-Z1 {times['level'][-1]:.2f} s, read back {times['read'][-1]:.2f} s, "
                  f"verify --restore {times['restore'][-1]:.2f} s", flush=True)
            run(["rm", "-f", made["path"], made["path"][: -len(".dump")] + ".json"])

        started = time.monotonic()
        run([*compose, "exec", "-T", "db", "sh", "-c",
             "rm -rf /tmp/fd && pg_dump -Fd -j 2 -f /tmp/fd -U recipes recipes && du -sb /tmp/fd && rm -rf /tmp/fd"],
            env=environ, timeout=3600)
        directory_seconds = time.monotonic() - started

        mb = size / 1e6
        ratios = [p / c for p, c in zip(times["plain"], times["create"], strict=True)]
        print()
        print(f"rows {args.rows}, database {mb:.0f} MB on disk; {args.runs} rounds; medians (min–max)")
        print(f"deployer create   {spread(times['create'])}  {mb / statistics.median(times['create']):6.1f} MB/s of database"
              f"  dump {sizes['create'] / 1e6:.1f} MB (compression level 1)")
        print(f"pg_dump -Fc       {spread(times['plain'])}  {mb / statistics.median(times['plain']):6.1f} MB/s"
              f"  dump {sizes['plain'] / 1e6:.1f} MB (default level)")
        print(f"pg_dump -Fc -Z1   {spread(times['level'])}  {mb / statistics.median(times['level']):6.1f} MB/s"
              f"  dump {sizes['level'] / 1e6:.1f} MB")
        print(f"read back         {spread(times['read'])}  (pg_restore --file=/dev/null of deployer's dump)")
        print(f"verify --restore  {spread(times['restore'])}  (scratch container, restore, per-table counts)")
        print(f"pg_dump -Fd -j 2  {directory_seconds:.2f} s  (once; inside the container, not streamed out)")
        print(f"ratio             deployer create throughput / pg_dump -Fc = {spread(ratios, 'x')}; "
              f"at the same level: {spread([lv / c for lv, c in zip(times['level'], times['create'], strict=True)], 'x')}")
        print(f"memory            deployer process peak RSS {spread([r / 1024 for r in deployer_rss], 'MiB', 1)} "
              f"(the same command on the empty database: {baseline_rss / 1024:.1f} MiB); largest process in its tree "
              f"(the docker client): {spread([r / 1024 for r in tree_rss], 'MiB', 1)}")
        return 0
    finally:
        subprocess.run([*compose, "down", "--volumes", "--remove-orphans"], env=environ, capture_output=True, timeout=300)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
