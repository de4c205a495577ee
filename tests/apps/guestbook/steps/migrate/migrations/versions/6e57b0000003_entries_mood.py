"""entries have a mood

Revision ID: 6e57b0000003
Revises: 6e57b0000002
"""
from alembic import op
import sqlalchemy as sa

revision = "6e57b0000003"
down_revision = "6e57b0000002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("entries", sa.Column("mood", sa.String(length=20), nullable=True))
    op.create_index("ix_entries_mood", "entries", ["mood"])


def downgrade():
    op.drop_index("ix_entries_mood", table_name="entries")
    op.drop_column("entries", "mood")
