"""create notes

Revision ID: 10770e000001
Revises: 
"""
from alembic import op
import sqlalchemy as sa

revision = "10770e000001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "notes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("text", sa.Text(), nullable=False),
    )


def downgrade():
    op.drop_table("notes")
