"""Reading embeddings back: each slide's whole matrix at once, with its tile ids.

This is what training and export read. Arrays are read whole (one read per chunk) and checked
against the catalog's row count; a slide without an array in the set is an error naming it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from histstore.catalog.bulk import query_numpy
from histstore.embeddings import arrays
from histstore.embeddings.sets import EmbeddingSetInfo
from histstore.errors import HiststoreError, MissingStep
from histstore.store import Store


@dataclass
class Bag:
    slide_id: str
    features: np.ndarray  # [n_tiles, dim]
    tile_ids: np.ndarray  # [n_tiles] int64, row i = tile with idx i


def missing_slides(conn: sa.Connection, info: EmbeddingSetInfo, slide_ids: list[str]) -> list[str]:
    have = set(query_numpy(conn,
        "SELECT slide_id FROM embedding_arrays WHERE embedding_set_id = $1 AND status = 'complete'",
        [info.embedding_set_id])["slide_id"].tolist())
    return [s for s in slide_ids if s not in have]


def load_bags(store: Store, conn: sa.Connection, info: EmbeddingSetInfo, slide_ids: list[str],
              dtype=np.float32) -> list[Bag]:
    """Bags for the slides, in the given order. Raises MissingStep naming slides without arrays."""
    missing = missing_slides(conn, info, slide_ids)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MissingStep(f"{len(missing)} of {len(slide_ids)} slides have no array in embedding set "
                          f"{info.name!r}: {shown}",
                          hint=f"run `histstore embed` for them (set {info.name})")
    rows = query_numpy(conn,
        "SELECT a.slide_id, a.n_rows, t.tile_id, t.idx FROM embedding_arrays a "
        "JOIN tiles t ON t.tiling_id = a.tiling_id "
        "WHERE a.embedding_set_id = $1 AND a.slide_id IN (SELECT unnest($2::VARCHAR[])) "
        "ORDER BY a.slide_id, t.idx", [info.embedding_set_id, list(slide_ids)])
    sids = rows["slide_id"].astype(object)
    bounds = {}
    if len(sids):
        change = np.flatnonzero(sids[1:] != sids[:-1]) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [len(sids)]])
        bounds = {sids[s]: (s, e) for s, e in zip(starts, ends)}
    set_dir = info.directory(store)
    bags = []
    for sid in slide_ids:
        feats = arrays.read_array(set_dir, sid)
        s, e = bounds.get(sid, (0, 0))
        tile_ids = rows["tile_id"][s:e].astype(np.int64)
        if feats.shape[0] != len(tile_ids) or not np.array_equal(rows["idx"][s:e], np.arange(e - s)):
            raise HiststoreError(f"embedding array of {sid} in set {info.name!r} has {feats.shape[0]} rows "
                                 f"but its tiling has {len(tile_ids)} tiles: the store is inconsistent")
        bags.append(Bag(sid, feats.astype(dtype, copy=False), tile_ids))
    return bags
