"""labels are unique (broken: two entries share a label)

Revision ID: 0a17e0000004
Revises: 0a17e0000003
"""
from alembic import op
import sqlalchemy as sa

revision = "0a17e0000004"
down_revision = "0a17e0000003"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("INSERT INTO entries (label, note) SELECT label, note FROM entries")
    op.create_unique_constraint("uq_entries_label", "entries", ["label"])


def downgrade():
    op.drop_constraint("uq_entries_label", "entries", type_="unique")
