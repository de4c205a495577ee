"""tasks remember when they were done

Revision ID: 7a5c00000003
Revises: 7a5c00000002
"""
from alembic import op
import sqlalchemy as sa

revision = "7a5c00000003"
down_revision = "7a5c00000002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("tasks", sa.Column("done_at", sa.DateTime(), nullable=True))


def downgrade():
    op.drop_column("tasks", "done_at")
