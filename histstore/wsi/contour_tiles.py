"""CLAM's "four_pt" patch rule, the one HistCode tiled with, on histstore's tissue mask.

HistCode (arXiv 2204.11994) cuts slides with CLAM's `create_patches_fp.py` (contour_fn
'four_pt', HistCode's tcga_lung preset). The rule, per tissue contour (an outer boundary of
the mask, found with RETR_CCOMP so that each outer contour knows its holes):

- a grid anchored at the contour's bounding box, stepping by the stride;
- a tile at (x, y) of side P has centre c = (x + P/2, y + P/2) and four test points
  c +- (s, s) on the diagonals, s = P/4 (CLAM: int(P // 2 * 0.5));
- it is kept when ANY test point lies inside or on the contour (pointPolygonTest >= 0,
  holes ignored) AND the centre is not strictly inside one of that contour's holes.

So a tile is kept when its central region touches the tissue, which keeps edges and thin
strands that a ">= 50 % tissue" rule drops.

Our implementation (not CLAM's code): the tests are raster look-ups instead of polygon
tests. Each contour is drawn filled (boundary included) into a raster over its bounding box
at mask resolution, each of its holes drawn filled minus its outline (strict interior), and a
level-0 point is looked up in the mask pixel that contains it. A contour traced by OpenCV runs
through the centres of its boundary pixels, so the look-up equals pointPolygonTest at the
nearest pixel centre: the two can differ only for points within one mask pixel of a contour
(tests/wsi/test_contour_tiles.py compares them). It costs O(1) per point, where a polygon test
costs O(vertices), which matters on a 100k x 100k slide with ~10^5 candidate tiles.

Differences from CLAM, on purpose:
- the contours are those of histstore's tissue mask (`histstore.wsi.tissue`: the same
  HSV-saturation/median/Otsu/close recipe, but area filters as fractions of the mask, not
  CLAM's a_t/a_h in units of 512^2 level-0 px, which drop every piece of tissue on a small
  slide); every hole the mask keeps counts (HistCode's preset keeps up to 2048);
- CLAM lets a tile hang over the slide's right/bottom edge and pads it (use_padding); here a
  tile is moved back inside the slide, so every tile is real pixels;
- tiles of neighbouring contours can overlap (as in CLAM, each contour has its own grid);
  exact duplicates are dropped, and tiles are returned in row-major (y, x) order.
"""
from __future__ import annotations

import numpy as np

CENTER_SHIFT = 0.5  # CLAM isInContourV3_Easy(center_shift=0.5): s = int(P // 2 * 0.5)


def four_point_tiles(mask: np.ndarray, scale: tuple[float, float], width: int, height: int,
                     size_l0: int, stride_l0: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Tiles kept by the four-point rule: (x, y) level-0 top-left int64 arrays, n_candidates.

    mask: bool (mh, mw) tissue mask; pixel (r, c) covers level-0 [c*sx, (c+1)*sx) x
    [r*sy, (r+1)*sy), scale = (sx, sy). width, height: level-0 slide size. n_candidates: grid
    positions tested over all contours' bounding boxes.
    """
    import cv2

    m = np.ascontiguousarray(mask, dtype=np.uint8)
    empty = np.zeros(0, np.int64)
    if not m.any() or width < size_l0 or height < size_l0:
        return empty, empty, 0
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    hierarchy = hierarchy[0]  # [n, 4]: next, previous, first child, parent
    sx, sy = float(scale[0]), float(scale[1])
    half = size_l0 // 2
    shift = int(half * CENTER_SHIFT)
    xs_all, ys_all = [], []
    n_candidates = 0
    for k in np.flatnonzero(hierarchy[:, 3] == -1):  # outer contours
        outer = contours[k]
        holes = [contours[h] for h in np.flatnonzero(hierarchy[:, 3] == k)]
        c0, r0, cw, rh = cv2.boundingRect(outer)
        inside = np.zeros((rh, cw), np.uint8)
        cv2.drawContours(inside, [outer], -1, 1, thickness=-1, offset=(-c0, -r0))
        in_hole = np.zeros((rh, cw), np.uint8)
        if holes:
            cv2.drawContours(in_hole, holes, -1, 1, thickness=-1, offset=(-c0, -r0))
            cv2.drawContours(in_hole, holes, -1, 0, thickness=1, offset=(-c0, -r0))
        # the contour's grid, anchored at its bounding box (level 0)
        bx0, by0 = int(np.floor(c0 * sx)), int(np.floor(r0 * sy))
        bx1, by1 = int(np.ceil((c0 + cw) * sx)), int(np.ceil((r0 + rh) * sy))
        gx = np.arange(bx0, bx1, stride_l0, dtype=np.int64)
        gy = np.arange(by0, by1, stride_l0, dtype=np.int64)
        yy, xx = np.meshgrid(gy, gx, indexing="ij")
        x, y = xx.ravel(), yy.ravel()
        n_candidates += int(x.size)
        cx, cy = x + half, y + half

        def lookup(raster: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
            col = np.floor(px / sx).astype(np.int64) - c0
            row = np.floor(py / sy).astype(np.int64) - r0
            ok = (col >= 0) & (col < cw) & (row >= 0) & (row < rh)
            out = np.zeros(px.shape, bool)
            out[ok] = raster[row[ok], col[ok]].astype(bool)
            return out

        touches = np.zeros(x.shape, bool)
        for dx, dy in ((-shift, -shift), (shift, shift), (shift, -shift), (-shift, shift)):
            touches |= lookup(inside, cx + dx, cy + dy)
        keep = touches & ~lookup(in_hole, cx, cy)
        xs_all.append(x[keep])
        ys_all.append(y[keep])
    if not xs_all:
        return empty, empty, n_candidates
    x = np.concatenate(xs_all)
    y = np.concatenate(ys_all)
    # a tile hanging over the right/bottom edge moves back inside the slide
    x = np.minimum(x, width - size_l0)
    y = np.minimum(y, height - size_l0)
    xy = np.unique(np.stack([y, x], axis=1), axis=0)  # row-major order, duplicates dropped
    return np.ascontiguousarray(xy[:, 1]), np.ascontiguousarray(xy[:, 0]), n_candidates
