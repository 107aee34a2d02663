"""Attention as pixels: within-slide normalisation, painting tiles onto a thumbnail grid,
blending the colours over the slide, and the thumbnail (or a blank canvas) to blend over.

`paint_tiles` paints all tiles into a low-resolution grid at once (a 2-D difference array,
O(tiles + pixels)), so 20,000 tiles take milliseconds, not one matplotlib patch each. The
thumbnail is read from the pyramid's coarse levels (`SlideReader.thumbnail`), never the
full-resolution level.
"""
from __future__ import annotations

import numpy as np

from histstore.errors import InvalidInput, SlideReadError
from histstore.reports.slide_attention import SlideAttention

NORMS = ("minmax", "percentile")
_NO_FILE_GREY = 250  # blank canvas for slides without an image file


def normalise(score: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Within-slide normalisation to [0, 1]. minmax: (s - min) / (max - min); percentile: the
    tile's rank among the slide's tiles (ties share their mean rank), 0 = least, 1 = most.
    A constant slide (or one tile) maps to 0.5."""
    s = np.asarray(score, np.float64)
    if method not in NORMS:
        raise InvalidInput(f"unknown normalisation {method!r}; choose {' or '.join(NORMS)}")
    if s.size == 0:
        return s
    if method == "percentile":
        from scipy.stats import rankdata

        if s.size == 1:
            return np.full(1, 0.5)
        return (rankdata(s, method="average") - 1.0) / (s.size - 1)
    lo, hi = float(s.min()), float(s.max())
    if not hi > lo:
        return np.full(s.size, 0.5)
    return (s - lo) / (hi - lo)


def paint_tiles(x, y, size, values, scale: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """Paint level-0 boxes [x, x+size)^2 with `values` on an (H, W) grid of `scale` grid px per
    level-0 px; overlapping tiles average. float32 (H, W), NaN where no tile lies.

    Vectorised: each box adds +v / -v at its four corners of a difference array
    (np.bincount), and two cumulative sums integrate it - O(n_tiles + H*W) however many tiles.
    Box edges are rounded to grid px, and every box covers at least one px.
    """
    H, W = int(shape[0]), int(shape[1])
    sx, sy = float(scale[0]), float(scale[1])
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    size = np.broadcast_to(np.asarray(size, np.float64), x.shape)
    v = np.asarray(values, np.float64)
    x0 = np.clip(np.rint(x * sx), 0, W).astype(np.int64)
    y0 = np.clip(np.rint(y * sy), 0, H).astype(np.int64)
    x1 = np.clip(np.maximum(np.rint((x + size) * sx), x0 + 1), 0, W).astype(np.int64)
    y1 = np.clip(np.maximum(np.rint((y + size) * sy), y0 + 1), 0, H).astype(np.int64)
    keep = (x1 > x0) & (y1 > y0)
    x0, x1, y0, y1, v = x0[keep], x1[keep], y0[keep], y1[keep], v[keep]
    W1 = W + 1
    corners = np.concatenate([y0 * W1 + x0, y0 * W1 + x1, y1 * W1 + x0, y1 * W1 + x1])
    sign = np.repeat(np.array([1.0, -1.0, -1.0, 1.0]), v.size)
    n = (H + 1) * W1
    total = np.bincount(corners, weights=sign * np.tile(v, 4), minlength=n).reshape(H + 1, W1)
    count = np.bincount(corners, weights=sign, minlength=n).reshape(H + 1, W1)
    total = total.cumsum(0).cumsum(1)[:H, :W]
    count = count.cumsum(0).cumsum(1)[:H, :W]
    covered = count > 0.5  # integer-valued; float sums leave ~1e-12 residue elsewhere
    out = np.full((H, W), np.nan, np.float32)
    out[covered] = (total[covered] / count[covered]).astype(np.float32)
    return out


def blend(rgb: np.ndarray, heat: np.ndarray, cmap, alpha: float) -> np.ndarray:
    """uint8 (H, W, 3): the colour of `heat` (in [0, 1]) over `rgb` with opacity alpha;
    pixels without a tile keep the slide's colour."""
    out = rgb.astype(np.float32)
    covered = np.isfinite(heat)
    colours = cmap(heat[covered])[:, :3].astype(np.float32) * 255.0
    out[covered] = (1.0 - alpha) * out[covered] + alpha * colours
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def colour_map(name: str):
    """A matplotlib colour map by name; InvalidInput naming some choices otherwise."""
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise InvalidInput(f"unknown colour map {name!r}",
                           hint="e.g. inferno, viridis, magma, jet, RdYlBu_r (matplotlib's names)") from None


def slide_background(sa: SlideAttention, max_side: int) -> tuple[np.ndarray, tuple[float, float], str | None]:
    """Thumbnail (from the pyramid's coarse levels) and its scale, or a blank canvas of the
    slide's size and a note saying why."""
    from histstore.wsi.reader import open_slide

    W, H = sa.width, sa.height
    path = sa.slide.get("path")
    note = None
    if path:
        try:
            with open_slide(path) as reader:
                thumb = reader.thumbnail(max_side)
                W, H = reader.width, reader.height
            return thumb, (thumb.shape[1] / W, thumb.shape[0] / H), None
        except SlideReadError as exc:
            note = f"slide image unreadable ({exc.message}): tiles drawn on a blank canvas"
    else:
        note = "no slide image in the catalog (features-only slide): tiles drawn on a blank canvas"
    s = min(1.0, max_side / max(W, H))
    tw, th = max(1, round(W * s)), max(1, round(H * s))
    return np.full((th, tw, 3), _NO_FILE_GREY, np.uint8), (tw / W, th / H), note
