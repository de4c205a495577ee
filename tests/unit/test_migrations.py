"""alembic graph logic of deployer.db.migrations, on small migration directories written per test."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from deployer.db.migrations import (
    MigrationError,
    MigrationStep,
    VerdictKind,
    downgrade_path,
    load_scripts,
    redact_url,
    script_heads,
    scripts_from_sources,
    upgrade_path,
    verdict,
    version_files,
)
from deployer.errors import ConfigError, DeployerError

# Revision ids are fixed so paths can be asserted exactly.
A, B, C, D, E, M = "aaaa00000001", "bbbb00000002", "cccc00000003", "dddd00000004", "eeee00000005", "ffff0000000m"

ADD_USERS = """
    op.create_table("users", sa.Column("id", sa.Integer(), primary_key=True))
"""
DROP_USERS = """
    op.drop_table("users")
"""


def revision_source(
    revision: str,
    down: str | tuple[str, ...] | None,
    message: str,
    upgrade: str = "    pass\n",
    downgrade: str | None = "    pass\n",
    *,
    annotated: bool = False,
    header: str = "",
) -> str:
    """A revision script shaped like Flask-Migrate's script.py.mako produces."""
    upgrade_body = textwrap.indent(textwrap.dedent(upgrade).strip("\n"), "    ") + "\n"
    if annotated:
        ids = (
            f"revision: str = {revision!r}\n"
            f"down_revision: Union[str, Sequence[str], None] = {down!r}\n"
            "branch_labels: Union[str, Sequence[str], None] = None\n"
            "depends_on: Union[str, Sequence[str], None] = None\n"
        )
    else:
        ids = f"revision = {revision!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n"
    text = (
        f'"""{message}\n\nRevision ID: {revision}\nRevises: {down}\nCreate Date: 2024-01-01 00:00:00\n\n"""\n'
        f"{header}from alembic import op\nimport sqlalchemy as sa\n\n\n"
        f"# revision identifiers, used by Alembic.\n{ids}\n\n"
        f"def upgrade():\n{upgrade_body}"
    )
    if downgrade is not None:
        downgrade_body = textwrap.indent(textwrap.dedent(downgrade).strip("\n"), "    ") + "\n"
        text += f"\n\ndef downgrade():\n{downgrade_body}"
    return text


def make_migrations(root: Path, revisions: dict[str, str]) -> Path:
    """A Flask-Migrate ``migrations/`` folder whose env.py would blow up if imported."""
    migrations = root / "migrations"
    (migrations / "versions").mkdir(parents=True)
    (migrations / "alembic.ini").write_text("[alembic]\n")
    (migrations / "env.py").write_text(
        "raise RuntimeError('env.py imports the Flask app and must never be loaded by deployer')\n"
    )
    for name, source in revisions.items():
        (migrations / "versions" / name).write_text(source)
    return migrations


@pytest.fixture
def linear(tmp_path: Path) -> Path:
    """A -> B -> C, where C drops a column and has no downgrade written."""
    return make_migrations(
        tmp_path,
        {
            f"{A}_create_users.py": revision_source(A, None, "create users", ADD_USERS, DROP_USERS),
            f"{B}_add_email.py": revision_source(
                B,
                A,
                "add email",
                'op.add_column("users", sa.Column("email", sa.String(120)))',
                'op.drop_column("users", "email")',
            ),
            f"{C}_drop_email.py": revision_source(
                C,
                B,
                "drop email",
                """
                with op.batch_alter_table("users", schema=None) as batch_op:
                    batch_op.drop_column("email")
                """,
                "pass",
            ),
        },
    )


@pytest.fixture
def branched(tmp_path: Path) -> Path:
    """A -> B and A -> D: two heads, as when two feature branches each added a migration."""
    return make_migrations(
        tmp_path,
        {
            f"{A}_base.py": revision_source(A, None, "create users", ADD_USERS, DROP_USERS),
            f"{B}_left.py": revision_source(B, A, "add email"),
            f"{D}_right.py": revision_source(D, A, "add posts"),
        },
    )


