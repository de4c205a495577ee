"""create products

Revision ID: 5b0p00000001
Revises: 
"""
from alembic import op
import sqlalchemy as sa

revision = "5b0p00000001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "products",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("price_cents", sa.Integer(), nullable=False),
    )


def downgrade():
    op.drop_table("products")
