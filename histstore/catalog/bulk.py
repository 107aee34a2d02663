"""Bulk reads and writes through DuckDB's own connection.

Rows go in the way DuckDB is fast at: register an Arrow table and run INSERT ... SELECT, never
row-at-a-time executemany. It runs inside the caller's SQLAlchemy transaction, so a failure
rolls back everything.
benchmarks/bench_catalog.py times `insert_frame` against that path called on a bare DuckDB
connection.
"""
from __future__ import annotations

import itertools
import warnings
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

_counter = itertools.count()


def duckdb_connection(conn: sa.Connection):
    """The raw DuckDB connection behind a SQLAlchemy connection (same transaction).

    DuckDB 2.0 refuses new work on a connection whose last result was not read to the end
    (SQLAlchemy's scalar()/first() leave it so); the results of statements already executed
    are not needed, so the pending one is dropped. The transaction is unaffected.
    """
    raw = conn.connection.driver_connection
    raw.abort()
    return raw


def to_arrow(frame: Any) -> pa.Table:
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, Mapping):
        return pa.table({k: (np.asarray(v) if not isinstance(v, (list, pa.Array)) else v)
                         for k, v in frame.items()})
    return pa.Table.from_pandas(frame, preserve_index=False)  # pandas DataFrame


def insert_frame(conn: sa.Connection, table: str, frame: Any) -> int:
    """INSERT the frame's columns (by name) into `table`; omitted columns take defaults."""
    data = to_arrow(frame)
    if data.num_rows == 0:
        return 0
    raw = duckdb_connection(conn)
    view = f"_histstore_frame_{next(_counter)}"
    cols = ", ".join(f'"{c}"' for c in data.column_names)
    raw.register(view, data)
    try:
        raw.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {view}")
    finally:
        raw.unregister(view)
    return data.num_rows


def query_arrow(conn: sa.Connection, sql: str, params: list | tuple | None = None) -> pa.Table:
    """Run SQL ($1-style or ? parameters) and return an Arrow table (fast path for big reads)."""
    raw = duckdb_connection(conn)
    return fetch_arrow(raw.execute(sql, params) if params is not None else raw.execute(sql))


def fetch_arrow(result) -> pa.Table | None:
    """Arrow table of an executed DuckDB result (None for statements without rows).

    DuckDB 2.0 warns that DB-API results copy once more than relations; relations cannot be
    used here because SQLAlchemy leaves a pending result on the same connection.
    """
    if result.description is None:
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")
        return result.to_arrow_table()


def query_numpy(conn: sa.Connection, sql: str, params: list | tuple | None = None) -> dict[str, np.ndarray]:
    raw = duckdb_connection(conn)
    result = raw.execute(sql, params) if params is not None else raw.execute(sql)
    return {k: np.asarray(v) for k, v in result.fetchnumpy().items()}
