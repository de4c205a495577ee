"""create posts

Revision ID: b1090a000001
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "b1090a000001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "posts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
    )


def downgrade():
    op.drop_table("posts")
