"""prices in euros (broken: the exchange_rates table does not exist)

Revision ID: 5b0p00000004
Revises: 5b0p00000003
"""
from alembic import op
import sqlalchemy as sa

revision = "5b0p00000004"
down_revision = "5b0p00000003"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("products", sa.Column("price_eur", sa.Numeric(10, 2), nullable=True))
    op.execute("UPDATE products SET price_eur = price_cents / 100.0 * exchange_rates.rate FROM exchange_rates")


def downgrade():
    op.drop_column("products", "price_eur")
