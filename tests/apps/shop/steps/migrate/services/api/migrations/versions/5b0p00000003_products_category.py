"""products have a category

Revision ID: 5b0p00000003
Revises: 5b0p00000002
"""
from alembic import op
import sqlalchemy as sa

revision = "5b0p00000003"
down_revision = "5b0p00000002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("products", sa.Column("category", sa.String(length=60), nullable=True))


def downgrade():
    op.drop_column("products", "category")
