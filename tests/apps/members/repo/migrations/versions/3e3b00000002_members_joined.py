"""members have a joining date

Revision ID: 3e3b00000002
Revises: 3e3b00000001
"""
from alembic import op
import sqlalchemy as sa

revision = "3e3b00000002"
down_revision = "3e3b00000001"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("members", sa.Column("joined", sa.Date(), nullable=False, server_default=sa.func.current_date()))


def downgrade():
    op.drop_column("members", "joined")
