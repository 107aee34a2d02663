"""Matching imported tile corners to a slide's tilings: an existing tiling with exactly these
corners and tile size is reused (grid tilings first); otherwise a new `imported` tiling is
inserted with the file's corners. Also registers slides known only by their features."""
from __future__ import annotations

import json

import numpy as np
import sqlalchemy as sa

from histstore.catalog.bulk import insert_frame, query_numpy
from histstore.interop import checks, formats
from histstore.keys import settings_key
from histstore.store import Store


def level_downsamples(store: Store, slide: dict | None) -> tuple[float, ...] | None:
    if not slide or not slide.get("path"):
        return None
    from histstore.errors import HiststoreError
    from histstore.wsi.reader import open_slide

    try:
        with open_slide(store.resolve(slide["path"])) as r:
            return tuple(r.level_downsamples)
    except HiststoreError:
        return None


def tiling_candidates(conn: sa.Connection, slide_id: str) -> list[tuple]:
    """The slide's tilings a file may match, grid tilings first: (tiling_id, kind, size_l0,
    idx, x, y) - read once by the writer, matched anywhere (a worker)."""
    out = []
    for tiling_id, kind, size_l0 in conn.exec_driver_sql(
            "SELECT tiling_id, kind, size_l0 FROM tilings WHERE slide_id = ? "
            "ORDER BY kind = 'grid' DESC, tiling_id", (slide_id,)).all():
        t = query_numpy(conn, "SELECT idx, x, y FROM tiles WHERE tiling_id = $1", [tiling_id])
        out.append((tiling_id, kind, size_l0, t["idx"], t["x"], t["y"]))
    return out


def match_candidates(candidates: list[tuple], xy: np.ndarray, size_l0: int):
    """(tiling_id, kind, order, None) of an existing tiling of this tile size with exactly these
    corners (grid tilings first), else (None, None, None, note on the closest miss or None)."""
    best = None
    for tiling_id, kind, cand_size, idx, x, y in candidates:
        if cand_size is None or int(cand_size) != int(size_l0):
            continue
        order, n_matched = checks.align_to_tiles(xy, idx, x, y)
        if order is not None:
            return tiling_id, kind, order, None
        if best is None or n_matched > best[1]:
            best = (tiling_id, n_matched, len(idx))
    note = None
    if best is not None and best[1]:
        note = (f"{best[1]} of {len(xy)} corners are tiles of tiling {best[0]} ({best[2]} tiles): "
                "not the same set, so a new imported tiling")
    return None, None, None, note


def insert_imported_tiling(conn: sa.Connection, slide_id: str, xy: np.ndarray, geom: checks.PatchGeometry,
                   fmt: str, ff: formats.FeatureFile, mpp: float | None) -> int:
    defining = {"kind": "imported", "patch_size": geom.patch_size, "patch_level": geom.patch_level,
                "size_l0": geom.size_l0, "coords": checks.coords_digest(xy)}
    key = settings_key(defining)
    settings = {**defining, "source_format": fmt, "source_file": str(ff.path),
                "coords_file": str(ff.coords_path) if ff.coords_path else None,
                "size_l0_from": geom.source, "size_l0_exact": geom.exact, "attributes": ff.attrs}
    target_mpp = (round(mpp * geom.size_l0 / geom.patch_size, 6)
                  if mpp and geom.exact and geom.patch_size else None)
    try:
        overlap = int(float(ff.attrs.get("overlap", 0) or 0))
    except (TypeError, ValueError):
        overlap = 0
    n = len(xy)
    tiling_id = conn.exec_driver_sql(
        "INSERT INTO tilings (slide_id, kind, settings_key, settings, target_mpp, tile_size, overlap, "
        "read_level, read_size, size_l0, n_tiles) VALUES (?, 'imported', ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "RETURNING tiling_id",
        (slide_id, key, json.dumps(settings, default=str), target_mpp, geom.patch_size, overlap,
         geom.patch_level, geom.patch_size, geom.size_l0, n)).scalar()
    insert_frame(conn, "tiles", {
        "tiling_id": np.full(n, tiling_id, np.int64), "slide_id": [slide_id] * n,
        "idx": np.arange(n, dtype=np.int32), "x": xy[:, 0].astype(np.int64),
        "y": xy[:, 1].astype(np.int64), "size_l0": np.full(n, geom.size_l0, np.int32)})
    return tiling_id


def register_slide_without_pixels(conn: sa.Connection, slide_id: str, case_id: str,
                                  case_id_source: str | None) -> None:
    """A slide known only by its features; its case was decided by barcodes.assign_cases."""
    conn.exec_driver_sql("INSERT INTO cases (case_id) VALUES (?) ON CONFLICT DO NOTHING", (case_id,))
    conn.exec_driver_sql("INSERT INTO slides (slide_id, case_id, path, status, case_id_source) "
                         "VALUES (?, ?, NULL, 'registered', ?)", (slide_id, case_id, case_id_source))
