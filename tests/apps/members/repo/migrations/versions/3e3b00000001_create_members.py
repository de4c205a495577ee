"""create members

Revision ID: 3e3b00000001
Revises: 
"""
from alembic import op
import sqlalchemy as sa

revision = "3e3b00000001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "members",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False, unique=True),
    )


def downgrade():
    op.drop_table("members")
