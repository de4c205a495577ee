"""Overlap or pause, from what the pending migrations do to the code that runs now (pure)."""

from __future__ import annotations

import pytest

from deployer.db.migrations import scripts_from_sources
from deployer.proxy.modes import swap_mode
from tests.unit.test_migrations import A, revision_source

FORMS = [
    # additive: the old code keeps working on the new schema
    ('op.create_table("tags", sa.Column("id", sa.Integer(), primary_key=True))', ()),
    ('op.add_column("users", sa.Column("bio", sa.Text(), nullable=True))', ()),
    ('op.add_column("users", sa.Column("bio", sa.Text()))', ()),
    ('op.add_column("users", sa.Column("n", sa.Integer(), nullable=False, server_default="0"))', ()),
    ('op.create_index("ix_users_email", "users", ["email"])', ()),
    ('op.alter_column("users", "bio", nullable=True)', ()),
    ('op.execute("CREATE INDEX CONCURRENTLY ix ON users (email)")', ()),
    ('op.execute("UPDATE users SET name = email WHERE name IS NULL")', ()),
    ('op.execute("ALTER TABLE users ADD COLUMN note text")', ()),
    ('op.execute("ALTER TABLE users ALTER COLUMN note SET DEFAULT \'\'")', ()),
    ('with op.batch_alter_table("users") as batch_op:\n    batch_op.add_column(sa.Column("x", sa.Integer()))', ()),
    # breaking: the old code's requests would fail during the overlap
    ('op.add_column("users", sa.Column("n", sa.Integer(), nullable=False))', ("add NOT NULL column n without a server default",)),
    ('op.drop_column("users", "bio")', ("drop column users.bio",)),
    ('op.drop_table("tags")', ("drop table tags",)),
    ('op.rename_table("tags", "labels")', ("rename table tags",)),
    ('op.alter_column("users", "mail", new_column_name="email")', ("rename column mail",)),
    ('op.alter_column("users", "age", type_=sa.BigInteger())', ("change the type of column age",)),
    ('op.alter_column("users", "name", nullable=False)', ("make column name NOT NULL",)),
    ('with op.batch_alter_table("users") as batch_op:\n    batch_op.alter_column("mail", new_column_name="email")',
     ("rename column mail",)),
    ('op.create_unique_constraint("uq_email", "users", ["email"])', ("create unique constraint",)),
    ('op.execute("ALTER TABLE users ALTER COLUMN name SET NOT NULL")', ("execute ALTER TABLE users ALTER COLUMN name SET NOT NULL",)),
    ('op.execute("ALTER TABLE users ADD COLUMN n int NOT NULL")', ("execute ALTER TABLE users ADD COLUMN n int NOT NULL",)),
    ('op.execute("ALTER TABLE users RENAME TO people")', ("execute ALTER TABLE users RENAME TO people",)),
    ('op.execute(sql)', ("execute SQL that cannot be read",)),
]


@pytest.mark.parametrize(("upgrade", "expected"), FORMS)
def test_what_breaks_the_code_that_runs_during_the_overlap(upgrade: str, expected: tuple[str, ...]) -> None:
    source = revision_source(A, None, "change", upgrade, "pass")
    info = scripts_from_sources({"versions/a.py": source}, location="test").get(A)
    assert info is not None
    assert info.upgrade_breaking_ops == expected


def test_a_downgrade_that_drops_what_the_new_code_reads_breaks_it() -> None:
    source = revision_source(A, None, "add bio", 'op.add_column("users", sa.Column("bio", sa.Text()))',
                             'op.drop_column("users", "bio")')
    info = scripts_from_sources({"versions/a.py": source}, location="test").get(A)
    assert info is not None and info.upgrade_breaking_ops == () and info.downgrade_breaking_ops == ("drop column users.bio",)


def _pending(upgrade: str):  # noqa: ANN202
    from deployer.db.migrations import upgrade_path

    scripts = scripts_from_sources({"versions/a.py": revision_source(A, None, "change", upgrade, "pass")}, location="test")
    return upgrade_path(scripts, None)


def test_additive_migrations_overlap_and_breaking_ones_pause() -> None:
    additive = swap_mode(_pending('op.add_column("users", sa.Column("bio", sa.Text()))'))
    assert additive.mode == "overlap" and additive.describe() == "overlap: the pending migrations are additive"
    breaking = swap_mode(_pending('op.drop_column("users", "bio")'))
    assert breaking.mode == "pause"
    assert breaking.describe() == f"pause: {A[:12]} (change): drop column users.bio"
    assert swap_mode([]).mode == "overlap"


def test_the_setting_wins_and_says_so() -> None:
    forced = swap_mode(_pending('op.drop_column("users", "bio")'), "overlap")
    assert forced.mode == "overlap" and "although" in forced.describe() and "drop column users.bio" in forced.describe()
    assert swap_mode([], "pause").describe() == "pause: set by configuration"
    with pytest.raises(ValueError, match="unknown swap mode"):
        swap_mode([], "sometimes")