@pytest.fixture
def merged(tmp_path: Path) -> Path:
    """The branched history plus a `flask db merge heads` revision M."""
    return make_migrations(
        tmp_path,
        {
            f"{A}_base.py": revision_source(A, None, "create users", ADD_USERS, DROP_USERS),
            f"{B}_left.py": revision_source(B, A, "add email", ADD_USERS, DROP_USERS),
            f"{D}_right.py": revision_source(D, A, "add posts", ADD_USERS, DROP_USERS),
            f"{M}_merge.py": revision_source(M, (B, D), "merge heads"),
        },
    )


# ------------------------------------------------------------------ loading and heads


def test_heads_of_linear_history(linear: Path) -> None:
    assert script_heads(linear) == (C,)
    assert script_heads(str(linear)) == (C,)


def test_two_heads_are_both_reported(branched: Path) -> None:
    assert script_heads(branched) == (B, D)


def test_merge_revision_leaves_one_head(merged: Path) -> None:
    scripts = load_scripts(merged)
    assert scripts.heads == (M,)
    assert scripts.get(M).down_revision == (B, D)
    assert scripts.get(M).has_downgrade is True  # an empty merge is undone by doing nothing


def test_loading_never_imports_env_or_revision_modules(tmp_path: Path) -> None:
    # A revision module that imports the app (missing here) must still be read: it is parsed, not run.
    migrations = make_migrations(
        tmp_path,
        {f"{A}_x.py": revision_source(A, None, "uses the app", header="from myapp.models import User\n")},
    )
    scripts = load_scripts(migrations)
    assert scripts.heads == (A,)
    assert scripts.get(A).message == "uses the app"


def test_annotated_ids_of_recent_alembic_templates(tmp_path: Path) -> None:
    migrations = make_migrations(
        tmp_path,
        {
            f"{A}_a.py": revision_source(A, None, "first", annotated=True),
            f"{B}_b.py": revision_source(B, A, "second", annotated=True),
        },
    )
    assert script_heads(migrations) == (B,)


def test_non_revision_files_are_ignored(linear: Path) -> None:
    (linear / "versions" / "__init__.py").write_text("raise SystemExit(1)\n")
    (linear / "versions" / "README.txt").write_text("notes\n")
    (linear / "versions" / ".#lock.py").write_text("garbage(\n")
    assert script_heads(linear) == (C,)


def test_empty_versions_folder_has_no_heads(tmp_path: Path) -> None:
    migrations = make_migrations(tmp_path, {})
    assert script_heads(migrations) == ()
    assert upgrade_path(migrations, None) == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, "does not exist"),
        ({"alembic.ini": "[alembic]\n"}, "has no versions/ folder"),
    ],
)
def test_missing_directories_are_explained(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    target = tmp_path / "migrations"
    if files:
        target.mkdir()
        for name, text in files.items():
            (target / name).write_text(text)
    with pytest.raises(MigrationError, match=expected) as caught:
        load_scripts(target)
    assert "migrations_dir" in caught.value.hint


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def upgrade(:\n", "is not valid Python"),
        ("down_revision = None\n", "declares no `revision = ...`"),
        (f"revision = {A!r}\n", "declares no `down_revision = ...`"),
        ("revision = make_id()\ndown_revision = None\n", "must be written as a literal"),
        (f"revision = {A!r}\ndown_revision = 'zzz'\n", "revises zzz, which no migration script"),
    ],
)
def test_broken_scripts_are_named(tmp_path: Path, source: str, expected: str) -> None:
    migrations = make_migrations(tmp_path, {"broken_script.py": source})
    with pytest.raises(MigrationError, match=expected) as caught:
        load_scripts(migrations)
    assert "broken_script.py" in caught.value.message


def test_duplicate_revision_ids_are_refused(tmp_path: Path) -> None:
    migrations = make_migrations(
        tmp_path,
        {"one.py": revision_source(A, None, "one"), "two.py": revision_source(A, None, "two")},
    )
    with pytest.raises(MigrationError, match=f"revision {A} is defined twice"):
        load_scripts(migrations)


def test_legacy_file_named_after_revision(tmp_path: Path) -> None:
    migrations = make_migrations(tmp_path, {"abc123.py": "down_revision = None\n"})
    assert script_heads(migrations) == ("abc123",)


# ------------------------------------------------------------------ destructive ops, downgrades


