"""Runs carry a row version that every change of a run compares and bumps, so that a status change made on a stale
read (the reconciler's, a cancel's, a retry's) fails instead of overwriting the other; and the time of a run's last
progress, so that a run that makes none is failed and frees its slot. Stored schedule templates without both
vanilla and myopic (allowed before sweeps had to make pairs) are marked `unpaired`, so they still fire

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schedules = sa.table("schedules", sa.column("id", sa.String), sa.column("template", sa.JSON))
    connection = op.get_bind()
    for row in connection.execute(sa.select(schedules.c.id, schedules.c.template)).all():
        template = dict(row.template or {})
        arms = template.get("arms", ["vanilla", "myopic"])
        if not {"vanilla", "myopic"} <= set(arms) and not template.get("unpaired"):
            template["unpaired"] = True
            connection.execute(schedules.update().where(schedules.c.id == row.id).values(template=template))
    with op.batch_alter_table("runs") as batch:  # batch: SQLite cannot alter tables in place
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("progress_at")
        batch.drop_column("version")
