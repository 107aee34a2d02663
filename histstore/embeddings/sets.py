"""Embedding sets in the catalog: find or create one for given settings, register finished
slide arrays, and resolve a set from a user's reference (name or id). No torch here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from histstore.catalog.bulk import query_arrow, query_numpy
from histstore.errors import InvalidInput, NotFound
from histstore.ids import check_id, path_component
from histstore.keys import settings_key
from histstore.provenance import code_version
from histstore.store import EMBEDDINGS_DIR, Store

_COLUMNS = ("embedding_set_id, name, kind, encoder_id, settings_key, tiling_key, tiling_settings, "
            "stain_norm, dim, dtype, zarr_path, settings, status")


@dataclass(frozen=True)
class EmbeddingSetInfo:
    embedding_set_id: int
    name: str
    kind: str
    encoder_id: int | None
    settings_key: str
    tiling_key: str | None
    tiling_settings: Any
    stain_norm: str | None
    dim: int
    dtype: str
    zarr_path: str
    settings: Any
    status: str

    def directory(self, store: Store) -> Path:
        return store.resolve(self.zarr_path)


def _row_to_info(row) -> EmbeddingSetInfo:
    import json

    vals = list(row)
    for i in (6, 11):  # JSON columns come back as text from the raw connection
        if isinstance(vals[i], str):
            vals[i] = json.loads(vals[i])
    return EmbeddingSetInfo(*vals)


def find_set_by_key(conn: sa.Connection, key: str) -> EmbeddingSetInfo | None:
    row = conn.exec_driver_sql(f"SELECT {_COLUMNS} FROM embedding_sets WHERE settings_key = ?",
                               (key,)).first()
    return _row_to_info(row) if row else None


def get_or_create_set(conn: sa.Connection, *, name: str, kind: str, settings: dict, dim: int,
                      dtype: str = "float16", encoder_id: int | None = None,
                      tiling_key: str | None = None, tiling_settings: dict | None = None,
                      stain_norm: str | None = None, source_format: str | None = None,
                      attributes: dict | None = None) -> tuple[EmbeddingSetInfo, bool]:
    """The set whose defining settings equal `settings` (reused), else a new one named `name`."""
    key = settings_key(settings)
    found = find_set_by_key(conn, key)
    if found is not None:
        return found, False
    check_id(name, "embedding set name")
    taken = conn.exec_driver_sql("SELECT count(*) FROM embedding_sets WHERE name = ?", (name,)).scalar()
    if taken:
        raise InvalidInput(f"embedding set {name!r} exists with other settings",
                           hint="choose another --name; sets are never overwritten")
    zarr_path = f"{EMBEDDINGS_DIR}/{path_component(name)}"
    clash = conn.exec_driver_sql("SELECT name FROM embedding_sets WHERE zarr_path = ?", (zarr_path,)).first()
    if clash is not None:  # a set of an older store named so that its folder is the same
        raise InvalidInput(f"embedding set {name!r} would share its folder {zarr_path} with set "
                           f"{clash[0]!r}", hint="choose another --name")
    import json

    conn.exec_driver_sql(
        "INSERT INTO embedding_sets (name, kind, encoder_id, settings_key, tiling_key, tiling_settings, "
        "stain_norm, dim, dtype, zarr_path, settings, source_format, attributes, code_version, status) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')",
        (name, kind, encoder_id, key, tiling_key,
         json.dumps(tiling_settings) if tiling_settings is not None else None, stain_norm, dim, dtype,
         zarr_path, json.dumps(settings), source_format,
         json.dumps(attributes) if attributes is not None else None, code_version()))
    return find_set_by_key(conn, key), True


def set_status(conn: sa.Connection, embedding_set_id: int, status: str) -> None:
    conn.exec_driver_sql(
        "UPDATE embedding_sets SET status = ?, finished_at = CASE WHEN ? = 'complete' "
        "THEN current_timestamp ELSE finished_at END WHERE embedding_set_id = ?",
        (status, status, embedding_set_id))


def register_array(conn: sa.Connection, info: EmbeddingSetInfo, slide_id: str, tiling_id: int,
                   n_rows: int, checksum: str) -> None:
    conn.exec_driver_sql(
        "INSERT INTO embedding_arrays (embedding_set_id, slide_id, tiling_id, n_rows, dim, status, checksum) "
        "VALUES (?, ?, ?, ?, ?, 'complete', ?)",
        (info.embedding_set_id, slide_id, tiling_id, n_rows, info.dim, checksum))


def finished_slides(conn: sa.Connection, embedding_set_id: int) -> set[str]:
    return set(query_numpy(conn, "SELECT slide_id FROM embedding_arrays WHERE embedding_set_id = $1",
                           [embedding_set_id])["slide_id"].tolist())


def resolve_set(conn: sa.Connection, ref: str | int) -> EmbeddingSetInfo:
    ref_s = str(ref)
    if ref_s.isdigit():
        row = conn.exec_driver_sql(f"SELECT {_COLUMNS} FROM embedding_sets WHERE embedding_set_id = ?",
                                   (int(ref_s),)).first()
    else:
        row = conn.exec_driver_sql(f"SELECT {_COLUMNS} FROM embedding_sets WHERE name = ?", (ref_s,)).first()
    if row is None:
        names = [r[0] for r in conn.exec_driver_sql("SELECT name FROM embedding_sets ORDER BY 1").all()]
        raise NotFound(f"no embedding set {ref_s!r}" + (f" (sets: {', '.join(names)})" if names else ""),
                       hint="run `histstore embed` or `histstore features import` first")
    return _row_to_info(row)


def sets_covering(conn: sa.Connection, slide_ids: list[str]) -> list[tuple[EmbeddingSetInfo, int]]:
    """Embedding sets holding arrays for any of these slides, with how many they hold."""
    rows = conn.exec_driver_sql(
        f"SELECT {', '.join('e.' + c.strip() for c in _COLUMNS.split(','))}, count(*) AS n "
        "FROM embedding_sets e JOIN embedding_arrays a USING (embedding_set_id) "
        "WHERE a.slide_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY ALL ORDER BY e.embedding_set_id",
        (slide_ids,)).all()
    return [(_row_to_info(r[:-1]), r[-1]) for r in rows]


def list_sets(store: Store):
    with store.read() as conn:
        return query_arrow(conn,
            "SELECT e.embedding_set_id AS id, e.name, e.kind, coalesce(n.name, e.source_format) AS encoder, "
            "e.dim, e.dtype, e.stain_norm, e.status, count(a.slide_id) AS n_slides, "
            "coalesce(sum(a.n_rows), 0) AS n_tiles, e.created_at "
            "FROM embedding_sets e LEFT JOIN encoders n USING (encoder_id) "
            "LEFT JOIN embedding_arrays a USING (embedding_set_id) GROUP BY ALL ORDER BY 1")
