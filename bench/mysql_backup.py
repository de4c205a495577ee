"""MySQL/MariaDB backups: ``deployer backups create`` vs a plain ``mariadb-dump | gzip``, and how
long the app's writes wait while the dump's snapshot starts.

Not part of the test suite. Needs the Docker engine, ``docker compose`` v2 and the bench image
deployer-bench/mariadb:10.11 (scripts/build-base-images). Run from the repository root:

    .venv/bin/python bench/mysql_backup.py [--rows 1000000] [--runs 3]

It starts the guestbook's db service (tests/apps/guestbook) as its own compose project on
this machine (host "local"), loads ROWS rows, and while a writer inserts a row every 10 ms
through its own connection (the app), measures in rounds, each on the same database:

  deployer create   `deployer backups create`: the writes held back (LOCK TABLES) while a
                    snapshot starts and counts every table, the dump gzipped into a file on
                    the host, checksummed, read back to its end. Wall time of the command
  plain dump        `docker compose exec -T db sh -c 'mariadb-dump --single-transaction
                    --quick | gzip -1' > file`: the same dump without deployer
  verify --restore  `deployer backups verify ID --restore`: the scratch container, the
                    restore, the per-table counts
  writes            the writer's insert latency during `deployer create` (its slowest: how
                    long the writes were held) and during a quiet period of the same length

Medians, ranges in parentheses. The project, its volume and the temporary directory are
removed at the end, also when it fails.
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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MARIADB_IMAGE = "deployer-bench/mariadb:10.11"
PYTHON_IMAGE = "deployer-bench/python:bookworm"


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:  # noqa: ANN003
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{result.stdout}\n{result.stderr}")
    return result


def spread(values: list[float], unit: str = "s", digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} {unit} ({min(values):.{digits}f}–{max(values):.{digits}f})"


class Writer:
    """The app: a row inserted every 10 ms; each insert's latency, with when it started."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from deployer.db.mysql import connect

        connection = connect(self.url)
        try:
            with connection.cursor() as cursor:
                while not self._stop.is_set():
                    began = time.monotonic()
                    cursor.execute("INSERT INTO entries (name, message) VALUES ('bench', 'written meanwhile')")
                    self.latencies.append((began, time.monotonic() - began))
                    time.sleep(0.01)
        finally:
            connection.close()

    def between(self, start: float, end: float) -> list[float]:
        return [latency for began, latency in self.latencies if start <= began <= end]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if run(["docker", "images", "-q", MARIADB_IMAGE]).stdout.strip() == "":
        raise SystemExit(f"image {MARIADB_IMAGE} is missing: run scripts/build-base-images first")

    name = f"benchmysql{secrets.token_hex(3)}"
    base = Path(tempfile.mkdtemp(prefix="deployer-bench-mysql-"))
    server = base / "server"
    server.mkdir()
    shutil.copyfile(REPO / "tests" / "apps" / "guestbook" / "repo" / "docker-compose.yml", server / "docker-compose.yml")
    password = "pw" + secrets.token_hex(8)
    secret = base / "db-password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    root = "root" + secrets.token_hex(8)
    (base / "deploy.toml").write_text(f"""\
[app]
name = "{name}"
compose_file = "docker-compose.yml"

[environments.bench]
host = "local"
path = "{server}"
keep_backups = 3

[environments.bench.env]
GUESTBOOK_ROOT_PASSWORD = "{root}"
GUESTBOOK_DB_PASSWORD_FILE = "{secret}"
MARIADB_IMAGE = "{MARIADB_IMAGE}"
PYTHON_IMAGE = "{PYTHON_IMAGE}"
""")
    environ = {**os.environ, "GUESTBOOK_ROOT_PASSWORD": root, "GUESTBOOK_DB_PASSWORD_FILE": str(secret),
               "MARIADB_IMAGE": MARIADB_IMAGE, "PYTHON_IMAGE": PYTHON_IMAGE}
    environ.pop("DEPLOYER_CONFIG", None)
    compose = ["docker", "compose", "-p", name, "--project-directory", str(server), "-f", str(server / "docker-compose.yml")]
    writer: Writer | None = None
    try:
        print(f"starting the db service of {name} ...", flush=True)
        run([*compose, "up", "--detach", "--wait", "db"], env=environ, timeout=300)
        from deployer.config import load_config
        from deployer.db.url import mysql_url
        from deployer.server.target import open_target, write_env_file

        target = open_target(load_config(base / "deploy.toml", environ=environ), "bench")
        write_env_file(target)
        target.host.close()
        address = run(["docker", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                       run([*compose, "ps", "-q", "db"], env=environ).stdout.strip()]).stdout.strip()
        url = mysql_url({"user": "guestbook", "password": password, "host": address, "port": "3306",
                         "database": "guestbook", "charset": "utf8mb4"})
        client = [*compose, "exec", "-T", "db", "sh", "-c",
                  'MYSQL_PWD=$(cat /run/secrets/db_password) exec mariadb --user=guestbook guestbook -e "$1"', "sh"]
        start = time.monotonic()
        run([*client, f"""CREATE TABLE entries (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(80) NOT NULL,
                          message TEXT NOT NULL, created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP) CHARSET=utf8mb4;
                          INSERT INTO entries (name, message) SELECT CONCAT('row ', seq, ' ✓ é'),
                          CONCAT(MD5(seq), REPEAT(MD5(seq * 31), 2)) FROM seq_1_to_{args.rows};
                          ANALYZE TABLE entries;"""],
            env=environ, timeout=3600)
        size = int(run([*client, "SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES "
                                 "WHERE TABLE_SCHEMA = 'guestbook'", ], env=environ).stdout.split()[-1])
        print(f"loaded {args.rows} rows ({size / 1e6:.0f} MB of tables) in {time.monotonic() - start:.1f}s", flush=True)

        cli = [sys.executable, "-m", "deployer", "backups"]
        times: dict[str, list[float]] = {k: [] for k in ("create", "plain", "restore")}
        held: list[float] = []
        quiet: list[float] = []
        sizes: dict[str, int] = {}
        writer = Writer(url)
        writer.start()
        time.sleep(1.0)
        for number in range(1, args.runs + 1):
            began = time.monotonic()
            out = run([*cli, "create", "bench", "--json"], env=environ, cwd=base, timeout=3600).stdout
            ended = time.monotonic()
            made = json.loads(out)["result"]
            times["create"].append(ended - began)
            sizes["create"] = made["size"]
            if made["baseline"].get("held") != "held":
                raise SystemExit(f"the writes were not held for the dump's snapshot: {made['baseline'].get('held')}")
            during = writer.between(began, ended)
            held.append(max(during))
            time.sleep(ended - began)  # a quiet period as long, for comparison
            quiet.append(max(writer.between(ended, time.monotonic())))
            dump = base / "plain.sql.gz"
            with open(dump, "wb") as out_file:
                started = time.monotonic()
                subprocess.run([*compose, "exec", "-T", "db", "sh", "-c",
                                "MYSQL_PWD=$(cat /run/secrets/db_password) mariadb-dump --user=guestbook "
                                "--single-transaction --quick --hex-blob guestbook | gzip -1"],
                               env=environ, stdout=out_file, check=True)
                times["plain"].append(time.monotonic() - started)
            sizes["plain"] = dump.stat().st_size
            dump.unlink()
            started = time.monotonic()
            report = json.loads(run([*cli, "verify", "bench", made["id"], "--restore", "--json"], env=environ, cwd=base,
                                    timeout=3600).stdout)["result"]
            times["restore"].append(time.monotonic() - started)
            if report[0]["verification"]["state"] != "verified":
                raise SystemExit(f"the restore verification did not verify: {report}")
            print(f"round {number}: create {times['create'][-1]:.2f} s (writes waited at most {held[-1]:.2f} s; "
                  f"{quiet[-1]:.3f} s in a quiet period), plain dump {times['plain'][-1]:.2f} s, "
                  f"verify --restore {times['restore'][-1]:.2f} s", flush=True)
            run(["rm", "-f", made["path"], made["path"][: -len(".dump")] + ".json"])

        mb = size / 1e6
        print()
        print(f"rows {args.rows}, {mb:.0f} MB of tables; {args.runs} rounds; medians (min–max)")
        print(f"deployer create   {spread(times['create'])}  {mb / statistics.median(times['create']):6.1f} MB/s"
              f"  dump {sizes['create'] / 1e6:.1f} MB")
        print(f"plain dump        {spread(times['plain'])}  {mb / statistics.median(times['plain']):6.1f} MB/s"
              f"  dump {sizes['plain'] / 1e6:.1f} MB")
        print(f"verify --restore  {spread(times['restore'])}")
        print(f"ratio             deployer create throughput / plain dump = "
              f"{spread([p / c for p, c in zip(times['plain'], times['create'], strict=True)], 'x')}")
        print(f"writes            slowest insert during create {spread(held)}; in a quiet period as long "
              f"{spread(quiet, digits=3)}")
        return 0
    finally:
        if writer is not None:
            writer.stop()
        subprocess.run([*compose, "down", "--volumes", "--remove-orphans"], env=environ, capture_output=True, timeout=300)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
