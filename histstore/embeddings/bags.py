"""Reading embeddings back: each slide's whole matrix at once, with its tile ids.

This is what training and export read. Arrays are read whole (one read per chunk) and checked
against the catalog's row count; a slide without an array in the set is an error naming it.
`bag_index` (the catalog half: a short read) gives what training needs without reading any
feature: each slide's tile ids and length; `index.reader(store)(i)` reads one bag in its stored
dtype (training's bag sources call it per bag, mil/bag_source.py) with no catalog connection
held. `read_bags` / `load_bags` read every bag at once (export, tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
    """Slides of one embedding set, in order: their tile ids (row i = tile idx i) and lengths;
    `read(i)` reads bag i's features in the stored dtype (float16 by default)."""

    slide_ids: list[str]
    tile_ids: list[np.ndarray]
    lengths: np.ndarray  # [n] int64
    dim: int
    dtype: str
    zarr_path: str  # the set's folder, relative to the store
    set_name: str

    def __len__(self) -> int:
        return len(self.slide_ids)

    @property
    def nbytes(self) -> int:
        """The features of every bag, in the stored dtype."""
        return int(self.lengths.sum()) * self.dim * np.dtype(self.dtype).itemsize

    def reader(self, store: Store) -> Callable[[int], np.ndarray]:
        """read(i): bag i's features [N_i, D] in the stored dtype, shape checked."""
        set_dir = store.resolve(self.zarr_path)
        return lambda i: self.read(set_dir, i)

    def read(self, set_dir: Path, i: int) -> np.ndarray:
        sid = self.slide_ids[i]
        feats = arrays.read_array(set_dir, sid)
        if feats.shape != (int(self.lengths[i]), self.dim):
            raise HiststoreError(f"embedding array of {sid} in set {self.set_name!r} has shape "
                                 f"{feats.shape} but its tiling has {int(self.lengths[i])} tiles of "
                                 f"dim {self.dim}: the store is inconsistent")
        return feats

    def positions(self, slide_ids: list[str]) -> np.ndarray:
        where = {s: i for i, s in enumerate(self.slide_ids)}
        missing = [s for s in slide_ids if s not in where]
        if missing:
            raise HiststoreError(f"{len(missing)} slides are not in this bag index: {missing[0]} ...")
        return np.asarray([where[s] for s in slide_ids], dtype=np.int64)

    def subset(self, slide_ids: list[str]) -> "BagIndex":
        """These slides (in this order) without copying any tile ids."""
        pos = self.positions(slide_ids)
        return BagIndex([self.slide_ids[i] for i in pos], [self.tile_ids[i] for i in pos],
                        self.lengths[pos], self.dim, self.dtype, self.zarr_path, self.set_name)


def bag_index(conn: sa.Connection, info: EmbeddingSetInfo, slide_ids: list[str]) -> BagIndex:
    """The bags of these slides, in this order, from the catalog alone (no feature is read).
    Raises MissingStep naming slides without arrays, HiststoreError where an array's row count
    disagrees with its tiling."""
    missing = missing_slides(conn, info, slide_ids)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MissingStep(f"{len(missing)} of {len(slide_ids)} slides have no array in embedding set "
                          f"{info.name!r}: {shown}",
                          hint=f"run `histstore embed` for them (set {info.name})")
    # per slide: rows of its array and its tiling's tiles (idx must run 0..n-1); then the tile
    # ids alone, in slide and idx order (no per-tile slide id: 7M tiles stay 56 MB)
    per_slide = query_numpy(conn,
        "SELECT a.slide_id, any_value(a.n_rows) AS n_rows, count(t.tile_id) AS n_tiles, "
        "coalesce(min(t.idx) = 0 AND max(t.idx) = count(t.tile_id) - 1 "
        "AND count(DISTINCT t.idx) = count(t.tile_id), true) AS dense FROM embedding_arrays a "
        "LEFT JOIN tiles t ON t.tiling_id = a.tiling_id "
        "WHERE a.embedding_set_id = $1 AND a.slide_id IN (SELECT unnest($2::VARCHAR[])) "
        "GROUP BY a.slide_id ORDER BY a.slide_id", [info.embedding_set_id, list(slide_ids)])
    tiles = query_numpy(conn,
        "SELECT t.tile_id FROM embedding_arrays a JOIN tiles t ON t.tiling_id = a.tiling_id "
        "WHERE a.embedding_set_id = $1 AND a.slide_id IN (SELECT unnest($2::VARCHAR[])) "
        "ORDER BY a.slide_id, t.idx", [info.embedding_set_id, list(slide_ids)])["tile_id"].astype(np.int64)
    counts = per_slide["n_tiles"].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    where = {str(sid): k for k, sid in enumerate(per_slide["slide_id"].tolist())}
    tile_ids, lengths = [], []
    for sid in slide_ids:
        k = where[sid]
        n_rows, n_tiles = int(per_slide["n_rows"][k]), int(counts[k])
        if n_rows != n_tiles or not bool(per_slide["dense"][k]):
            raise HiststoreError(f"embedding array of {sid} in set {info.name!r} has {n_rows} rows "
                                 f"but its tiling has {n_tiles} tiles: the store is inconsistent")
        tile_ids.append(tiles[starts[k]:starts[k] + n_tiles])
        lengths.append(n_tiles)
    return BagIndex(list(slide_ids), tile_ids, np.asarray(lengths, dtype=np.int64), int(info.dim),
                    str(info.dtype), info.zarr_path, info.name)


def read_bags(store: Store, info: EmbeddingSetInfo, index: BagIndex, dtype=np.float32) -> list[Bag]:
    """Every bag of the index (made from `info`), read now (as `dtype`): the zarr half of
    load_bags, no catalog connection held."""
    read = index.reader(store)
    return [Bag(sid, read(i).astype(dtype, copy=False), index.tile_ids[i])
            for i, sid in enumerate(index.slide_ids)]


def load_bags(store: Store, conn: sa.Connection, info: EmbeddingSetInfo, slide_ids: list[str],
              dtype=np.float32) -> list[Bag]:
    """Bags for the slides, in the given order, every feature read now (as `dtype`). Raises
    MissingStep naming slides without arrays. Reads the arrays while `conn` is open: long jobs
    use bag_index + a reader instead."""
    return read_bags(store, info, bag_index(conn, info, slide_ids), dtype)
