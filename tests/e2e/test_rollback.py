"""``deployer rollback`` end to end over SSH: schema, code and images back together."""

from __future__ import annotations

import json

import pytest

from tests.bench.cli import result as result_of
from tests.bench.deployment import EXAMPLE_HEAD, Deployment, add_migration

pytestmark = pytest.mark.e2e

M_COMMENTS = "ab12c0ffee01"
M_RATING = "ab34c0ffee02"
M_IRREVERSIBLE = "cd56c0ffee03"


@pytest.fixture(scope="module")
def d(deployment_factory) -> Deployment:
    return deployment_factory("ssh", health_timeout=40)


@pytest.fixture(scope="module")
def releases(d: Deployment) -> dict[str, dict]:
    """Three releases, a migration each, rows added between them."""
    first = d.release()
    d.sql("INSERT INTO users (email, name) VALUES ('ana@example.com', 'Ana'), ('zoë@example.com', 'Zoë')")
    d.sql("INSERT INTO recipes (recipe_title, recipe_description, is_public, user_id) SELECT 'Soup', 'hot', true, id FROM users")
    d.commit(
        add_migration(M_COMMENTS, EXAMPLE_HEAD, "Create comments table",
                      ["op.create_table('comments', sa.Column('id', sa.Integer(), primary_key=True), sa.Column('body', sa.String()))"],
                      ["op.drop_table('comments')"]),
        "comments",
    )
    second = d.release()
    d.sql("INSERT INTO comments (body) VALUES ('délicieux'), ('again')")
    d.sql("INSERT INTO recipes (recipe_title, recipe_description, is_public) VALUES ('Bread', 'baked', false)")
    d.commit(
        add_migration(M_RATING, M_COMMENTS, "Add rating",
                      ["op.add_column('recipes', sa.Column('rating', sa.Integer(), nullable=True))"],
                      ["op.drop_column('recipes', 'rating')"]),
        "rating",
    )
    third = d.release()
    d.sql("INSERT INTO recipes (recipe_title, recipe_description, is_public, rating) VALUES ('Tart', 'sweet', true, 5)")
    return {"first": first, "second": second, "third": third}


BASE_COLUMNS = "id, recipe_title, recipe_description, is_public, user_id, inspiration"


