"""Transparent overlay images for a deep-zoom viewer: a run's attention and a tiling's tiles.

An overlay covers the whole level-0 image (width x height px) at a few pixels per tile, so a
viewer stretches it over the slide and every tile lands on its place. Pixels without a tile
are fully transparent; the viewer sets the opacity.

The attention overlay is the PNG heatmap's picture without the slide under it: the same
within-slide normalisation (`raster.normalise`), rasteriser (`raster.paint_tiles`) and colour
map (`raster.colour_map`), so the colours in the browser mean what they mean in
`histstore heatmap`.
"""
from __future__ import annotations

import io

import numpy as np

from histstore.reports.raster import colour_map, normalise, paint_tiles
from histstore.reports.slide_attention import SlideAttention

DEFAULT_CMAP = "inferno"      # as `histstore heatmap`
PX_PER_TILE = 8               # overlay pixels along a tile's side
MAX_SIDE = 4096               # overlay pixels on the long side, at most
# tiling overlay: tiles filled by tissue fraction, outlined
_TILE_FILL = (0, 170, 90)
_TILE_EDGE = (0, 90, 40)


def overlay_shape(width: int, height: int, tile_l0: float, px_per_tile: int = PX_PER_TILE,
                  max_side: int = MAX_SIDE) -> tuple[tuple[int, int], tuple[float, float]]:
    """(H, W) of an overlay of a width x height slide whose tiles are tile_l0 px, and its scale
    (overlay px per level-0 px, x and y)."""
    s = min(px_per_tile / max(float(tile_l0), 1.0), max_side / max(width, height))
    w, h = max(1, round(width * s)), max(1, round(height * s))
    return (h, w), (w / width, h / height)


def rgba_png(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def colour_stops(cmap: str = DEFAULT_CMAP, n: int = 11) -> list[str]:
    """The colour map as n CSS colours from 0 to 1 (a legend drawn with the same map)."""
    rgb = np.rint(colour_map(cmap)(np.linspace(0.0, 1.0, n))[:, :3] * 255).astype(int)
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb]


def attention_overlay(sa: SlideAttention, norm: str = "minmax", cmap: str = DEFAULT_CMAP,
                      px_per_tile: int = PX_PER_TILE, max_side: int = MAX_SIDE
                      ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """RGBA uint8 (H, W, 4) of the slide's attention, the normalised heat grid (NaN: no tile)
    and the scale (overlay px per level-0 px)."""
    shape, scale = overlay_shape(sa.width, sa.height, float(np.median(sa.size_l0)), px_per_tile, max_side)
    heat = paint_tiles(sa.x, sa.y, sa.size_l0, normalise(sa.score, norm), scale, shape)
    covered = np.isfinite(heat)
    rgba = np.zeros((*shape, 4), np.uint8)
    rgba[covered, :3] = np.rint(colour_map(cmap)(heat[covered])[:, :3] * 255).astype(np.uint8)
    rgba[covered, 3] = 255
    return rgba, heat, scale


def tiling_overlay(x, y, size_l0, tissue_fraction, width: int, height: int,
                   px_per_tile: int = PX_PER_TILE, max_side: int = MAX_SIDE) -> np.ndarray:
    """RGBA uint8 of a tiling: each tile filled in green, more opaque the more tissue it holds
    (its `tissue_fraction`; tiles without one count as full), with a darker outline."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    size = np.broadcast_to(np.asarray(size_l0, np.float64), x.shape)
    tissue = np.asarray(tissue_fraction, np.float64) if tissue_fraction is not None else np.ones(x.shape)
    tissue = np.where(np.isfinite(tissue), np.clip(tissue, 0.0, 1.0), 1.0)
    shape, scale = overlay_shape(width, height, float(np.median(size)) if size.size else 1.0, px_per_tile,
                                 max_side)
    rgba = np.zeros((*shape, 4), np.uint8)
    if x.size == 0:
        return rgba
    fill = paint_tiles(x, y, size, tissue, scale, shape)
    # one overlay px inside each box: what the full box covers and the inset box does not is edge
    inset = 1.0 / min(scale)
    inner = paint_tiles(x + inset, y + inset, np.maximum(size - 2 * inset, inset), tissue, scale, shape)
    covered = np.isfinite(fill)
    edge = covered & ~np.isfinite(inner)
    rgba[covered, :3] = _TILE_FILL
    rgba[covered, 3] = np.rint(50 + 110 * fill[covered]).astype(np.uint8)
    rgba[edge, :3] = _TILE_EDGE
    rgba[edge, 3] = 210
    return rgba
