"""entries have a creation time

Revision ID: 0a17e0000002
Revises: 0a17e0000001
"""
from alembic import op
import sqlalchemy as sa

revision = "0a17e0000002"
down_revision = "0a17e0000001"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("entries", sa.Column("created_at", sa.DateTime(), nullable=False, server_default=sa.func.now()))


def downgrade():
    op.drop_column("entries", "created_at")
