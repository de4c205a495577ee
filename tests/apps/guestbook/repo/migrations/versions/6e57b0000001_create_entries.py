"""create entries

Revision ID: 6e57b0000001
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "6e57b0000001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "entries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        mysql_charset="utf8mb4",
    )


def downgrade():
    op.drop_table("entries")
