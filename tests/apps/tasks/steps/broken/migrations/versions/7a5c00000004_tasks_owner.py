"""tasks belong to users (broken: there is no users table)

Revision ID: 7a5c00000004
Revises: 7a5c00000003
"""
from alembic import op
import sqlalchemy as sa

revision = "7a5c00000004"
down_revision = "7a5c00000003"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("tasks", sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=True))


def downgrade():
    op.drop_column("tasks", "owner_id")