@pytest.mark.parametrize(
    ("upgrade", "expected"),
    [
        ('op.drop_table("posts")', ("drop table posts",)),
        ('op.drop_column("users", "email")', ("drop column users.email",)),
        ('op.drop_column(table_name="users", column_name="email")', ("drop column users.email",)),
        (
            'with op.batch_alter_table("users") as batch_op:\n    batch_op.drop_column("email")',
            ("drop column users.email",),
        ),
        ('op.execute("DROP TABLE legacy_logs")', ("execute DROP TABLE legacy_logs",)),
        ('op.execute(sa.text("alter table users drop column age"))', ("execute alter table users drop column age",)),
        ('op.get_bind().execute(sa.text("TRUNCATE sessions"))', ("execute TRUNCATE sessions",)),
        ('op.execute("DELETE FROM users WHERE id > 10")', ("execute DELETE FROM users WHERE id > 10",)),
        ("_cleanup()", ("drop table old_stuff",)),  # via a module-level function upgrade() calls
        ('op.drop_index("ix_users_email")', ()),
        ('op.drop_constraint("fk_posts_users", "posts")', ()),
        ('op.execute("ALTER TABLE users DROP CONSTRAINT users_email_key")', ()),
        ('op.add_column("users", sa.Column("email", sa.String()))', ()),
        ('op.execute("UPDATE users SET active = true")', ()),
    ],
)
def test_destructive_ops_in_upgrade(tmp_path: Path, upgrade: str, expected: tuple[str, ...]) -> None:
    source = revision_source(A, None, "change", upgrade, "pass")
    source += '\n\ndef _cleanup():\n    op.drop_table("old_stuff")\n'
    scripts = load_scripts(make_migrations(tmp_path, {"a.py": source}))
    assert scripts.get(A).upgrade_destructive_ops == expected
    assert upgrade_path(scripts, None)[0].destructive_ops == expected


