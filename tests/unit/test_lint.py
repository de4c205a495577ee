"""The migration lint on rendered SQL: every rule, as alembic's offline mode prints it, through
the real squawk binary and PostgreSQL's parser; sizes, waivers, the policy's judgement."""

from __future__ import annotations

import pytest

from deployer.db import lint
from deployer.db.lint import Finding, LiveTables, TableSize
from deployer.db.migrations import markers
from deployer.steps.lint import render_argv


def rendered(*statements: str, down: str = "0000base0000", up: str = "1111next1111") -> str:
    """``flask db upgrade --sql down:up`` output for one revision."""
    body = "\n\n".join(s.rstrip(";") + ";" for s in statements)
    return (f"BEGIN;\n\n-- Running upgrade {down} -> {up}\n\n{body}\n\n"
            f"UPDATE alembic_version SET version_num='{up}' WHERE alembic_version.version_num = '{down}';\n\nCOMMIT;\n\n")


def found(sql: str, *, lock_timeout: float = 10) -> list[Finding]:
    return lint.sql_findings(sql, lint.run_squawk(sql, pg_version="15"), lock_timeout=lock_timeout)


CASES = [
    ("require-concurrent-index-creation", "CREATE INDEX ix_recipes_title ON recipes (title)", "recipes"),
    ("require-concurrent-index-deletion", "DROP INDEX ix_recipes_title", "ix_recipes_title"),
    ("adding-required-field", "ALTER TABLE recipes ADD COLUMN rating INTEGER NOT NULL", "recipes"),
    ("adding-field-with-default", "ALTER TABLE recipes ADD COLUMN token UUID DEFAULT gen_random_uuid() NOT NULL", "recipes"),
    ("changing-column-type", "ALTER TABLE recipes ALTER COLUMN servings TYPE BIGINT", "recipes"),
    ("adding-not-nullable-field", "ALTER TABLE recipes ALTER COLUMN title SET NOT NULL", "recipes"),
    ("constraint-missing-not-valid", "ALTER TABLE recipes ADD CONSTRAINT ck_servings CHECK (servings > 0)", "recipes"),
    ("adding-foreign-key-constraint", "ALTER TABLE recipes ADD CONSTRAINT fk_user FOREIGN KEY(user_id) REFERENCES users (id)",
     "recipes"),
    ("adding-primary-key-constraint", "ALTER TABLE tags ADD PRIMARY KEY (id)", "tags"),
    ("disallowed-unique-constraint", "ALTER TABLE recipes ADD CONSTRAINT uq_slug UNIQUE (slug)", "recipes"),
    ("renaming-column", "ALTER TABLE recipes RENAME body TO instructions", "recipes"),
    ("renaming-table", "ALTER TABLE recipes RENAME TO dishes", "recipes"),
    ("ban-concurrent-index-creation-in-transaction", "CREATE INDEX CONCURRENTLY ix_slug ON recipes (slug)", "recipes"),
    ("backfill-in-migration", "UPDATE recipes SET servings = 1 WHERE servings IS NULL", "recipes"),
    ("rewrite-table", "VACUUM FULL recipes", "recipes"),
    ("lock-table", "LOCK TABLE recipes IN ACCESS EXCLUSIVE MODE", "recipes"),
]


