"""Retries with backoff (failures, not_before), which runs have a live job, the idempotency key's request hash;
indexes for bounded queries and cursor pages; the readiness probe's heartbeat row

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:  # batch: SQLite cannot alter tables in place
        batch.add_column(sa.Column("failures", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("job_live", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.create_index("ix_runs_job_live", ["job_live"])
        batch.create_index("ix_runs_status_created", ["status", "created_at"])
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch.create_index("ix_sweeps_created_id", ["created_at", "id"])
    op.create_table(
        "heartbeat",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # runs that had a job in flight when this version was installed: the reconciler polls them again
    op.execute("UPDATE runs SET job_live = true WHERE status IN ('submitted', 'running')")


def downgrade() -> None:
    op.drop_table("heartbeat")
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_index("ix_sweeps_created_id")
        batch.drop_column("request_hash")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_status_created")
        batch.drop_index("ix_runs_job_live")
        batch.drop_column("job_live")
        batch.drop_column("not_before")
        batch.drop_column("failures")