# One row per way a migration can throw data away (or look as if it did), written as
# autogenerate and hand-written migrations write them: (upgrade body, module-level code
# after the functions, the exact data-loss list).
DATA_LOSS_FORMS = [
    pytest.param('op.drop_table("t", schema="s")', "", ("drop table s.t",), id="drop_table-schema"),
    pytest.param('op.drop_table(table_name="t", schema="s")', "", ("drop table s.t",), id="drop_table-keywords"),
    pytest.param('op.drop_table("t", schema=None)', "", ("drop table t",), id="drop_table-schema-None"),
    pytest.param('op.drop_column("t", "c", schema="s")', "", ("drop column s.t.c",), id="drop_column-schema"),
    pytest.param(
        'op.drop_column(table_name="t", column_name="c", schema="s")', "", ("drop column s.t.c",),
        id="drop_column-keywords",
    ),
    pytest.param('op.drop_column("t", column_name="c")', "", ("drop column t.c",), id="drop_column-mixed"),
    pytest.param(
        'with op.batch_alter_table("t", schema="s") as b:\n    b.drop_column("c")', "", ("drop column s.t.c",),
        id="batch-schema",
    ),
    pytest.param(
        'with op.batch_alter_table(table_name="t", schema="s") as batch_op:\n    batch_op.drop_column(column_name="c")',
        "", ("drop column s.t.c",), id="batch-keywords",
    ),
    pytest.param(
        'with op.batch_alter_table("t", "s") as batch_op:\n    batch_op.drop_column("c")', "",
        ("drop column s.t.c",), id="batch-positional-schema",
    ),
    pytest.param(
        # autogenerate: one block per table, every one of them `batch_op`
        'with op.batch_alter_table("posts", schema=None) as batch_op:\n'
        '    batch_op.drop_column("body")\n'
        '    batch_op.drop_index("ix_posts_body")\n'
        'with op.batch_alter_table("users", schema=None) as batch_op:\n'
        '    batch_op.drop_column("email")',
        "", ("drop column posts.body", "drop column users.email"), id="batch-two-blocks-same-name",
    ),
    pytest.param(
        'with op.batch_alter_table("users") as users:\n'
        '    with op.batch_alter_table("posts") as posts:\n'
        '        posts.drop_column("body")\n'
        '    users.drop_column("email")',
        "", ("drop column posts.body", "drop column users.email"), id="batch-nested-blocks",
    ),
    pytest.param(
        'with op.batch_alter_table("users") as batch_op, op.batch_alter_table("posts") as other:\n'
        '    other.drop_column("body")\n'
        '    batch_op.drop_column("email")',
        "", ("drop column posts.body", "drop column users.email"), id="batch-two-items-one-with",
    ),
    pytest.param(
        'for name in ("a", "b"):\n'
        '    with op.batch_alter_table("posts") as batch_op:\n'
        '        if name:\n'
        '            batch_op.drop_column("body")\n'
        'with op.batch_alter_table("users") as batch_op:\n'
        '    try:\n'
        '        batch_op.drop_column("email")\n'
        '    except Exception:\n'
        '        batch_op.drop_column("mail")',
        "", ("drop column posts.body", "drop column users.email", "drop column users.mail"),
        id="batch-inside-loops-ifs-and-try",
    ),
    pytest.param(
        'with op.batch_alter_table("posts") as batch_op:\n'
        '    _drop_legacy(batch_op)\n'
        'with op.batch_alter_table("users") as batch_op:\n'
        '    _drop_legacy(batch=batch_op)',
        'def _drop_legacy(batch):\n    batch.drop_column("legacy")\n',
        ("drop column posts.legacy", "drop column users.legacy"), id="batch-passed-to-a-module-helper",
    ),
    pytest.param(
        'def drop_email():\n'
        '    batch_op.drop_column("email")\n'
        'with op.batch_alter_table("posts") as batch_op:\n'
        '    pass\n'
        'with op.batch_alter_table("users") as batch_op:\n'
        '    drop_email()',
        "", ("drop column users.email",), id="nested-function-sees-its-call-site-block",
    ),
    pytest.param(
        'def later():\n    op.drop_table("archive")\nop.invoke(later)', "", ("drop table archive",),
        id="nested-function-never-called-by-name",
    ),
    pytest.param(
        'with op.batch_alter_table("users") as batch_op:\n    alias = batch_op\n    alias.drop_column("email")',
        "", ("drop column users.email",), id="batch-alias",
    ),
    pytest.param(
        '_drop(make_batch())', 'def _drop(b):\n    b.drop_column("x")\n', ("drop column ?.x",),
        id="batch-of-unknown-origin",
    ),
    pytest.param('op.execute("DROP TABLE legacy")', "", ("execute DROP TABLE legacy",), id="execute-string"),
    pytest.param(
        'op.execute(sa.text("DROP TABLE s.legacy CASCADE"))', "", ("execute DROP TABLE s.legacy CASCADE",),
        id="execute-sa-text",
    ),
    pytest.param(
        'op.get_bind().execute(sa.text("TRUNCATE sessions"))', "", ("execute TRUNCATE sessions",),
        id="get_bind-execute-truncate",
    ),
    pytest.param(
        'conn = op.get_bind()\nconn.execute(text("DELETE FROM sessions"))', "", ("execute DELETE FROM sessions",),
        id="connection-execute-delete",
    ),
    pytest.param(
        'op.get_bind().exec_driver_sql("drop table tmp_import")', "", ("execute drop table tmp_import",),
        id="exec_driver_sql",
    ),
    pytest.param(
        'with op.batch_alter_table("users") as batch_op:\n    batch_op.execute("DELETE FROM users WHERE banned")',
        "", ("execute DELETE FROM users WHERE banned",), id="batch-execute",
    ),
    pytest.param(
        'sql = "TRUNCATE audit_log"\nop.execute(sql)', "", ("execute TRUNCATE audit_log",), id="execute-local-name",
    ),
    pytest.param(
        "op.execute(PURGE)", 'PURGE = sa.text("DELETE FROM events")\n', ("execute DELETE FROM events",),
        id="execute-module-constant",
    ),
    pytest.param(
        'for name in ("a", "b"):\n    op.execute(f"DROP TABLE {name}_old")', "", ("execute DROP TABLE {name}_old",),
        id="execute-f-string",
    ),
    pytest.param(
        'op.drop_table("events", schema=SCHEMA)', 'SCHEMA = "audit"\n', ("drop table audit.events",),
        id="schema-from-module-constant",
    ),
    pytest.param(
        'op.drop_table("t")\nop.drop_table("t")\nop.drop_column("u", "c")', "", ("drop table t", "drop column u.c"),
        id="in-order-once-each",
    ),
    pytest.param("_again()", 'def _again():\n    op.drop_table("t")\n    _again()\n', ("drop table t",), id="recursion"),
    pytest.param('op.rename_table("old", "new")', "", (), id="rename_table-keeps-data"),
    pytest.param('op.rename_table("old", "new", schema="s")', "", (), id="rename_table-schema"),
    pytest.param(
        'with op.batch_alter_table("users") as batch_op:\n    batch_op.alter_column("mail", new_column_name="email")',
        "", (), id="rename-column-keeps-data",
    ),
    pytest.param(
        'with op.batch_alter_table("users") as batch_op:\n    batch_op.drop_constraint("uq_email")\n'
        '    batch_op.drop_index("ix_email")',
        "", (), id="batch-index-and-constraint-drops",
    ),
]