@pytest.mark.parametrize(("rule", "statement", "table"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_names_the_revision_the_statement_and_the_table(rule: str, statement: str, table: str) -> None:
    findings = [f for f in found(rendered(statement)) if f.rule == rule]
    assert len(findings) == 1, found(rendered(statement))
    (finding,) = findings
    assert finding.revision == "1111next1111" and finding.table == table
    assert finding.statement == statement
    assert finding.rule_info.alternative and finding.rule_info.lock


def test_safe_statements_have_no_finding() -> None:
    sql = rendered(
        "CREATE TABLE tags (id SERIAL NOT NULL, name VARCHAR, PRIMARY KEY (id))",
        "ALTER TABLE recipes ADD COLUMN notes VARCHAR",
        "ALTER TABLE recipes ADD COLUMN stars INTEGER DEFAULT '0' NOT NULL",  # a constant default: no rewrite on 11+
        "ALTER TABLE recipes ADD CONSTRAINT fk_user FOREIGN KEY(user_id) REFERENCES users (id) NOT VALID",
        "ALTER TABLE recipes ALTER COLUMN notes DROP NOT NULL",
    )
    assert found(sql) == []


def test_style_rules_and_the_timeout_rule_are_left_out_while_deployer_sets_lock_timeout() -> None:
    sql = rendered("CREATE TABLE tags (id INTEGER NOT NULL, name VARCHAR(40))", "CREATE INDEX ix_t ON recipes (title)")
    assert {f.rule for f in found(sql)} == {"require-concurrent-index-creation"}  # no prefer-bigint, no timeouts
    assert "require-lock-timeout" in {f.rule for f in found(sql, lock_timeout=0)}


def test_findings_are_attributed_to_their_revision_in_a_range() -> None:
    first = rendered("CREATE INDEX ix_a ON recipes (title)", down="0000base0000", up="aaaa11111111")
    second = rendered("ALTER TABLE users RENAME name TO full_name", down="aaaa11111111", up="bbbb22222222")
    text = first.replace("\n\nCOMMIT;\n\n", "\n\n") + second.replace("BEGIN;\n\n", "")
    assert lint.rendered_revisions(text) == ("aaaa11111111", "bbbb22222222")
    assert [(f.revision, f.rule, f.table) for f in found(text)] == [
        ("aaaa11111111", "require-concurrent-index-creation", "recipes"),
        ("bbbb22222222", "renaming-column", "users"),
    ]


def test_an_index_in_an_autocommit_block_is_outside_the_transaction() -> None:
    # op.get_context().autocommit_block() renders as COMMIT ... BEGIN around the statement
    sql = rendered("COMMIT", "CREATE INDEX CONCURRENTLY ix_slug ON recipes (slug)", "BEGIN")
    assert found(sql) == []
    backfill = rendered("COMMIT", "UPDATE recipes SET servings = 1", "BEGIN")
    assert [f.rule for f in found(backfill)] == []  # a batch per transaction is the safe way


def test_sizes_decide_what_counts_and_a_new_table_never_does() -> None:
    findings = found(rendered("CREATE INDEX ix_a ON recipes (title)", "CREATE INDEX ix_b ON tags (name)",
                              "ALTER TABLE users RENAME name TO full_name", "DROP INDEX ix_old"))
    live = LiveTables({"recipes": TableSize(250_000, 40 << 20), "users": TableSize(12, 8192),
                       "ix_old": TableSize(900, 65536)}, {"ix_old": "comments"})
    judged = lint.judge(lint.sized(findings, live), min_rows=10_000)
    assert [(f.rule, f.table) for f in judged.blocking] == [
        ("require-concurrent-index-creation", "recipes"),  # a big table
        ("renaming-column", "users"),  # breaks the running code at any size
    ]
    minor = {(f.rule, f.table, f.new_table) for f in judged.minor}
    assert minor == {("require-concurrent-index-creation", "tags", True),  # tags does not exist yet
                     ("require-concurrent-index-deletion", "comments", False)}  # the index's table, small
    assert "(~250,000 rows, 40.0 MB)" in judged.blocking[0].describe()
    # a table whose size could not be read counts as big
    unknown = lint.judge(lint.sized(findings[:1], LiveTables({"recipes": TableSize(None, 1 << 30)}, {})), min_rows=10)
    assert len(unknown.blocking) == 1 and "rows unknown, 1.0 GB" in unknown.blocking[0].describe()


def test_a_required_column_counts_on_any_table_with_rows() -> None:
    findings = found(rendered("ALTER TABLE recipes ADD COLUMN rating INTEGER NOT NULL"))
    few = lint.judge(lint.sized(findings, LiveTables({"recipes": TableSize(3, 8192)}, {})), min_rows=10_000)
    empty = lint.judge(lint.sized(findings, LiveTables({"recipes": TableSize(0, 8192)}, {})), min_rows=10_000)
    assert len(few.blocking) == 1 and not empty.blocking


def test_waivers_are_read_from_the_file_and_waive_only_their_revision() -> None:
    source = '''"""Reshape

Revision ID: 1111next1111
"""
def upgrade():
    # deployer: allow require-concurrent-index-creation, renaming-column -- reviewed with the DBA
    op.create_index("ix_a", "recipes", ["title"])
'''
    marked = markers(source)
    assert marked == {"contract": False, "waivers": ("require-concurrent-index-creation", "renaming-column")}
    assert markers("# deployer: contract\n# Deployer: allow all (a one-off)\n") == {"contract": True, "waivers": ("all",)}
    assert markers("# deployer is great\nx = 'deployer: allow all'\n") == {"contract": False, "waivers": ()}
    findings = found(rendered("CREATE INDEX ix_a ON recipes (title)", "ALTER TABLE recipes ALTER COLUMN servings TYPE BIGINT"))
    waived = lint.waive(findings, {"1111next1111": marked["waivers"], "other": ("all",)})
    assert [(f.rule, f.waived) for f in waived] == [("require-concurrent-index-creation", True), ("changing-column-type", False)]
    judged = lint.judge(waived, min_rows=0)
    assert [f.rule for f in judged.blocking] == ["changing-column-type"] and len(judged.waived) == 1


def test_the_render_command_comes_from_the_migrate_command() -> None:
    assert render_argv(["flask", "db", "upgrade"], "aaaa", "bbbb") == ["flask", "db", "upgrade", "--sql", "aaaa:bbbb"]
    assert render_argv(["alembic", "upgrade", "head"], "", "bbbb") == ["alembic", "upgrade", "--sql", "bbbb"]


def test_sql_that_does_not_parse_gives_no_statements() -> None:
    assert lint.statements("CREATE INDEX ON (") == ()
    assert [s.kind for s in lint.statements("BEGIN; CREATE INDEX ix ON t (a); COMMIT;")] == [
        "TransactionStmt", "IndexStmt", "TransactionStmt"]


def test_a_missing_squawk_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.setattr(lint.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(lint.LintError, match="squawk, the SQL linter deployer uses, is not installed") as raised:
        lint.squawk_binary()
    assert "squawk-cli" in (raised.value.hint or "")
