"""A throwaway PostgreSQL server for integration tests, on a free loopback port.

``postgres_server`` (session) runs one cluster from the machine's PostgreSQL binaries
(``initdb``/``pg_ctl`` on PATH or in /usr/lib/postgresql/*/bin), in a temporary
directory, listening on 127.0.0.1 only, with a password for the superuser over TCP.
``pg_database`` (per test) creates a fresh UTF-8 database on it and returns its
SQLAlchemy URL; the database is dropped afterwards.

PostgreSQL refuses to run as root, so when the tests run as root the cluster runs as the
``postgres`` user (or ``nobody`` when there is none) and its directory belongs to it.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "postgres"
START_TIMEOUT = 60


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway cluster."""

    host: str
    port: int
    user: str
    password: str
    data_dir: Path
    socket_dir: Path
    bin_dir: Path

    def url(self, database: str = "postgres", *, driver: str = "psycopg2") -> str:
        """SQLAlchemy URL of ``database`` as the superuser, over TCP with the password."""
        return f"postgresql+{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """libpq connection string (for psycopg2.connect or psql)."""
        return f"host={self.host} port={self.port} user={self.user} password={self.password} dbname={database}"


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    home: str


def _find_bin_dir() -> Path:
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    # Debian keeps the server binaries out of PATH; take the newest version installed.
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += [Path(p) for p in versions]
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return candidate
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH or in "
        "/usr/lib/postgresql/*/bin; install them (Debian: apt-get install -y postgresql-15) "
        "to run the integration tests",
        pytrace=False,
    )


def _run_as() -> _RunAs | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _RunAs(entry.pw_uid, entry.pw_gid, entry.pw_dir)
    pytest.fail("running as root, and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as", pytrace=False)


def _run(argv: Sequence[str], run_as: _RunAs | None, cwd: Path, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(cwd),
    }
    kwargs: dict[str, object] = {}
    if run_as is not None:
        kwargs = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    return subprocess.run(
        list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _initdb(bin_dir: Path, data_dir: Path, pwfile: Path, run_as: _RunAs | None, cwd: Path) -> None:
    failures = []
    # UTF8 explicitly: without a locale initdb would create SQL_ASCII databases.
    for locale in ("C.UTF-8", "C"):
        if data_dir.exists():
            shutil.rmtree(data_dir)
        result = _run(
            [
                str(bin_dir / "initdb"),
                "--pgdata",
                str(data_dir),
                "--username",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--encoding=UTF8",
                f"--locale={locale}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ],
            run_as,
            cwd,
        )
        if result.returncode == 0:
            return
        failures.append(f"--locale={locale}: {result.stderr.strip() or result.stdout.strip()}")
    pytest.fail("initdb failed:\n" + "\n".join(failures), pytrace=False)


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster on 127.0.0.1:<free port>, stopped and removed after the session."""
    bin_dir = _find_bin_dir()
    run_as = _run_as()
    # Not pytest's tmp_path: its parents are private to root, and the server user must reach its files.
    root = Path(tempfile.mkdtemp(prefix="deployer-pg-"))
    data_dir, socket_dir, log = root / "data", root / "sock", root / "server.log"
    password = secrets.token_hex(12)
    started = False
    try:
        socket_dir.mkdir()
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        if run_as is not None:
            for path in (root, socket_dir, pwfile):
                os.chown(path, run_as.uid, run_as.gid)
        _initdb(bin_dir, data_dir, pwfile, run_as, root)
        pwfile.unlink()
        base_conf = (data_dir / "postgresql.conf").read_text()
        last_error = ""
        for _attempt in range(3):  # the free port may be taken between probing and binding
            port = _free_port()
            (data_dir / "postgresql.conf").write_text(
                base_conf
                + "\n# test bench\n"
                + "listen_addresses = '127.0.0.1'\n"
                + f"port = {port}\n"
                + f"unix_socket_directories = '{socket_dir}'\n"
                # Throwaway data: durability only costs time.
                + "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                + "max_connections = 50\n"
            )
            result = _run(
                [str(bin_dir / "pg_ctl"), "--pgdata", str(data_dir), "--log", str(log), "--wait",
                 "--timeout", str(START_TIMEOUT), "start"],
                run_as,
                root,
                timeout=START_TIMEOUT + 30,
            )
            if result.returncode == 0:
                started = True
                break
            last_error = f"{result.stderr.strip()}\n{_log_tail(log)}"
        if not started:
            pytest.fail(f"PostgreSQL did not start:\n{last_error}", pytrace=False)
        yield PostgresServer(
            host="127.0.0.1",
            port=port,
            user=SUPERUSER,
            password=password,
            data_dir=data_dir,
            socket_dir=socket_dir,
            bin_dir=bin_dir,
        )
    finally:
        if started:
            _run([str(bin_dir / "pg_ctl"), "--pgdata", str(data_dir), "--mode", "fast", "--wait", "stop"], run_as, root)
        shutil.rmtree(root, ignore_errors=True)


def _admin(server: PostgresServer, statement: str) -> None:
    import psycopg2

    connection = psycopg2.connect(server.dsn(), connect_timeout=10)
    try:
        connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty UTF-8 database for one test; yields its SQLAlchemy (psycopg2) URL."""
    name = f"test_{secrets.token_hex(6)}"
    _admin(postgres_server, f"CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0")
    try:
        yield postgres_server.url(name)
    finally:
        # FORCE: a test that leaked a connection must not leave the database behind.
        _admin(postgres_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
