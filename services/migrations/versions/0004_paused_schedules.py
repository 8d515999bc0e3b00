"""Schedules can be paused (kept, not firing) apart from deleted (disabled), and carry a revision that every edit
bumps (a tick that read an older one does not record itself)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedules") as batch:  # batch: SQLite cannot alter tables in place
        batch.add_column(sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("revision")
        batch.drop_column("paused")
