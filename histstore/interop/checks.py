"""Pure checks and geometry for imported features: validate a file's arrays, work out the tile
size in level-0 pixels, and align rows to an existing tiling's tiles.

Every problem raises `FileProblem` with a one-line message; the importer prefixes the file name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from histstore.interop.formats import FileProblem

MAX_SHOWN = 3


def _first(rows: np.ndarray) -> str:
    rows = np.asarray(rows)
    shown = ", ".join(str(int(r)) for r in rows[:MAX_SHOWN])
    return f"row {shown}" + (" ..." if len(rows) > MAX_SHOWN else "")


def check_arrays(features: np.ndarray, coords: np.ndarray, dim: int,
                 width: int | None = None, height: int | None = None) -> np.ndarray:
    """Validate features [N, D] and coords [N, 2]; returns coords as int64.

    Refused: an empty file, a shape other than [N, D] / [N, 2], N differing between the two,
    D differing from the set's `dim`, non-numeric features, NaN or inf values, non-integer
    coords, a corner outside the slide (0 <= x < width, 0 <= y < height, when known) and the
    same corner twice.
    """
    if features.ndim != 2:
        raise FileProblem(f"features must be [N, D], got shape {list(features.shape)}")
    n = features.shape[0]
    if n == 0:
        raise FileProblem("empty: no feature rows")
    if features.dtype.kind not in "fiu":
        raise FileProblem(f"features are {features.dtype}, not numbers")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise FileProblem(f"coords must be [N, 2] (x, y), got shape {list(coords.shape)}")
    if coords.shape[0] != n:
        raise FileProblem(f"features have {n} rows but coords have {coords.shape[0]}")
    if features.shape[1] != dim:
        raise FileProblem(f"feature dim {features.shape[1]} differs from the set's dim {dim}")
    if features.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
        if len(bad):
            raise FileProblem(f"{len(bad)} of {n} rows hold NaN or inf ({_first(bad)})")
    if coords.dtype.kind == "f":
        if not np.isfinite(coords).all() or not np.array_equal(coords, np.round(coords)):
            bad = np.flatnonzero(~np.isfinite(coords).all(axis=1) | (coords != np.round(coords)).any(axis=1))
            raise FileProblem(f"{len(bad)} coords are not whole pixels ({_first(bad)})")
    elif coords.dtype.kind not in "iu":
        raise FileProblem(f"coords are {coords.dtype}, not numbers")
    xy = coords.astype(np.int64)
    outside = (xy < 0).any(axis=1)
    if width is not None and height is not None:
        outside |= (xy[:, 0] >= width) | (xy[:, 1] >= height)
    bad = np.flatnonzero(outside)
    if len(bad):
        size = f" ({width} x {height})" if width is not None and height is not None else ""
        x, y = xy[bad[0]]
        raise FileProblem(f"{len(bad)} coords lie outside the slide{size}: ({x}, {y}) at {_first(bad)}")
    _, first, counts = np.unique(xy, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = xy[first[counts > 1][0]]
        rows = np.flatnonzero((xy == dup).all(axis=1))
        raise FileProblem(f"{int((counts - 1).sum())} duplicate coords: ({dup[0]}, {dup[1]}) at rows "
                          f"{', '.join(map(str, rows[:MAX_SHOWN]))}")
    return xy


@dataclass(frozen=True)
class PatchGeometry:
    """patch_size: pixels at patch_level (None level: TRIDENT's magnification-based patches);
    size_l0: the tile's side in level-0 pixels; source: how size_l0 was found."""
    patch_size: int
    patch_level: int | None
    size_l0: int
    source: str
    exact: bool = True


def _num(v: Any) -> float | None:
    if isinstance(v, (list, tuple)) and v:
        v = v[0]
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _level(v: Any) -> int | None:
    if isinstance(v, (list, tuple)) and v:
        v = v[0]
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f >= 0 and f == int(f) else None


def patch_geometry(attrs: dict[str, Any], patch_size: int | None, patch_level: int | None,
                   level_downsamples: tuple[float, ...] | None) -> PatchGeometry:
    """The tile side in level-0 pixels, from the file's attributes and the command's options.

    Order: TRIDENT's `patch_size_level0`; level 0 -> patch_size; CLAM's `downsample` attribute
    (x `custom_downsample`); the slide's own pyramid (when its file is known); else, inexact,
    the patch size itself. An option that contradicts the file's attribute is refused.
    """
    file_ps, file_pl = attrs.get("patch_size"), attrs.get("patch_level")
    if file_pl is not None and _level(file_pl) is None:
        raise FileProblem(f"the file's patch_level {file_pl!r} is not a level number")
    file_pl = _level(file_pl)
    if patch_size is not None and file_ps is not None and _num(file_ps) != float(patch_size):
        raise FileProblem(f"--patch-size {patch_size} contradicts the file's patch_size {file_ps}")
    if patch_level is not None and file_pl is not None and file_pl != patch_level:
        raise FileProblem(f"--patch-level {patch_level} contradicts the file's patch_level {file_pl}")
    ps = patch_size if patch_size is not None else _num(file_ps)
    psl0 = _num(attrs.get("patch_size_level0"))
    if ps is None and psl0 is None:
        raise FileProblem("no patch size: the file has no patch_size attribute; give --patch-size")
    if ps is None:
        ps = psl0
    ps = int(round(ps))
    if patch_level is not None:
        pl = patch_level
    elif file_pl is not None:
        pl = file_pl
    else:
        pl = None if psl0 is not None else 0
    if psl0 is not None:
        return PatchGeometry(ps, pl, int(round(psl0)), "patch_size_level0 attribute")
    custom = _num(attrs.get("custom_downsample")) or 1.0
    if pl == 0:
        return PatchGeometry(ps, pl, int(round(ps * custom)), "patch level 0")
    ds = _num(attrs.get("downsample"))
    if ds is not None and file_pl is not None:
        return PatchGeometry(ps, pl, int(round(ps * ds * custom)), "downsample attribute")
    if level_downsamples is not None and pl < len(level_downsamples):
        return PatchGeometry(ps, pl, int(round(ps * level_downsamples[pl] * custom)),
                             f"the slide's level-{pl} downsample")
    return PatchGeometry(ps, pl, ps, f"patch size (downsample of level {pl} unknown)", exact=False)


def coords_digest(xy: np.ndarray) -> str:
    """Order-free digest of a set of corners (part of an imported tiling's settings key)."""
    import hashlib

    order = np.lexsort((xy[:, 1], xy[:, 0]))
    return hashlib.blake2b(np.ascontiguousarray(xy[order], dtype="<i8").tobytes(), digest_size=12).hexdigest()


def _keys(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # corners are < 2^31 on any real slide; one int64 per corner makes matching a sort
    return (np.asarray(x, np.int64) << 32) | (np.asarray(y, np.int64) & 0xFFFFFFFF)


def align_to_tiles(xy: np.ndarray, tile_idx: np.ndarray, tile_x: np.ndarray,
                   tile_y: np.ndarray) -> tuple[np.ndarray | None, int]:
    """Match file rows to a tiling's tiles by exact level-0 corner.

    Returns (order, n_matched): `order[i]` is the file row holding tile idx i, so
    `features[order]` is the array in the tiling's row order; order is None unless the file's
    corners and the tiling's are the same set (every tile has exactly one row, every row a tile).
    n_matched counts file rows whose corner is one of the tiling's.
    """
    n_tiles = len(tile_idx)
    keys_t = _keys(tile_x, tile_y)
    keys_f = _keys(xy[:, 0], xy[:, 1])
    sort_t = np.argsort(keys_t, kind="stable")
    pos = np.searchsorted(keys_t[sort_t], keys_f)
    pos_c = np.minimum(pos, max(n_tiles - 1, 0))
    hit = (pos < n_tiles) & (keys_t[sort_t][pos_c] == keys_f) if n_tiles else np.zeros(len(xy), bool)
    n_matched = int(hit.sum())
    if n_matched != len(xy) or len(xy) != n_tiles:
        return None, n_matched
    idx_of_row = np.asarray(tile_idx, np.int64)[sort_t][pos]  # tile idx each file row belongs to
    if not np.array_equal(np.sort(idx_of_row), np.arange(n_tiles)):
        return None, n_matched  # the tiling's idx are not 0..n-1: not a usable tiling
    order = np.empty(n_tiles, np.int64)
    order[idx_of_row] = np.arange(len(xy))
    return order, n_matched
