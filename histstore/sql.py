"""`histstore sql`: run a user's SQL on the catalog.

Read-only by default: the catalog is opened in DuckDB's read-only mode inside its sandbox
(Store.read: no file access at all - no COPY TO, EXPORT DATABASE, ATTACH, INSTALL/LOAD,
read_csv/read_parquet of files - and settings locked so SET cannot undo it), so the engine
itself refuses anything but reading the catalog. Result files are written by the CLI's
--output. With write=True the statements run with DuckDB's full power in one transaction that
is rolled back whole if any statement fails.
"""
from __future__ import annotations

import pyarrow as pa
import sqlalchemy as sa

from histstore.catalog.bulk import duckdb_connection, fetch_arrow
from histstore.errors import InvalidInput, ReadOnlyViolation, SQLError
from histstore.store import Store

_READ_ONLY_MARKERS = ("read-only mode", "read only mode", "attached in read-only")
_SANDBOX_MARKERS = ("disabled by configuration", "disabled through configuration",
                    "configuration has been locked")


def _one_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # DuckDB puts a caret diagram under parser errors; the first line says it all, the
    # LINE n: part helps locate it.
    keep = [ln for ln in lines if not set(ln) <= {"^", " "}]
    return " ".join(keep[:2]) if keep else type(exc).__name__


def run_sql(store: Store, query: str, write: bool = False) -> pa.Table | None:
    """Run one or more statements; return the last statement's rows (None when it returns none)."""
    if not query or not query.strip():
        raise InvalidInput("no SQL given", hint="pass a query, -f FILE, or pipe SQL on stdin")
    context = store.write() if write else store.read()
    with context as conn:
        raw = duckdb_connection(conn)
        try:
            table = fetch_arrow(raw.execute(query))
        except Exception as exc:  # DuckDB raises many classes; all become one line
            msg = _one_line(exc)
            if not write and any(m in msg for m in _READ_ONLY_MARKERS):
                raise ReadOnlyViolation(
                    "refused: this statement writes to the catalog and `histstore sql` is "
                    "read-only", hint="add --write to allow changes") from None
            if not write and any(m in msg for m in _SANDBOX_MARKERS):
                raise ReadOnlyViolation(
                    "refused: without --write `histstore sql` reads the catalog and nothing else "
                    f"(no files, extensions or settings): {msg}",
                    hint="write query results with --output FILE; --write allows everything") from None
            raise SQLError(msg) from None
    return table


def table_names(conn: sa.Connection) -> list[str]:
    rows = conn.exec_driver_sql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
        "ORDER BY table_name").all()
    return [r[0] for r in rows]
