"""notes can be starred

Revision ID: 10770e000002
Revises: 10770e000001
"""
from alembic import op
import sqlalchemy as sa

revision = "10770e000002"
down_revision = "10770e000001"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("notes", sa.Column("starred", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade():
    with op.batch_alter_table("notes") as batch:
        batch.drop_column("starred")
