"""Alembic glue: find the migration scripts inside the installed package, upgrade, inspect."""
from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa

from histstore.errors import SchemaMismatch


def _config(connection: sa.Connection | None = None):
    from alembic.config import Config

    import histstore.migrations as pkg

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(pkg.__file__).parent))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.lru_cache(maxsize=1)
def _script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    return _script().get_current_head()


def known_revisions() -> list[str]:
    return [rev.revision for rev in _script().walk_revisions()]


def current_revision(connection: sa.Connection) -> str | None:
    """The catalog's revision, or None for an empty (uninitialised) database."""
    has_table = connection.exec_driver_sql(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'alembic_version'"
    ).scalar()
    if not has_table:
        return None
    return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def upgrade(connection: sa.Connection, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(_config(connection), revision)


def downgrade(connection: sa.Connection, revision: str) -> None:
    from alembic import command

    command.downgrade(_config(connection), revision)


def check_schema(connection: sa.Connection, where: str) -> None:
    """Refuse to work on a catalog whose schema is not the one this code was written for."""
    current = current_revision(connection)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaMismatch(f"{where} has no histstore catalog schema",
                             hint="run `histstore init` first")
    if current not in known_revisions():
        raise SchemaMismatch(
            f"catalog {where} is at schema revision {current}, newer than this histstore "
            f"(knows up to {head})", hint="upgrade histstore to use this store")
    raise SchemaMismatch(
        f"catalog {where} is at schema revision {current}, this histstore needs {head}",
        hint="run `histstore migrate` to upgrade it")
