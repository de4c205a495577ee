"""notes have a colour

Revision ID: 10770e000003
Revises: 10770e000002
"""
from alembic import op
import sqlalchemy as sa

revision = "10770e000003"
down_revision = "10770e000002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("notes", sa.Column("colour", sa.String(length=20), nullable=True))


def downgrade():
    with op.batch_alter_table("notes") as batch:
        batch.drop_column("colour")
