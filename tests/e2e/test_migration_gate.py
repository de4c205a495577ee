"""The migration safety gate, end to end over SSH against a real PostgreSQL with a 200 000-row
table: a release whose migrations lock or rewrite that table is refused (policy "refuse")
with one finding per statement — the statement, the lock, the table's live size, the safe
alternative — before anything changes; the same migrations with a reviewed waiver in their
file go through; SQL only the rendered migration shows (``op.execute``) is caught after the
build, in the new image; an expand/contract pair is applied in two phases around the switch.
"""

from __future__ import annotations

import re

import pytest

from tests.bench.deployment import EXAMPLE_HEAD, Deployment, add_migration

pytestmark = pytest.mark.e2e

ROWS = 200_000
R_NOTES = "a0notes00001"  # expand: a nullable column (no finding)
R_RISKY = "a1risky00002"  # an index, a volatile NOT NULL default, a type change, a rename
R_HIDDEN = "a2hidden0003"  # a non-concurrent index in literal SQL: only the rendered SQL shows the table
R_EXPAND = "a3expand0004"
R_CONTRACT = "a4contract05"

RISKY_UPGRADE = [
    "op.create_index('ix_recipes_title', 'recipes', ['recipe_title'])",
    "op.add_column('recipes', sa.Column('token', sa.String(), nullable=False, "
    "server_default=sa.text('md5(random()::text)')))",
    "op.alter_column('recipes', 'recipe_description', type_=sa.Text())",
    "op.alter_column('recipes', 'notes', new_column_name='remarks')",
]
RISKY_DOWNGRADE = [
    "op.alter_column('recipes', 'remarks', new_column_name='notes')",
    "op.alter_column('recipes', 'recipe_description', type_=sa.String())",
    "op.drop_column('recipes', 'token')",
    "op.drop_index('ix_recipes_title', table_name='recipes')",
]
WAIVER = ("# deployer: allow require-concurrent-index-creation, adding-field-with-default, changing-column-type, "
          "renaming-column -- reviewed: run in the quiet hour")


def risky(waived: bool = False) -> dict[str, str]:
    return add_migration(R_RISKY, R_NOTES, "Index and reshape recipes", ([WAIVER] if waived else []) + RISKY_UPGRADE,
                         RISKY_DOWNGRADE)


@pytest.fixture(scope="module")
def d(deployment_factory) -> Deployment:
    d = deployment_factory("ssh", health_timeout=40)
    toml = (d.laptop / "deploy.toml").read_text().replace("keep_backups = 5\n", 'keep_backups = 5\nmigration_policy = "refuse"\n')
    d.commit({"deploy.toml": toml}, "refuse migrations that lock big tables")
    d.release()
    d.sql("INSERT INTO users (email, name) VALUES ('ana@example.com', 'Ana')")
    d.sql("INSERT INTO recipes (recipe_title, recipe_description, is_public, user_id) "
          "SELECT 'recipe ' || g, 'stir ' || g, g % 2 = 0, (SELECT min(id) FROM users) FROM generate_series(1, :n) g", n=ROWS)
    d.sql("ANALYZE recipes")
    return d


def count(d: Deployment) -> int:
    return d.sql("SELECT count(*) FROM recipes")[0][0]


def findings(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"\s+- \w{12}: ", line)]


def test_a_release_that_locks_the_big_table_is_refused_with_one_finding_per_statement(d: Deployment) -> None:
    d.commit({**add_migration(R_NOTES, EXAMPLE_HEAD, "Add notes", ["op.add_column('recipes', sa.Column('notes', sa.String()))"],
                              ["op.drop_column('recipes', 'notes')"]), **risky()}, "reshape recipes")
    journal = len(d.journal())
    refused = d.release(expect=6)["stderr"]
    shown = findings(refused)
    expected = {
        "require-concurrent-index-creation": ("create_index('ix_recipes_title'", "takes SHARE on recipes", "postgresql_concurrently=True"),
        "adding-field-with-default": ("add_column('recipes'", "takes ACCESS EXCLUSIVE on recipes", "backfill"),
        "changing-column-type": ("type_=sa.Text()", "takes ACCESS EXCLUSIVE on recipes", "add a column of the new type"),
        "renaming-column": ("new_column_name='remarks'", "takes ACCESS EXCLUSIVE on recipes", "deployer: contract"),
    }
    assert len(shown) == len(expected), refused
    for rule, (statement, lock, alternative) in expected.items():
        line = next((s for s in shown if f"({rule})" in s), None)
        assert line is not None, f"no {rule} finding:\n{refused}"
        assert line.strip().startswith(f"- {R_RISKY}:") and statement in line and lock in line and alternative in line, line
        assert re.search(r"\(~?(19\d|20\d),\d{3} rows, \d+\.\d (MB|kB)\)", line), line  # the live size
    assert 'migration_policy = "refuse"' in refused and "# deployer: allow" in refused
    # refused before anything changed: not locked, not journaled, the schema and the rows as they were
    assert len(d.journal()) == journal
    assert d.revision() == (EXAMPLE_HEAD,) and count(d) == ROWS
    assert d.get("/health")[0] == 200


