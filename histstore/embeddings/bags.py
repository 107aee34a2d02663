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


@dataclass
class BagIndex:
    """What the catalog says about a set of bags: tile ids per slide, in idx order."""
    slide_ids: list[str]
    tile_ids: dict[str, np.ndarray]
    idx_ok: dict[str, bool]


def bag_index(conn: sa.Connection, info: EmbeddingSetInfo, slide_ids: list[str]) -> BagIndex:
    """The catalog half of load_bags (a short read). Raises MissingStep naming slides without
    arrays."""
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
    tile_ids, idx_ok = {}, {}
    for sid in slide_ids:
        s, e = bounds.get(sid, (0, 0))
        tile_ids[sid] = rows["tile_id"][s:e].astype(np.int64)
        idx_ok[sid] = bool(np.array_equal(rows["idx"][s:e], np.arange(e - s)))
    return BagIndex(list(slide_ids), tile_ids, idx_ok)


def read_bags(store: Store, info: EmbeddingSetInfo, index: BagIndex, dtype=np.float32) -> list[Bag]:
    """The zarr half of load_bags: no catalog connection is held while arrays are read."""
    set_dir = info.directory(store)
    bags = []
    for sid in index.slide_ids:
        feats = arrays.read_array(set_dir, sid)
        tile_ids = index.tile_ids[sid]
        if feats.shape[0] != len(tile_ids) or not index.idx_ok[sid]:
            raise HiststoreError(f"embedding array of {sid} in set {info.name!r} has {feats.shape[0]} rows "
                                 f"but its tiling has {len(tile_ids)} tiles: the store is inconsistent")
        bags.append(Bag(sid, feats.astype(dtype, copy=False), tile_ids))
    return bags


def load_bags(store: Store, conn: sa.Connection, info: EmbeddingSetInfo, slide_ids: list[str],
              dtype=np.float32) -> list[Bag]:
    """Bags for the slides, in the given order. Raises MissingStep naming slides without arrays.
    Reads the arrays while `conn` is open: long jobs use bag_index + read_bags instead."""
    return read_bags(store, info, bag_index(conn, info, slide_ids), dtype)
