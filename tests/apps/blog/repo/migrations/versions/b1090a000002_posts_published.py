"""posts have a publication time

Revision ID: b1090a000002
Revises: b1090a000001
"""
from alembic import op
import sqlalchemy as sa

revision = "b1090a000002"
down_revision = "b1090a000001"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("posts", sa.Column("published", sa.DateTime(), nullable=False, server_default=sa.func.now()))


def downgrade():
    op.drop_column("posts", "published")
