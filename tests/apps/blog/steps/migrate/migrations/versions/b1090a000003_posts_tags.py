"""posts have tags

Revision ID: b1090a000003
Revises: b1090a000002
"""
from alembic import op
import sqlalchemy as sa

revision = "b1090a000003"
down_revision = "b1090a000002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("posts", sa.Column("tags", sa.String(length=200), nullable=True))


def downgrade():
    op.drop_column("posts", "tags")