@pytest.mark.parametrize(("upgrade", "module_code", "expected"), DATA_LOSS_FORMS)
def test_data_loss_names_the_right_table(tmp_path: Path, upgrade: str, module_code: str, expected: tuple[str, ...]) -> None:
    source = revision_source(A, None, "change", upgrade, "pass") + "\n\n" + module_code
    scripts = scripts_from_sources({"versions/a.py": source}, location="test")
    assert scripts.get(A).upgrade_destructive_ops == expected
    assert scripts.get(A).downgrade_destructive_ops == ()


def test_data_loss_of_a_helper_is_counted_in_the_direction_that_calls_it(tmp_path: Path) -> None:
    source = revision_source(
        A, None, "change",
        'with op.batch_alter_table("users") as batch_op:\n    batch_op.add_column(sa.Column("x", sa.Integer()))',
        'with op.batch_alter_table("users") as batch_op:\n    _undo(batch_op)',
    ) + '\n\ndef _undo(batch):\n    batch.drop_column("x")\n\n\ndef _unused():\n    op.drop_table("users")\n'
    scripts = scripts_from_sources({"versions/a.py": source}, location="test")
    assert scripts.get(A).upgrade_destructive_ops == ()
    assert scripts.get(A).downgrade_destructive_ops == ("drop column users.x",)


def test_destructive_ops_are_read_per_direction(linear: Path) -> None:
    scripts = load_scripts(linear)
    assert scripts.get(B).upgrade_destructive_ops == ()
    assert scripts.get(B).downgrade_destructive_ops == ("drop column users.email",)
    assert scripts.get(C).upgrade_destructive_ops == ("drop column users.email",)
    assert scripts.get(A).downgrade_destructive_ops == ("drop table users",)


@pytest.mark.parametrize(
    ("upgrade", "downgrade", "expected"),
    [
        (ADD_USERS, DROP_USERS, True),
        (ADD_USERS, None, False),  # no downgrade() at all
        (ADD_USERS, "pass", False),
        (ADD_USERS, '"""Irreversible."""\n...', False),
        (ADD_USERS, 'raise NotImplementedError("cannot undo")', False),
        (ADD_USERS, 'print("no")\nraise RuntimeError("irreversible")', False),
        (ADD_USERS, "if False:\n    raise RuntimeError('x')\nop.drop_table('users')", True),
        ("pass", "pass", True),  # a no-op revision is undone by doing nothing
    ],
)
def test_has_downgrade(tmp_path: Path, upgrade: str, downgrade: str | None, expected: bool) -> None:
    scripts = load_scripts(make_migrations(tmp_path, {"a.py": revision_source(A, None, "x", upgrade, downgrade)}))
    assert scripts.get(A).has_downgrade is expected


# ------------------------------------------------------------------ paths


def test_upgrade_path_from_empty_database_in_apply_order(linear: Path) -> None:
    steps = upgrade_path(linear, None)
    assert [s.revision for s in steps] == [A, B, C]
    assert steps[0] == MigrationStep(A, None, "create users", (), True)
    assert steps[2] == MigrationStep(C, B, "drop email", ("drop column users.email",), False, ("drop column users.email",))