def rows(d: Deployment) -> dict:
    tables = {t for (t,) in d.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    return {
        "users": d.sql("SELECT * FROM users ORDER BY id"),
        "recipes": d.sql(f"SELECT {BASE_COLUMNS} FROM recipes ORDER BY id"),
        "comments": d.sql("SELECT * FROM comments ORDER BY id") if "comments" in tables else None,
    }


def refused(d: Deployment, *args: str, code: int = 6) -> str:
    before = (d.server_head(), d.revision(), rows(d), len(d.journal()))
    result = d.deployer("rollback", d.env_name, *args)
    assert result.returncode == code, f"{result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert (d.server_head(), d.revision(), rows(d), len(d.journal())) == before, "a refused rollback changed something"
    assert not d.lock_held()
    return result.stderr


def test_rollback_previous_then_to_a_revision_prefix_then_forward(d: Deployment, releases: dict) -> None:
    assert d.revision() == (M_RATING,)
    before = rows(d)
    # the plan first: downgrade path with messages, nothing changed
    plan = d.deployer("rollback", d.env_name, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert M_RATING in plan.stdout and "Add rating" in plan.stdout and "drops data" in plan.stdout
    assert d.revision() == (M_RATING,)

    result = result_of(d.deployer("rollback", d.env_name, "previous", "--yes", "--json").stdout)
    assert result["outcome"] == "succeeded"
    assert d.revision() == (M_COMMENTS,)
    assert d.server_head() == releases["second"]["commit"]
    status, body = d.get("/health")
    assert status == 200 and M_COMMENTS in body
    assert d.get("/")[0] == 200
    assert rows(d) == before  # every row of every table that still exists

    result = result_of(d.deployer("rollback", d.env_name, EXAMPLE_HEAD[:5], "--yes", "--json").stdout)
    assert result["outcome"] == "succeeded"
    assert d.revision() == (EXAMPLE_HEAD,)
    assert d.server_head() == releases["first"]["commit"]
    assert d.get("/")[0] == 200
    after = rows(d)
    assert after["users"] == before["users"] and after["recipes"] == before["recipes"] and after["comments"] is None
    kinds = [(r["kind"], r["outcome"]) for r in d.journal()]
    assert kinds[-2:] == [("rollback", "succeeded"), ("rollback", "succeeded")]

    # newer than what runs now: refused, nothing changed
    stderr = refused(d, releases["third"]["id"], "--yes")
    assert "newer than the running release" in stderr
    # and forward again, cleanly
    forward = d.release()
    assert forward["revision_after"] == [M_RATING] and d.revision() == (M_RATING,)
    assert rows(d)["users"] == before["users"]
    assert d.get("/health")[0] == 200


def test_unknown_and_ambiguous_targets_are_refused(d: Deployment, releases: dict) -> None:
    stderr = refused(d, "f00dface", "--yes")
    assert "neither a release id nor the head revision" in stderr and releases["second"]["id"] in stderr
    stderr = refused(d, "ab", "--yes")
    assert "ambiguous" in stderr and M_COMMENTS in stderr and M_RATING in stderr


def test_what_a_refused_downgrade_drops_is_said_once(d: Deployment, releases: dict) -> None:
    """The drop list was printed three times (a warning, the step's failure, the error), and
    twice more with --dry-run."""
    drop = f"{M_RATING} (Add rating): drop column recipes.rating"
    stderr = refused(d, releases["second"]["id"])
    assert stderr.count(drop) == 1, stderr
    assert "--yes" in stderr and "x preflight failed (the error below says why)" in stderr
    plan = d.deployer("rollback", d.env_name, releases["second"]["id"], "--dry-run")
    assert plan.returncode == 0, plan.stderr
    shown = plan.stdout + plan.stderr
    assert shown.count("drop column recipes.rating") == 1, shown  # the plan's downgrade line
    assert f"{M_RATING}  Add rating  [drops data: drop column recipes.rating]" in plan.stdout
    assert "(would ask: Downgrade, dropping this data?)" in plan.stderr


def test_irreversible_downgrade_refused_then_restored_from_backup(d: Deployment, releases: dict) -> None:
    d.sql("INSERT INTO users (email, name) VALUES ('before@example.com', 'Before')")
    snapshot = rows(d)
    snapshot_full = d.sql("SELECT * FROM recipes ORDER BY id")
    revision = d.revision()
    d.commit(
        add_migration(M_IRREVERSIBLE, M_RATING, "Merge names",
                      ["op.execute(\"UPDATE users SET name = upper(name)\")"],
                      ["raise RuntimeError('irreversible: the original names are gone')"]),
        "irreversible",
    )
    released = d.release()
    assert d.revision() == (M_IRREVERSIBLE,)
    assert released["backup_verification"]["state"] == "verified", released["backup_verification"]
    d.sql("INSERT INTO users (email, name) VALUES ('after@example.com', 'After')")
    d.sql("DELETE FROM comments")

    stderr = refused(d, "previous", "--yes")
    assert "no working downgrade" in stderr and M_IRREVERSIBLE in stderr and "--restore-backup" in stderr
    # no terminal, no --yes: a restore needs confirmation and is refused, never hangs
    stderr = refused(d, "previous", "--restore-backup")
    assert "--yes" in stderr
    # a backup marked as failing its restore verification is refused even with --yes; --force takes it
    meta = d.backup_path / f"{released['backup']}.json"
    described = json.loads(meta.read_text())
    meta.write_text(json.dumps({**described, "verification": {
        **described["verification"], "state": "failed", "problems": ["public.users: 1 rows restored, 2 recorded"]}}))
    stderr = refused(d, "previous", "--restore-backup", "--yes")
    assert f"backup {released['backup']} failed its restore verification" in stderr and "--force" in stderr, stderr

    result = d.deployer("rollback", d.env_name, "previous", "--restore-backup", "--yes", "--force", "--json")
    assert result.returncode == 0, result.stderr
    assert "lose" in result.stderr  # it said how much later data is lost
    assert d.revision() == revision
    assert rows(d) == snapshot
    assert d.sql("SELECT * FROM recipes ORDER BY id") == snapshot_full
    assert d.get("/health")[0] == 200
