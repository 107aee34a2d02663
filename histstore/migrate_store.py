"""`histstore migrate`: move a store's catalog to another schema revision."""
from __future__ import annotations

from histstore.catalog import migrate
from histstore.errors import InvalidInput
from histstore.store import Store


def revisions(store: Store) -> tuple[str | None, str]:
    with store.admin() as conn:
        return migrate.current_revision(conn), migrate.head_revision()


def migrate_store(store: Store, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade (or downgrade to an older revision) in one transaction. Returns (before, after)."""
    known = migrate.known_revisions()
    if revision not in ("head", "base") and revision not in known:
        raise InvalidInput(f"unknown schema revision {revision!r}; known: {', '.join(known)}")
    with store.admin() as conn:
        before = migrate.current_revision(conn)
        conn.commit()
        with conn.begin():
            if revision == "head" or (before is None) or (revision in known and
                                                          known.index(revision) <= known.index(before)):
                migrate.upgrade(conn, revision)
            else:
                migrate.downgrade(conn, revision)
        after = migrate.current_revision(conn)
        conn.commit()
    return before, after
