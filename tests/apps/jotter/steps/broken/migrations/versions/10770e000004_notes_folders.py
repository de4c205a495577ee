"""notes live in folders (broken: the folders table does not exist)

Revision ID: 10770e000004
Revises: 10770e000003
"""
from alembic import op
import sqlalchemy as sa

revision = "10770e000004"
down_revision = "10770e000003"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("INSERT INTO folders (name) VALUES ('inbox')")
    op.add_column("notes", sa.Column("folder_id", sa.Integer(), nullable=True))


def downgrade():
    with op.batch_alter_table("notes") as batch:
        batch.drop_column("folder_id")
