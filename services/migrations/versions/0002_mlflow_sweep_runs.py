"""MLflow runs for sweeps and pairs; runs' progress

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:  # batch: SQLite cannot alter tables in place
        batch.add_column(sa.Column("mlflow_experiment_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("mlflow_reported", sa.String(length=40), nullable=True))
    with op.batch_alter_table("pairs") as batch:
        batch.add_column(sa.Column("mlflow_run_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("mlflow_reported", sa.String(length=40), nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("progress", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("progress")
    with op.batch_alter_table("pairs") as batch:
        batch.drop_column("mlflow_reported")
        batch.drop_column("mlflow_run_id")
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("mlflow_reported")
        batch.drop_column("mlflow_experiment_id")
