"""create tasks

Revision ID: 7a5c00000001
Revises: 
"""
from alembic import op
import sqlalchemy as sa

revision = "7a5c00000001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade():
    op.drop_table("tasks")
