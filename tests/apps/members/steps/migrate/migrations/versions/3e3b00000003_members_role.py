"""members have a role

Revision ID: 3e3b00000003
Revises: 3e3b00000002
"""
from alembic import op
import sqlalchemy as sa

revision = "3e3b00000003"
down_revision = "3e3b00000002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("members", sa.Column("role", sa.String(length=20), nullable=False, server_default="member"))


def downgrade():
    op.drop_column("members", "role")
