"""Added inspiration field to the recipe table

Revision ID: 56b6764ae94a
Revises: 8d2b7c4e6f01
Create Date: 2016-10-27 22:40:30.168097

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "56b6764ae94a"
down_revision = "8d2b7c4e6f01"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("recipes", sa.Column("inspiration", sa.String(), nullable=True))


def downgrade():
    op.drop_column("recipes", "inspiration")
