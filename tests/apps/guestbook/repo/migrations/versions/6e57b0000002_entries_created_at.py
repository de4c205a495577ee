"""entries have a creation time

Revision ID: 6e57b0000002
Revises: 6e57b0000001
"""
from alembic import op
import sqlalchemy as sa

revision = "6e57b0000002"
down_revision = "6e57b0000001"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("entries", sa.Column("created_at", sa.DateTime(), nullable=False, server_default=sa.func.now()))


def downgrade():
    op.drop_column("entries", "created_at")
