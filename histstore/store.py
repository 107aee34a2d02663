"""The store: one folder holding the catalog, the embedding arrays, checkpoints and artifacts.

    <store>/catalog.duckdb      DuckDB catalog (schema managed by Alembic migrations)
    <store>/embeddings.zarr/    zarr v3 group: <embedding set>/<slide_id> arrays [n_tiles, dim]
    <store>/checkpoints/        encoder and MIL checkpoints
    <store>/artifacts/          QC thumbnails, heatmaps, reports

One process may write the catalog at a time (DuckDB's file lock). Connections are opened per
command with NullPool, so the lock is released as soon as the command's work is done.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from histstore.errors import HiststoreError, StoreLocked, StoreNotFound

CATALOG_FILE = "catalog.duckdb"
EMBEDDINGS_DIR = "embeddings.zarr"
CHECKPOINTS_DIR = "checkpoints"
ARTIFACTS_DIR = "artifacts"
DEFAULT_STORE = "histstore-store"

_LOCK_PATTERN = re.compile(r"Conflicting lock is held in (?P<proc>.+?) \(PID (?P<pid>\d+)\)")


def default_store_path() -> Path:
    return Path(os.environ.get("HISTSTORE_STORE", DEFAULT_STORE))


@dataclass(frozen=True)
class Store:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).expanduser().absolute())

    # -- layout -----------------------------------------------------------------------------
    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG_FILE

    @property
    def embeddings_path(self) -> Path:
        return self.root / EMBEDDINGS_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def artifacts_dir(self) -> Path:
        return self.root / ARTIFACTS_DIR

    def exists(self) -> bool:
        return self.catalog_path.is_file()

    def relative(self, path: Path | str) -> str:
        """Paths inside the store are recorded relative to it, so a store can be moved."""
        p = Path(path).absolute()
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)

    def resolve(self, recorded: str) -> Path:
        p = Path(recorded)
        return p if p.is_absolute() else self.root / p

    # -- lifecycle --------------------------------------------------------------------------
    @classmethod
    def init(cls, root: Path | str) -> tuple["Store", bool]:
        """Create the layout and the catalog at the newest schema. Harmless on an existing
        store (returns created=False and changes nothing in the catalog)."""
        from histstore.catalog import migrate

        store = cls(Path(root))
        if store.root.exists() and not store.root.is_dir():
            raise HiststoreError(f"{store.root} exists and is not a folder")
        created = not store.exists()
        for d in (store.root, store.embeddings_path, store.checkpoints_dir, store.artifacts_dir):
            d.mkdir(parents=True, exist_ok=True)
        with store._connect(read_only=False) as conn:
            current = migrate.current_revision(conn)
            conn.commit()
            if current is None:
                with conn.begin():
                    migrate.upgrade(conn, "head")
                created = True
            else:
                migrate.check_schema(conn, str(store.root))
        return store, created

    @classmethod
    def open(cls, root: Path | str | None = None) -> "Store":
        store = cls(Path(root) if root is not None else default_store_path())
        if not store.exists():
            raise StoreNotFound(f"no histstore store at {store.root}",
                                hint=f"run `histstore --store {store.root} init` first")
        return store

    # -- connections ------------------------------------------------------------------------
    def _engine(self, read_only: bool) -> sa.Engine:
        args = {"read_only": True} if read_only else {}
        return sa.create_engine(f"duckdb:///{self.catalog_path}", poolclass=NullPool,
                                connect_args=args)

    @contextmanager
    def _connect(self, read_only: bool) -> Iterator[sa.Connection]:
        engine = self._engine(read_only)
        try:
            try:
                conn = engine.connect()
            except sa.exc.DBAPIError as exc:
                raise self._translate_open_error(exc) from None
            try:
                yield conn
            finally:
                conn.close()
        finally:
            engine.dispose()

    def _translate_open_error(self, exc: sa.exc.DBAPIError) -> HiststoreError:
        text = str(exc.orig) if exc.orig is not None else str(exc)
        m = _LOCK_PATTERN.search(text)
        if m:
            return StoreLocked(
                f"store {self.root} is locked by another process "
                f"(PID {m['pid']}: {m['proc']})",
                hint="wait for that command to finish; only one process may write a store")
        if "different configuration" in text:
            return StoreLocked(f"store {self.root} is already open for writing in this process")
        return HiststoreError(f"cannot open catalog {self.catalog_path}: {text.splitlines()[0]}")

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A read-only connection; several processes may read at once when nobody writes."""
        from histstore.catalog.migrate import check_schema

        with self._connect(read_only=True) as conn:
            check_schema(conn, str(self.root))
            yield conn

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A read-write connection inside ONE transaction: committed when the block ends,
        rolled back whole when it raises."""
        from histstore.catalog.migrate import check_schema

        with self._connect(read_only=False) as conn:
            check_schema(conn, str(self.root))
            conn.commit()
            with conn.begin():
                yield conn

    @contextmanager
    def writer(self) -> Iterator[sa.Connection]:
        """A read-write connection held for a long job that commits in several transactions
        (`with conn.begin(): ...` per unit of work), keeping the write lock throughout."""
        from histstore.catalog.migrate import check_schema

        with self._connect(read_only=False) as conn:
            check_schema(conn, str(self.root))
            conn.commit()
            yield conn

    @contextmanager
    def admin(self) -> Iterator[sa.Connection]:
        """A connection with no schema check, for migrations."""
        with self._connect(read_only=False) as conn:
            yield conn

    def size_bytes(self) -> int:
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(dirpath, f))
                except OSError:
                    pass
        return total


@contextmanager
def transaction(conn: sa.Connection) -> Iterator[sa.Connection]:
    """One explicit transaction on a long-lived writer connection (see Store.writer): ends the
    implicit transaction that earlier reads opened, then commits this unit of work whole or
    rolls it back whole."""
    if conn.in_transaction():
        conn.commit()
    with conn.begin():
        yield conn