@pytest.mark.parametrize(
    ("current", "target", "expected"),
    [
        (A, "heads", [B, C]),
        (A, "head", [B, C]),
        ((A,), "heads", [B, C]),
        (B, "heads", [C]),
        (C, "heads", []),
        (None, B, [A, B]),
        ((), A, [A]),
        (A, B, [B]),
    ],
)
def test_upgrade_paths(linear: Path, current: object, target: str, expected: list[str]) -> None:
    assert [s.revision for s in upgrade_path(linear, current, target)] == expected  # type: ignore[arg-type]


def test_upgrade_through_a_merge(merged: Path) -> None:
    revisions = [s.revision for s in upgrade_path(merged, A)]
    assert revisions[0] in (B, D) and revisions[1] in (B, D) and revisions[2] == M
    assert [s.revision for s in upgrade_path(merged, B)] == [D, M]


def test_multiple_heads_are_refused_with_a_hint(branched: Path) -> None:
    with pytest.raises(MigrationError) as caught:
        upgrade_path(branched, A)
    error = caught.value
    assert error.message.endswith(f"have 2 heads: {B} (add email); {D} (add posts)")
    assert "flask db merge heads" in error.hint


def test_one_branch_of_several_heads_can_be_targeted(branched: Path) -> None:
    assert [s.revision for s in upgrade_path(branched, A, D)] == [D]


def test_database_unknown_to_the_code(linear: Path) -> None:
    with pytest.raises(MigrationError) as caught:
        upgrade_path(linear, "9999deadbeef")
    assert caught.value.message == (
        f"the database is at 9999deadbeef, which no migration script in {linear} knows"
        " — is the database ahead of this code?"
    )
    with pytest.raises(MigrationError, match="is the database ahead of this code"):
        downgrade_path(linear, "9999deadbeef", A)


def test_unknown_target(linear: Path) -> None:
    with pytest.raises(MigrationError, match="has revision nope"):
        upgrade_path(linear, A, "nope")


def test_upgrade_to_an_older_revision_is_refused(linear: Path) -> None:
    with pytest.raises(MigrationError, match="needs a downgrade"):
        upgrade_path(linear, C, A)


@pytest.mark.parametrize(
    ("current", "target", "expected"),
    [
        (C, B, [C]),
        (C, A, [C, B]),
        (C, "base", [C, B, A]),
        (C, None, [C, B, A]),
        (C, "-1", [C]),
        (B, B, []),
        (None, "base", []),
    ],
)
def test_downgrade_paths(linear: Path, current: str | None, target: str | None, expected: list[str]) -> None:
    assert [s.revision for s in downgrade_path(linear, current, target)] == expected


def test_downgrade_steps_carry_downgrade_ops(linear: Path) -> None:
    steps = downgrade_path(linear, C, None)
    assert [(s.revision, s.destructive_ops, s.has_downgrade) for s in steps] == [
        (C, (), False),
        (B, ("drop column users.email",), True),
        (A, ("drop table users",), True),
    ]


def test_downgrade_to_a_newer_revision_is_refused(linear: Path) -> None:
    with pytest.raises(MigrationError, match="needs an upgrade"):
        downgrade_path(linear, A, C)


def test_downgrade_from_a_merge(merged: Path) -> None:
    # As alembic: undoing the merge down to B leaves the other branch (D) applied.
    assert [s.revision for s in downgrade_path(merged, M, B)] == [M]
    steps = [s.revision for s in downgrade_path(merged, M, A)]
    assert steps[0] == M and sorted(steps[1:]) == [B, D]


# ------------------------------------------------------------------ verdicts


def test_verdict_up_to_date(linear: Path) -> None:
    result = verdict((C,), linear)
    assert (result.kind, result.database, result.heads, result.steps) == (VerdictKind.UP_TO_DATE, (C,), (C,), ())
    assert result.summary == f"up to date at {C}"


def test_verdict_pending(linear: Path) -> None:
    result = verdict([A], linear)
    assert result.kind is VerdictKind.PENDING
    assert [s.revision for s in result.steps] == [B, C]
    assert result.summary == f"2 migration(s) pending: {A} -> {C}"


def test_verdict_not_initialised(linear: Path) -> None:
    result = verdict((), linear)
    assert result.kind is VerdictKind.NOT_INITIALISED
    assert [s.revision for s in result.steps] == [A, B, C]