def test_the_dry_run_shows_the_findings_and_the_refusal(d: Deployment) -> None:
    plan = d.deployer("release", d.env_name, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    said = plan.stdout + plan.stderr
    assert "(would refuse: 4 statement(s)" in said, said
    assert len(findings(said)) == 4, said
    assert "lint" in plan.stdout and "--sql" in plan.stdout, plan.stdout  # the step that renders the SQL, as it will run


def test_the_same_release_with_a_reviewed_waiver_goes_through(d: Deployment) -> None:
    d.commit(risky(waived=True), "waive the reviewed risks")
    released = d.release()
    lint = next(s for s in released["steps"] if s["name"] == "lint")
    assert "2 of 2 migration(s) rendered and linted: 0 finding(s) on big tables" in lint["detail"], lint
    assert "4 waived" in lint["detail"], lint
    assert d.revision() == (R_RISKY,) and count(d) == ROWS
    columns = {c for (c,) in d.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'recipes'")}
    assert {"token", "remarks"} <= columns and "notes" not in columns
    assert d.get("/health")[0] == 200


def test_sql_only_the_rendered_migration_shows_is_refused_after_the_build(d: Deployment) -> None:
    d.commit(add_migration(R_HIDDEN, R_RISKY, "Index descriptions",
                           ["op.execute('CREATE INDEX ix_recipes_description ON recipes (recipe_description)')"],
                           ["op.execute('DROP INDEX ix_recipes_description')"]), "index descriptions")
    journal = len(d.journal())
    failed = d.deployer("release", d.env_name, "--yes")
    said = failed.stdout + failed.stderr
    assert failed.returncode == 1, said
    assert "failed at step `lint`" in said and 'migration_policy = "refuse"' in said, said
    line = next(s for s in findings(said) if "(require-concurrent-index-creation)" in s)
    assert "CREATE INDEX ix_recipes_description ON recipes (recipe_description)" in line and "rows" in line, line
    # nothing ran: no backup needed, the schema and the code as they were
    assert d.revision() == (R_RISKY,) and count(d) == ROWS
    assert not d.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'ix_recipes_description'")
    assert d.journal()[journal:] and d.journal()[-1]["outcome"] == "failed"
    assert d.get("/health")[0] == 200


def test_an_expand_contract_pair_is_applied_around_the_switch(d: Deployment) -> None:
    contract = add_migration(R_CONTRACT, R_EXPAND, "Drop remarks", ["# deployer: contract", "op.drop_column('recipes', 'remarks')"],
                             ["op.add_column('recipes', sa.Column('remarks', sa.String()))"])
    expand = add_migration(R_EXPAND, R_RISKY, "Add summary", ["op.add_column('recipes', sa.Column('summary', sa.String()))"],
                           ["op.drop_column('recipes', 'summary')"])
    hidden = next(p for p in (d.laptop / "example/migrations/versions").iterdir() if p.name.startswith(R_HIDDEN))
    d.commit({str(hidden.relative_to(d.laptop)): None, **expand, **contract}, "expand, then contract")
    released = d.release()
    steps = {s["name"]: s for s in released["steps"]}
    order = [s["name"] for s in released["steps"]]
    assert order.index("migrate") < order.index("swap") < order.index("health") < order.index("contract"), order
    assert f"applied 1 migration(s): {R_EXPAND}" in steps["migrate"]["detail"], steps["migrate"]
    assert "1 contract migration(s) wait for the switch" in steps["migrate"]["detail"]
    assert "the contract migrations run after the switch" in steps["verify"]["detail"], steps["verify"]
    assert f"applied 1 contract migration(s) after the switch: {R_CONTRACT}" in steps["contract"]["detail"], steps["contract"]
    assert d.revision() == (R_CONTRACT,) and count(d) == ROWS
    columns = {c for (c,) in d.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'recipes'")}
    assert "summary" in columns and "remarks" not in columns
    assert d.journal()[-1]["outcome"] == "succeeded" and d.journal()[-1]["revision_after"] == [R_CONTRACT]
    assert d.get("/health")[0] == 200
