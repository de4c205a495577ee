"""``deployer migrations ENV`` end to end over SSH, on the example app: after three migrating
releases and a rollback, every revision with its state, the release that applied it and
the backup from before it; a revision of an unreleased commit pending with its drop list;
a database at a revision the code does not know; and nothing written on the host."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.bench.cli import result as result_of
from tests.bench.deployment import EXAMPLE_HEAD, Deployment, add_migration
from tests.bench.docker import free_port

pytestmark = pytest.mark.e2e

NOTES, TAGS, SERVINGS, DROP_TAGS = "a1notes00001", "b2tags000002", "c3servings03", "d4droptags04"
# The example's own history, oldest first.
EXAMPLE = ["3c1f5e2a9b10", "8d2b7c4e6f01", EXAMPLE_HEAD]


def column(revision: str, down: str, name: str) -> dict[str, str]:
    return add_migration(revision, down, f"Add {name} to recipes",
                         [f"op.add_column('recipes', sa.Column('{name}', sa.Text(), nullable=True))"],
                         [f"op.drop_column('recipes', '{name}')"])


@pytest.fixture(scope="module")
def d(deployment_factory) -> Deployment:
    return deployment_factory("ssh", health_timeout=25)


def listing(d: Deployment, *extra: str) -> tuple[int, dict, str]:
    as_json = d.deployer("migrations", d.env_name, "--json", *extra, timeout=120)
    text = d.deployer("migrations", d.env_name, *extra, timeout=120)
    for run in (as_json, text):
        assert not re.search(r"^Traceback", run.stderr, re.MULTILINE), run.stderr
    assert as_json.returncode == text.returncode, (as_json.stderr, text.stderr)
    return as_json.returncode, result_of(as_json.stdout), text.stdout


def host_files(d: Deployment) -> dict[str, tuple[int, int]]:
    """Every file deployer keeps on the host (state and backups), with size and mtime."""
    found = {}
    for root in (d.state_path, d.backup_path):
        for path in sorted(root.rglob("*")):
            if path.is_file():
                stat = path.stat()
                found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def test_migrations_after_three_migrating_releases_and_a_rollback(d: Deployment) -> None:
    first = d.release()
    d.commit(column(NOTES, EXAMPLE_HEAD, "notes"), "add notes")
    notes = d.release()
    d.commit(column(TAGS, NOTES, "tags"), "add tags")
    tags = d.release()
    d.commit(column(SERVINGS, TAGS, "servings"), "add servings")
    servings = d.release()
    assert d.revision() == (SERVINGS,)
    rolled = result_of(d.deployer("rollback", d.env_name, TAGS, "--yes", "--json").stdout)
    assert rolled["outcome"] == "succeeded" and d.revision() == (TAGS,)

    before = host_files(d)
    code, doc, text = listing(d)
    assert code == 0, text
    assert host_files(d) == before  # read-only: not a byte written on the host
    assert doc["revisions"] == [TAGS] and doc["database_error"] is None
    assert doc["running_commit"] == tags["commit"] and doc["tip_commit"] == servings["commit"] == d.origin.head()
    rows = {m["revision"]: m for m in doc["migrations"]}
    assert [m["revision"] for m in doc["migrations"]] == [SERVINGS, TAGS, NOTES, *reversed(EXAMPLE)]
    assert {r: m["state"] for r, m in rows.items()} == {
        SERVINGS: "pending", TAGS: "current", NOTES: "applied", **dict.fromkeys(EXAMPLE, "applied")}
    # who applied what, and the backup from before it (still on the host)
    assert (rows[TAGS]["applied_by"], rows[TAGS]["backup"], rows[TAGS]["backup_kept"]) == (tags["id"], tags["backup"], True)
    assert (rows[NOTES]["applied_by"], rows[NOTES]["backup"]) == (notes["id"], notes["backup"])
    assert all(rows[r]["applied_by"] == first["id"] and rows[r]["backup"] is None for r in EXAMPLE)
    assert rows[TAGS]["applied_at"] == next(r for r in d.journal() if r["id"] == tags["id"])["finished_at"]
    # the rolled-back revision: pending again, known only to the branch tip; what undoing it drops
    assert rows[SERVINGS]["applied_by"] is None and rows[SERVINGS]["known_to"] == ["tip"]
    assert rows[TAGS]["downgrade_drops"] == ["drop column recipes.tags"] and rows[TAGS]["has_downgrade"] is True
    assert rows[EXAMPLE[0]]["marks"] == ["base"] and rows[SERVINGS]["marks"] == ["head"]
    assert rows[TAGS]["marks"] == ["head of the running code"]
    assert f"current      {TAGS}" in text and f"applied by {tags['id']}" in text
    assert f"data from before it: backup {tags['backup']}" in text and "[branch tip only]" in text

    verbose = d.deployer("migrations", d.env_name, "--verbose", timeout=120).stdout
    assert f"path example/migrations/versions/{TAGS}_add_tags_to_recipes.py; parent {NOTES}" in verbose


def test_a_pending_revision_of_an_unreleased_commit_shows_its_drop_list(d: Deployment) -> None:
    d.commit(add_migration(DROP_TAGS, SERVINGS, "Drop tags", ["op.drop_column('recipes', 'tags')"],
                           ["op.add_column('recipes', sa.Column('tags', sa.Text(), nullable=True))"]), "drop tags")
    code, doc, text = listing(d)
    assert code == 0
    rows = {m["revision"]: m for m in doc["migrations"]}
    assert doc["migrations"][0]["revision"] == DROP_TAGS
    assert rows[DROP_TAGS]["state"] == "pending" and rows[DROP_TAGS]["known_to"] == ["tip"]
    assert rows[DROP_TAGS]["upgrade_drops"] == ["drop column recipes.tags"]
    assert "its upgrade drops: drop column recipes.tags" in text


def test_a_database_at_a_revision_the_code_does_not_know(d: Deployment) -> None:
    d.sql("UPDATE alembic_version SET version_num = '9999deadbeef'")
    try:
        code, doc, text = listing(d)
        assert code == 0
        first = doc["migrations"][0]
        assert (first["revision"], first["state"], first["known_to"]) == ("9999deadbeef", "unknown", [])
        assert {m["state"] for m in doc["migrations"][1:]} == {"undetermined"}
        assert "unknown      9999deadbeef  not in the running code or the branch tip" in text
    finally:
        d.sql(f"UPDATE alembic_version SET version_num = '{TAGS}'")


def test_an_unreachable_host_is_a_clear_error(d: Deployment) -> None:
    port = free_port()  # nothing listens there
    toml = re.sub(r'^host = ".*"$', f'host = "nobody@127.0.0.1:{port}"', (d.laptop / "deploy.toml").read_text(),
                  flags=re.MULTILINE)
    other = d.laptop / "deploy-unreachable.toml"
    other.write_text(toml)
    try:
        result = d.deployer("migrations", d.env_name, "--json", "--config", str(other), timeout=120)
    finally:
        other.unlink()
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and str(port) in doc["error"]["message"]


def test_rollback_help_points_to_it(d: Deployment) -> None:
    out = subprocess.run(d.deployer_argv("rollback", "--help"), capture_output=True, text=True,
                         env={**d.environ(), "COLUMNS": "200"}, check=True).stdout
    assert "deployer migrations ENV" in " ".join(out.split())