def test_verdict_unknown_revision(linear: Path) -> None:
    result = verdict(("9999deadbeef",), linear)
    assert (result.kind, result.unknown) == (VerdictKind.UNKNOWN_REVISION, ("9999deadbeef",))
    assert "is the database ahead" in result.summary


def test_verdict_multiple_heads(branched: Path) -> None:
    result = verdict((A,), branched)
    assert (result.kind, result.heads) == (VerdictKind.MULTIPLE_HEADS, (B, D))
    assert "merge them" in result.summary


def test_verdict_ahead_of_an_older_target(linear: Path) -> None:
    # The scripts of a newer commit, compared with the head of the deployed (older) one.
    result = verdict((C,), linear, target=A)
    assert result.kind is VerdictKind.AHEAD
    assert [s.revision for s in result.steps] == [C, B]
    assert result.summary == f"database at {C} is 2 migration(s) ahead of {A}"


def test_verdict_other_branch_is_pending_as_alembic_sees_it(branched: Path) -> None:
    # `alembic upgrade D` from B applies D next to B: both branches then coexist.
    result = verdict((B,), branched, target=D)
    assert result.kind is VerdictKind.PENDING
    assert [s.revision for s in result.steps] == [D]
    assert verdict((B, D), branched, target=D).kind is VerdictKind.UP_TO_DATE


def test_verdict_unknown_target_is_an_error(linear: Path) -> None:
    with pytest.raises(MigrationError, match="has revision nope"):
        verdict((A,), linear, target="nope")


def test_verdict_no_migrations_at_all(tmp_path: Path) -> None:
    assert verdict((), make_migrations(tmp_path, {})).kind is VerdictKind.UP_TO_DATE


# ------------------------------------------------------------------ scripts from a commit


def test_scripts_from_sources_matches_the_directory(linear: Path) -> None:
    listing = [
        "migrations/alembic.ini",
        "migrations/env.py",
        *(f"migrations/versions/{p.name}" for p in (linear / "versions").iterdir()),
        "migrations/versions/sub/ignored.py",
        "migrations/versions/__init__.py",
        "app/models.py",
    ]
    picked = version_files(listing, "migrations")
    assert picked == sorted(f"migrations/versions/{p.name}" for p in (linear / "versions").iterdir())
    sources = {path: (linear / "versions" / Path(path).name).read_text() for path in picked}
    scripts = scripts_from_sources(sources, location="migrations at 1a2b3c4")
    assert scripts.heads == (C,)
    assert upgrade_path(scripts, A) == upgrade_path(linear, A)
    with pytest.raises(MigrationError, match="in migrations at 1a2b3c4 knows"):
        upgrade_path(scripts, "9999deadbeef")


