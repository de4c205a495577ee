"""create entries

Revision ID: 0a17e0000001
Revises: 
"""
from alembic import op
import sqlalchemy as sa

revision = "0a17e0000001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "entries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
    )


def downgrade():
    op.drop_table("entries")
