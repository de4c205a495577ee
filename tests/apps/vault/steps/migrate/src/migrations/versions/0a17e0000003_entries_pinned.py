"""entries can be pinned

Revision ID: 0a17e0000003
Revises: 0a17e0000002
"""
from alembic import op
import sqlalchemy as sa

revision = "0a17e0000003"
down_revision = "0a17e0000002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("entries", sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade():
    op.drop_column("entries", "pinned")
