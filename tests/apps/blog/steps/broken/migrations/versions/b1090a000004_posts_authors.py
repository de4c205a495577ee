"""posts get authors (broken: the table it reads from does not exist)

Revision ID: b1090a000004
Revises: b1090a000003
"""
from alembic import op
import sqlalchemy as sa

revision = "b1090a000004"
down_revision = "b1090a000003"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("posts", sa.Column("author_id", sa.Integer(), nullable=True))
    op.execute("UPDATE posts SET author_id = (SELECT id FROM authors LIMIT 1)")


def downgrade():
    op.drop_column("posts", "author_id")
