"""Alembic environment for the histstore catalog (DuckDB).

Run through histstore.catalog.migrate, which passes an open connection in
config.attributes["connection"]; there is no alembic.ini and no URL here.
"""
from alembic import context
from alembic.ddl.impl import DefaultImpl


class DuckDBImpl(DefaultImpl):
    """Alembic has no DuckDB dialect implementation; without this it fails with KeyError."""

    __dialect__ = "duckdb"
    transactional_ddl = True


def run_migrations_online() -> None:
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("histstore migrations run online only (histstore migrate)")
run_migrations_online()
