"""index the open tasks

Revision ID: 7a5c00000002
Revises: 7a5c00000001
"""
from alembic import op
import sqlalchemy as sa

revision = "7a5c00000002"
down_revision = "7a5c00000001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_tasks_done", "tasks", ["done"])


def downgrade():
    op.drop_index("ix_tasks_done", table_name="tasks")
