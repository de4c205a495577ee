"""``deployer status`` and ``deployer history`` end to end, over SSH and with ``host = "local"``.

Every verdict comes from a real situation made by hand on the real stack, the way it
happens in production: nothing deployed yet; in sync after a release; a migration undone
with ``flask db downgrade`` (pending); an older commit checked out in the server's checkout
(database ahead of the code); a bogus revision written into ``alembic_version`` (unknown);
two heads pushed to the branch (multiple heads); a merge pushed but not released (code
behind the branch); the db container stopped (database unreachable); an emptied database
(not initialised); and a host alias where nothing listens (host unreachable).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.bench.cli import result as result_of
from tests.bench.cli import result_or_envelope
from tests.bench.deployment import EXAMPLE_HEAD, Deployment, add_migration
from tests.bench.docker import free_port
from tests.bench.gitrepos import git

pytestmark = pytest.mark.e2e

R_NOTES = "d4e5f6a7b8c9"
R_LEFT = "e5f6a7b8c9d0"
R_RIGHT = "f6a7b8c9d0e1"
R_MERGE = "a7b8c9d0e1f2"

@pytest.fixture(scope="module", params=["ssh", "local"])
def deployment(request: pytest.FixtureRequest, deployment_factory) -> Deployment:
    return deployment_factory(request.param, health_timeout=25)


def run_cli(d: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        d.deployer_argv(*args), cwd=d.laptop, env=d.environ(), capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL, check=False,
    )
    assert not re.search(r"^Traceback", result.stderr, re.MULTILINE), result.stderr
    return result


def status(d: Deployment, *extra: str) -> tuple[int, dict, str]:
    """(exit code, the --json document, the text report) — both forms, same situation."""
    as_json = run_cli(d, "status", d.env_name, "--json", *extra)
    text = run_cli(d, "status", d.env_name, *extra)
    assert as_json.returncode == text.returncode, (as_json.stderr, text.stdout, text.stderr)
    return as_json.returncode, result_or_envelope(as_json.stdout), text.stdout + text.stderr


def test_nothing_deployed_yet(deployment: Deployment) -> None:
    code, doc, text = status(deployment)
    assert code == 14, text
    assert doc["verdict"] == "not deployed" and doc["code"]["deployed"] is None
    assert doc["code"]["tip"] == deployment.origin.head()
    assert doc["services"] == [] and doc["lock"] == {"held": False, "holder": None, "command": None, "acquired_at": None, "stale": False, "gone_since": None}
    assert doc["last_release"] is None and doc["exit_code"] == 14 and doc["in_sync"] is False
    assert "not deployed" in text and "(exit 14)" in text


def test_in_sync_after_releases(deployment: Deployment) -> None:
    d = deployment
    d.release()
    d.commit(
        add_migration(R_NOTES, EXAMPLE_HEAD, "Add notes to recipes",
                      ["op.add_column('recipes', sa.Column('notes', sa.Text(), nullable=True))"],
                      ["op.drop_column('recipes', 'notes')"]),
        "add a notes column",
    )
    released = d.release()
    code, doc, text = status(d)
    assert code == 0, text
    assert doc["in_sync"] is True and doc["verdict"] == "up to date" and doc["problems"] == []
    assert doc["code"]["deployed"] == doc["code"]["tip"] == d.origin.head() == d.server_head()
    assert (doc["code"]["ahead"], doc["code"]["behind"]) == (0, 0)
    db = doc["database"]
    assert db["reachable"] is True and db["revisions"] == [R_NOTES] == db["deployed_heads"] == db["tip_heads"]
    services = {s["service"]: s for s in doc["services"]}
    assert set(services) == {"web", "db"}
    # healthy, or (a release just ended) the web container's first Docker healthcheck still
    # due: then not a problem, as the verdict above says
    assert all(s["state"] == "running" and (s["healthy"] or s["health_pending"]) and s["started_at"]
               for s in services.values()), services
    assert services["db"]["healthy"]
    assert services["web"]["image"].startswith(f"{d.name}-web")
    assert doc["lock"]["held"] is False
    assert doc["last_release"]["id"] == released["id"] and doc["last_release"]["outcome"] == "succeeded"
    assert doc["last_backup"]["id"] == released["backup"] and doc["last_backup"]["revision"] == [EXAMPLE_HEAD]
    assert "up to date" in text and "in sync (exit 0)" in text and "lock       free" in text
    # Its speed: the revision is read through libpq, the location from the containers; the
    # heavy modules (SQLAlchemy, alembic, paramiko's optional invoke) are never imported.
    traced = subprocess.run(
        [d.deployer_argv()[0], "-X", "importtime", *d.deployer_argv("status", d.env_name)[1:]], cwd=d.laptop,
        env=d.environ(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )
    assert traced.returncode == 0 and "up to date" in traced.stdout, traced.stdout + traced.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in traced.stderr.splitlines() if "|" in line}
    assert {"psycopg2", "deployer.status"} <= imported
    # (a bare "invoke" line is paramiko's import of it, refused: invoke's own modules never load)
    heavy = sorted(m for m in imported if m.split(".")[0] in ("sqlalchemy", "alembic") or m.startswith("invoke."))
    assert heavy == [], heavy


def test_history_lists_releases_newest_first(deployment: Deployment) -> None:
    d = deployment
    result = run_cli(d, "history", d.env_name, "--json")
    assert result.returncode == 0, result.stderr
    doc = result_of(result.stdout)
    journal = d.journal()
    assert doc["total"] == len(journal) == 2
    assert [e["id"] for e in doc["entries"]] == [r["id"] for r in reversed(journal)]
    newest = doc["entries"][0]
    assert newest["revision_before"] == [EXAMPLE_HEAD] and newest["revision_after"] == [R_NOTES]
    assert newest["outcome"] == "succeeded" and newest["commit"] == d.server_head() and newest["seconds"] > 0
    limited = result_of(run_cli(d, "history", d.env_name, "--json", "--limit", "1").stdout)
    assert [e["id"] for e in limited["entries"]] == [newest["id"]] and limited["total"] == 2
    text = run_cli(d, "history", d.env_name).stdout
    assert text.index(journal[1]["id"]) < text.index(journal[0]["id"])
    assert f"{EXAMPLE_HEAD} -> {R_NOTES}" in text


def test_pending_after_a_manual_downgrade(deployment: Deployment) -> None:
    d = deployment
    d.compose("run", "--rm", "web", "flask", "db", "downgrade")
    assert d.revision() == (EXAMPLE_HEAD,)
    code, doc, text = status(d)
    assert code == 10, text
    assert doc["verdict"] == "pending"
    assert doc["database"]["pending"] == [{"revision": R_NOTES, "message": "Add notes to recipes"}]
    assert "1 pending" in text and "Add notes to recipes" in text
    d.compose("run", "--rm", "web", "flask", "db", "upgrade")
    assert status(d)[0] == 0


def test_database_ahead_of_an_older_checkout(deployment: Deployment) -> None:
    d = deployment
    tip = d.server_head()
    older = git("-C", str(d.server_path), "rev-parse", "HEAD~1").strip()
    git("-C", str(d.server_path), "checkout", "--quiet", "--detach", older)
    try:
        # A checkout moved by hand is not what runs: the running code decides the verdict.
        code, doc, text = status(d)
        assert code == 15, text
        assert doc["verdict"] == "up to date" and doc["running"] == tip
        assert any("the checkout is at" in p and "the running code is" in p for p in doc["problems"]), text
        # Now really run the older release's image (old code on the newer schema).
        previous = [r for r in d.journal() if r["outcome"] == "succeeded"][-2]
        for image, tag in previous["images"].items():
            subprocess.run(["docker", "tag", tag, image], check=True, capture_output=True)
        d.compose("up", "--detach", "--no-build", "--no-deps", "web")
        code, doc, text = status(d)
        assert code == 11, text
        assert doc["verdict"] == "ahead"
        assert doc["database"]["deployed_heads"] == [EXAMPLE_HEAD] and doc["database"]["revisions"] == [R_NOTES]
        assert doc["database"]["ahead"] == [{"revision": R_NOTES, "message": "Add notes to recipes"}]
        assert doc["code"]["deployed"] == older and doc["code"]["behind"] == 1
        assert "ahead" in text and "old code runs on a newer schema" in text
    finally:
        git("-C", str(d.server_path), "checkout", "--quiet", "--detach", tip)
        latest = [r for r in d.journal() if r["outcome"] == "succeeded"][-1]
        for image, tag in latest["images"].items():
            subprocess.run(["docker", "tag", tag, image], check=True, capture_output=True)
        d.compose("up", "--detach", "--no-build", "--no-deps", "web")
        d.wait_answer("/health")


def test_unknown_revision(deployment: Deployment) -> None:
    d = deployment
    d.sql("UPDATE alembic_version SET version_num = 'badc0ffee000'")
    try:
        code, doc, text = status(d)
        assert code == 12, text
        assert doc["verdict"] == "unknown revision" and doc["database"]["unknown"] == ["badc0ffee000"]
        assert "badc0ffee000" in text
    finally:
        d.sql("UPDATE alembic_version SET version_num = :rev", rev=R_NOTES)


def test_multiple_heads_then_code_behind_branch(deployment: Deployment) -> None:
    d = deployment
    files = {
        **add_migration(R_LEFT, R_NOTES, "Left branch", ["op.create_table('left_t', sa.Column('id', sa.Integer(), primary_key=True))"], ["op.drop_table('left_t')"]),
        **add_migration(R_RIGHT, R_NOTES, "Right branch", ["op.create_table('right_t', sa.Column('id', sa.Integer(), primary_key=True))"], ["op.drop_table('right_t')"]),
    }
    d.commit(files, "two migration heads")
    code, doc, text = status(d)
    assert code == 13, text
    assert doc["verdict"] == "multiple heads" and doc["database"]["tip_heads"] == sorted([R_LEFT, R_RIGHT])
    assert doc["database"]["deployed_heads"] == [R_NOTES] and doc["code"]["behind"] == 1
    assert "multiple heads" in text
    merge = f'''"""Merge heads

