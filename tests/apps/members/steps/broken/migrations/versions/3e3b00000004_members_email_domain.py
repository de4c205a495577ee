"""e-mail addresses must be from the club (broken: existing rows violate it)

Revision ID: 3e3b00000004
Revises: 3e3b00000003
"""
from alembic import op
import sqlalchemy as sa

revision = "3e3b00000004"
down_revision = "3e3b00000003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_check_constraint("ck_members_email_club", "members", "email LIKE '%@club.example'")


def downgrade():
    op.drop_constraint("ck_members_email_club", "members", type_="check")
