"""Create recipes table

Revision ID: 8d2b7c4e6f01
Revises: 3c1f5e2a9b10
Create Date: 2016-10-22 19:48:37.913370

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "8d2b7c4e6f01"
down_revision = "3c1f5e2a9b10"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "recipes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recipe_title", sa.String(), nullable=False),
        sa.Column("recipe_description", sa.String(), nullable=False),
        sa.Column("is_public", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade():
    op.drop_table("recipes")
