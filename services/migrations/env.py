"""Alembic environment: the URL comes from the caller (services.store.migrate), the models from services.store."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from services.store import Base

config = context.config


def run() -> None:
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
