"""entries get a rating (broken: its second statement names a column that does not exist)

On MariaDB the first statement is committed before the second fails: the column stays,
while alembic_version still says 6e57b0000003.

Revision ID: 6e57b0000004
Revises: 6e57b0000003
"""
from alembic import op
import sqlalchemy as sa

revision = "6e57b0000004"
down_revision = "6e57b0000003"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("entries", sa.Column("rating", sa.Integer(), nullable=True))
    op.create_index("ix_entries_rating", "entries", ["no_such_column"])


def downgrade():
    op.drop_index("ix_entries_rating", table_name="entries")
    op.drop_column("entries", "rating")
