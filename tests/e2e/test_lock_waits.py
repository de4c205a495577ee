"""Bounded lock waits, end to end over SSH: a migration blocked by an open transaction gives
up after ``lock_timeout``, is tried again after a pause, and — when the blocker stays —
fails naming the blocking session (pid, state, its last query); when the blocker goes
away between attempts, the retry applies the migration. Nothing is lost either way."""

from __future__ import annotations

import subprocess
import time

import pytest
import sqlalchemy as sa

from tests.bench.cli import result as result_of
from tests.bench.deployment import EXAMPLE_HEAD, Deployment, add_migration

pytestmark = pytest.mark.e2e

R_RATING = "e1rating0001"


@pytest.fixture(scope="module")
def d(deployment_factory) -> Deployment:
    d = deployment_factory("ssh", health_timeout=25)
    toml = (d.laptop / "deploy.toml").read_text().replace("keep_backups = 5\n", "keep_backups = 5\nlock_timeout = 1\nlock_retries = 2\n")
    d.commit({"deploy.toml": toml}, "a tight lock timeout")
    d.release()
    d.sql("INSERT INTO users (email, name) VALUES ('ana@example.com', 'Ana')")
    d.commit(add_migration(R_RATING, EXAMPLE_HEAD, "Add rating to recipes",
                           ["op.add_column('recipes', sa.Column('rating', sa.Integer(), nullable=True))"],
                           ["op.drop_column('recipes', 'rating')"]), "add a rating column")
    return d


class Blocker:
    """An open transaction holding a lock on recipes (what a forgotten `psql` session does)."""

    def __init__(self, d: Deployment) -> None:
        self.engine = sa.create_engine(d.db_url())
        self.connection = self.engine.connect()
        self.transaction = self.connection.begin()
        self.connection.execute(sa.text("LOCK TABLE recipes IN ACCESS SHARE MODE"))
        self.pid = self.connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()

    def end(self) -> None:
        self.transaction.rollback()
        self.connection.close()
        self.engine.dispose()


def test_a_blocked_migration_gives_up_retries_and_names_the_blocking_session(d: Deployment) -> None:
    users = d.sql("SELECT id, email FROM users ORDER BY id")
    blocker = Blocker(d)
    try:
        started = time.monotonic()
        failed = d.release(expect=1)
        elapsed = time.monotonic() - started
    finally:
        blocker.end()
    err = failed["stderr"]
    assert "failed at step `migrate`" in err, err
    assert "waited for a lock longer than lock_timeout (1s) 3 time(s) and gave up" in err
    assert f"pid {blocker.pid} (idle in transaction" in err and "on recipes" in err
    assert "SELECT pg_backend_pid()" in err  # its last statement, as pg_stat_activity shows it
    assert err.count("the migration gave up waiting for a lock") == 2  # two retries, each announced
    assert "pg_terminate_backend" in err, err
    assert elapsed > 3  # 3 attempts of 1 s plus pauses of 1 s and 2 s: bounded, not hung
    # nothing changed: the schema, the rows, the running release
    assert d.revision() == (EXAMPLE_HEAD,)
    assert "rating" not in {c for (c,) in d.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'recipes'")}
    assert d.sql("SELECT id, email FROM users ORDER BY id") == users
    assert d.journal()[-1]["outcome"] == "failed"
    assert d.get("/health")[0] == 200


def test_a_retry_applies_the_migration_once_the_blocker_is_gone(d: Deployment) -> None:
    blocker = Blocker(d)
    run = subprocess.Popen(
        d.deployer_argv("release", d.env_name, "--yes", "--json"), cwd=d.laptop, env=d.environ(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    said: list[str] = []
    try:
        assert run.stderr is not None
        for line in run.stderr:
            said.append(line)
            if "the migration gave up waiting for a lock" in line:
                break
        else:
            raise AssertionError("the release never reported a lock timeout:\n" + "".join(said))
        assert f"pid {blocker.pid}" in said[-1]
    finally:
        blocker.end()
    out, rest = run.communicate(timeout=600)
    assert run.returncode == 0, "".join(said) + rest
    released = result_of(out)
    migrate = next(s for s in released["steps"] if s["name"] == "migrate")
    assert "on attempt 2 of 3" in migrate["detail"] and f"pid {blocker.pid}" in migrate["detail"]
    assert d.revision() == (R_RATING,)
    assert d.get("/health")[0] == 200


def test_the_dry_run_shows_the_bound(d: Deployment) -> None:
    d.commit(add_migration("f2stars00002", R_RATING, "Add stars",
                           ["op.add_column('recipes', sa.Column('stars', sa.Integer(), nullable=True))"],
                           ["op.drop_column('recipes', 'stars')"]), "add stars")
    plan = d.deployer("release", d.env_name, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "PGOPTIONS='-c lock_timeout=1000'" in plan.stdout or "PGOPTIONS=-c lock_timeout=1000" in plan.stdout, plan.stdout


def test_a_rollback_downgrade_is_bounded_the_same_way(d: Deployment) -> None:
    blocker = Blocker(d)
    try:
        result = d.deployer("rollback", d.env_name, "previous", "--yes")
    finally:
        blocker.end()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed at step `schema`" in result.stderr, result.stderr
    assert "waited for a lock longer than lock_timeout (1s) 3 time(s)" in result.stderr
    assert f"pid {blocker.pid} (idle in transaction" in result.stderr and "pg_terminate_backend" in result.stderr
    assert d.revision() == (R_RATING,)  # the downgrade rolled back: the schema the running code needs
    assert d.get("/health")[0] == 200