@pytest.mark.parametrize(
    ("listing", "directory", "expected"),
    [
        (["app/migrations/versions/a.py", "migrations/versions/b.py"], "app/migrations", ["app/migrations/versions/a.py"]),
        (["migrations/versions/a.py"], "migrations/", ["migrations/versions/a.py"]),
        (["versions/a.py"], ".", ["versions/a.py"]),
        (["migrations/versions/a.pyc", "migrations/versions/a.txt"], "migrations", []),
    ],
)
def test_version_files(listing: list[str], directory: str, expected: list[str]) -> None:
    assert version_files(listing, directory) == expected


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg2://app:s3cret@db:5432/app", "postgresql+psycopg2://app:***@db:5432/app"),
        ("postgres://app:s3cret@db/app", "postgres://app:***@db/app"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("not a url://app:s3cret@x", "not a url://app:***@x"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_malformed_url_is_a_config_error() -> None:
    from deployer.db.migrations import database_revisions

    with pytest.raises(ConfigError) as caught:
        database_revisions("nosuchdialect://app:s3cret@127.0.0.1/app")
    assert "s3cret" not in str(caught.value)
    assert isinstance(caught.value, DeployerError)


def test_heads_without_alembic_agree_with_alembics_map() -> None:
    # deployer reads heads without importing alembic when no script uses depends_on; on
    # random histories (branches, merges, several roots) that must be alembic's answer.
    import random

    from alembic.script.revision import Revision, RevisionMap

    rng = random.Random(20261202)
    for _ in range(200):
        ids = [f"{n:04x}{rng.getrandbits(32):08x}" for n in range(rng.randint(1, 12))]
        downs: dict[str, str | tuple[str, ...] | None] = {}
        for index, revision in enumerate(ids):
            earlier = ids[:index]
            if not earlier or rng.random() < 0.1:
                downs[revision] = None
            elif rng.random() < 0.25 and len(earlier) >= 2:
                downs[revision] = tuple(rng.sample(earlier, 2))
            else:
                downs[revision] = rng.choice(earlier)
        scripts = scripts_from_sources(
            {f"{r}.py": revision_source(r, downs[r], f"m {r}") for r in ids}, location="random"
        )
        revisions = [Revision(r, downs[r]) for r in ids]
        alembic_heads = RevisionMap(lambda revisions=revisions: revisions).heads
        assert scripts.heads == tuple(sorted(alembic_heads)), downs
        assert "map" not in scripts._built  # answered without building alembic's map


def test_a_history_that_loops_is_refused_up_front() -> None:
    sources = {
        "a.py": revision_source(A, C, "a"),
        "b.py": revision_source(B, A, "b"),
        "c.py": revision_source(C, B, "c"),
    }
    with pytest.raises(MigrationError, match="do not form a valid history: revision .* revises itself"):
        scripts_from_sources(sources, location="loop")


def test_status_of_an_up_to_date_database_needs_no_alembic() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from deployer.db.migrations import scripts_from_sources, upgrade_path, verdict\n"
        "from tests.unit.test_migrations import revision_source, A, B\n"
        "s = scripts_from_sources({'a.py': revision_source(A, None, 'a'), 'b.py': revision_source(B, A, 'b')}, location='x')\n"
        "assert verdict([B], s).kind.name == 'UP_TO_DATE'\n"
        "assert upgrade_path(s, [B]) == [] and upgrade_path(s, [B], B) == []  # preflight of a release with nothing to do\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'sqlalchemy')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+psycopg2://app:s%40c:r@db:5433/app",
            {"user": "app", "password": "s@c:r", "host": "db", "port": "5433", "dbname": "app"},
        ),
        ("postgres://u@h/d?sslmode=disable", {"user": "u", "host": "h", "dbname": "d", "sslmode": "disable"}),
        ("pgsql://u:p@[::1]/d", {"user": "u", "password": "p", "host": "::1", "dbname": "d"}),
        ("postgresql://a:pa/ss@h/d", None),  # an unescaped "/": libpq would misread it, SQLAlchemy reads it
        ("postgresql://a:pa%ss@h/d", None),  # not an escape: libpq refuses it
        ("mysql+pymysql://u:p@h/d", None),
        ("sqlite:////data/app.db", None),
    ],
)
def test_libpq_reads_postgresql_urls(url: str, expected: dict[str, str] | None) -> None:
    from deployer.db.url import pg_params

    assert pg_params(url) == expected


@pytest.mark.parametrize(
    "params",
    [
        {"user": "app", "password": "p@ss:w/rd %", "host": "10.0.0.5", "port": "45123", "dbname": "my db"},
        {"user": "app", "host": "::1", "port": "5432", "dbname": "app", "sslmode": "require", "application_name": "x y"},
        {"host": "db", "dbname": "app"},
    ],
)
def test_pg_url_round_trips_through_libpq_and_sqlalchemy(params: dict[str, str]) -> None:
    from sqlalchemy.engine import make_url

    from deployer.db.url import pg_params, pg_url

    url = pg_url(params)
    assert pg_params(url) == params
    parsed = make_url(url)  # what create_engine(url) reads: the same address
    assert (parsed.username, parsed.password, parsed.host, parsed.database) == (
        params.get("user"), params.get("password"), params["host"], params["dbname"],
    )
    assert str(parsed.port or "") == params.get("port", "")


def test_postgres_variables_make_a_url_both_parsers_read() -> None:
    from deployer.db.url import from_postgres_variables, pg_params

    found = from_postgres_variables("db", {"POSTGRES_USER": "app", "POSTGRES_PASSWORD": "a:b@c", "POSTGRES_DB": "recipes"})
    assert pg_params(found.url) == {"user": "app", "password": "a:b@c", "host": "db", "port": "5432", "dbname": "recipes"}
    assert found.shown == "postgresql://app:***@db:5432/recipes"
