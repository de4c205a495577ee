"""products have a stock count

Revision ID: 5b0p00000002
Revises: 5b0p00000001
"""
from alembic import op
import sqlalchemy as sa

revision = "5b0p00000002"
down_revision = "5b0p00000001"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("products", sa.Column("stock", sa.Integer(), nullable=False, server_default="0"))


def downgrade():
    op.drop_column("products", "stock")