Revision ID: {R_MERGE}
Revises: {R_LEFT}, {R_RIGHT}
"""
revision = "{R_MERGE}"
down_revision = ("{R_LEFT}", "{R_RIGHT}")
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
'''
    d.commit({f"example/migrations/versions/{R_MERGE}_merge_heads.py": merge}, "merge the heads")
    code, doc, text = status(d)
    assert code == 15, text
    assert doc["verdict"] == "up to date" and doc["code"]["behind"] == 2
    assert [m["revision"] for m in doc["database"]["tip_pending"]][-1] == R_MERGE
    assert any("2 commit(s) behind main" in p for p in doc["problems"])
    assert "2 behind" in text and "(exit 15)" in text
    d.release()
    assert status(d)[0] == 0


def test_database_unreachable_when_db_stopped(deployment: Deployment) -> None:
    d = deployment
    d.compose("stop", "db")
    try:
        code, doc, text = status(d)
        assert code == 3, text
        assert doc["verdict"] == "database unreachable" and doc["database"]["reachable"] is False
        assert "db container is exited" in doc["database"]["error"]
        assert {s["service"]: s["state"] for s in doc["services"]}["db"] == "exited"
        assert "cannot read the database" in text and "Traceback" not in text
    finally:
        d.compose("start", "db")
    deadline = time.monotonic() + 90
    while (result := run_cli(d, "status", d.env_name, "--json")).returncode != 0 and time.monotonic() < deadline:
        time.sleep(1)  # the db's healthcheck says "starting" for a while
    assert result.returncode == 0, result.stdout


def test_not_initialised_on_an_empty_database(deployment: Deployment) -> None:
    d = deployment
    d.sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    code, doc, text = status(d)
    assert code == 14, text
    assert doc["verdict"] == "not initialised" and doc["database"]["revisions"] == []
    pending = [m["revision"] for m in doc["database"]["pending"]]
    assert pending[0] == "3c1f5e2a9b10" and pending[-1] == R_MERGE and len(pending) == 7
    assert "not initialised" in text


def test_unreachable_host(deployment: Deployment) -> None:
    d = deployment
    port = free_port()  # nothing listens there
    with open(d.home / ".ssh" / "config", "a") as config:
        config.write(f"\nHost nowhere-{port}\n    HostName 127.0.0.1\n    Port {port}\n    ConnectTimeout 5\n")
    toml = (d.laptop / "deploy.toml").read_text()
    toml = re.sub(r'^host = ".*"$', f'host = "nowhere-{port}"', toml, flags=re.MULTILINE)
    other = d.laptop / "deploy-unreachable.toml"
    other.write_text(toml)
    try:
        started = time.monotonic()
        code, doc, text = status(d, "--config", str(other))
        assert time.monotonic() - started < 30
        assert code == 3, text
        assert doc["exit_code"] == 3 and doc["ok"] is False and str(port) in doc["error"]["message"]
        assert text.startswith("error: ") and "Traceback" not in text
        history = run_cli(d, "history", d.env_name, "--config", str(other))
        assert history.returncode == 3 and history.stderr.startswith("error: ")
    finally:
        other.unlink()
