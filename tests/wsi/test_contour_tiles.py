"""The default tile rule (CLAM's four-point contour rule, as HistCode tiled): against a slow
polygon reference, on shapes where the rule matters, and on the real slide against an
independent tissue mask."""
from __future__ import annotations

import numpy as np
import pytest

from histstore.wsi.contour_tiles import four_point_tiles
from histstore.wsi.process import process_slide
from histstore.wsi.reader import open_slide
from histstore.wsi.tiling import SlideGeometry, TilingSpec, mask_fraction, plan_tiles
from histstore.wsi.tissue import TissueMask


def _polygon_reference(mask, scale, size, stride, width, height):
    """CLAM's rule written the slow way, with cv2.pointPolygonTest on contours placed through
    the level-0 centres of their mask pixels. Returns {(x, y): distance of the nearest test
    point to a contour, in mask px}."""
    import cv2

    sx, sy = scale
    contours, hier = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    hier = hier[0]
    to_l0 = np.array([sx, sy], np.float32)
    out = {}
    s = int(size // 2 * 0.5)
    for k in np.flatnonzero(hier[:, 3] == -1):
        outer = ((contours[k].astype(np.float32) + 0.5) * to_l0)
        holes = [((contours[h].astype(np.float32) + 0.5) * to_l0) for h in np.flatnonzero(hier[:, 3] == k)]
        c0, r0, cw, rh = cv2.boundingRect(contours[k])
        for y in range(int(np.floor(r0 * sy)), int(np.ceil((r0 + rh) * sy)), stride):
            for x in range(int(np.floor(c0 * sx)), int(np.ceil((c0 + cw) * sx)), stride):
                cx, cy = x + size // 2, y + size // 2
                pts = [(cx - s, cy - s), (cx + s, cy + s), (cx + s, cy - s), (cx - s, cy + s)]
                dist = [cv2.pointPolygonTest(outer, (float(a), float(b)), True) for a, b in pts]
                in_hole = [cv2.pointPolygonTest(h, (float(cx), float(cy)), True) for h in holes]
                if max(dist) >= 0 and not any(d > 0 for d in in_hole):
                    key = (min(x, width - size), min(y, height - size))
                    near = min([abs(d) for d in dist] + [abs(d) for d in in_hole]) / max(sx, sy)
                    out[key] = min(near, out.get(key, np.inf))
                else:  # remember rejected positions too, with their margin
                    key = ("no", x, y)
                    near = min([abs(d) for d in dist] + [abs(d) for d in in_hole]) / max(sx, sy)
                    out[key] = min(near, out.get(key, np.inf))
    return out


def _blobs(seed, shape=(90, 120)):
    """Tissue-like mask: smoothed noise thresholded (several pieces, holes, thin necks)."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 4)
    return noise > np.quantile(noise, 0.55)


@pytest.mark.parametrize("seed, scale, size, stride", [(0, 7.3, 40, 40), (1, 4.0, 64, 48), (2, 10.0, 30, 30)])
def test_four_point_rule_matches_the_polygon_reference(seed, scale, size, stride):
    mask = _blobs(seed)
    h, w = mask.shape
    width, height = int(w * scale), int(h * scale)
    x, y, n_candidates = four_point_tiles(mask, (scale, scale), width, height, size, stride)
    got = set(zip(x.tolist(), y.tolist()))
    ref = _polygon_reference(mask, (scale, scale), size, stride, width, height)
    kept = {k: d for k, d in ref.items() if k[0] != "no"}
    assert len(got) > 20 and n_candidates > len(got)
    # raster look-up = polygon test at the nearest mask-pixel centre: they may disagree only
    # for tiles with a test point within one mask pixel of a contour
    missing = [k for k in kept if k not in got]
    extra = [k for k in got if k not in kept]
    assert all(kept[k] <= 1.0 for k in missing)
    assert all(ref[("no", *k)] <= 1.0 for k in extra if ("no", *k) in ref)
    assert all(("no", *k) in ref or k[0] == width - size or k[1] == height - size for k in extra)
    assert len(missing) + len(extra) <= 0.25 * len(kept)
    assert (x + size <= width).all() and (y + size <= height).all()
    np.testing.assert_array_equal(np.lexsort((x, y)), np.arange(len(x)))  # row-major order


def _spec(rule, size=128):
    return TilingSpec(tile_size=size, tile_rule=rule) if rule != "min-tissue" else \
        TilingSpec(tile_size=size, tile_rule=rule, min_tissue=0.5)


def test_thin_strand_is_tiled_only_by_the_default_rule():
    W, H = 2048, 1024
    mask = np.zeros((128, 256), bool)  # scale 8
    mask[40:46, 20:200] = True  # a strand 48 level-0 px thick, 1.4 mm long: under half a tile
    tm = TissueMask(mask, 8.0, (W, H), threshold=0.0)
    geo = SlideGeometry(W, H, (1.0,), 0.5)
    clam = plan_tiles(geo, tm, _spec("clam-four-pt"))
    old = plan_tiles(geo, tm, _spec("min-tissue"))
    assert len(old) == 0
    # one row of tiles along the strand (level-0 x 160..1600), anchored at its top-left: the
    # 12th grid position's test points (x 1600, 1664) miss the strand, as in CLAM
    assert len(clam) == 11 and set(clam.y.tolist()) == {320}
    np.testing.assert_array_equal(clam.x, 160 + 128 * np.arange(11))
    np.testing.assert_allclose(clam.tissue_fraction, mask_fraction(mask, (8, 8), clam.x, clam.y, 128, 128),
                               rtol=1e-6)
    assert clam.tissue_fraction.max() < 0.5  # recorded, though below the old rule's cut


def test_centres_in_holes_are_dropped_and_islands_kept():
    W = H = 2048
    mask = np.zeros((256, 256), bool)  # scale 8
    mask[16:240, 16:240] = True
    mask[64:192, 64:192] = False  # a 1 mm hole ...
    mask[112:144, 112:144] = True  # ... with an island in it
    tm = TissueMask(mask, 8.0, (W, H), threshold=0.0)
    g = plan_tiles(SlideGeometry(W, H, (1.0,), 0.5), tm, _spec("clam-four-pt"))
    cx, cy = g.x + 64, g.y + 64
    in_hole = (cx > 64 * 8) & (cx < 192 * 8) & (cy > 64 * 8) & (cy < 192 * 8)
    on_island = (cx >= 112 * 8 - 64) & (cx <= 144 * 8 + 64) & (cy >= 112 * 8 - 64) & (cy <= 144 * 8 + 64)
    assert in_hole.any() and (in_hole <= on_island).all()  # only the island's tiles sit in the hole
    assert on_island.sum() == 4  # its own grid: 256 px island -> 2 x 2 tiles
    # the ring is tiled all round, the empty part of the hole is not
    assert np.isin([128, 128 + 128 * 13], g.x).all()
    assert (g.tissue_fraction > 0).all()


def test_tiles_at_the_slide_edge_move_inside():
    W, H = 1000, 700  # not multiples of the tile size
    mask = np.zeros((70, 100), bool)  # scale 10
    mask[:, 80:] = True  # tissue up to the right edge
    tm = TissueMask(mask, 10.0, (W, H), threshold=0.0)
    g = plan_tiles(SlideGeometry(W, H, (1.0,), 0.5), tm, _spec("clam-four-pt"))
    assert (g.x + g.size_l0 <= W).all() and (g.y + g.size_l0 <= H).all()
    assert g.x.max() == W - 128 and g.y.max() == H - 128  # the edge is covered, inside the slide
    assert len(set(zip(g.x.tolist(), g.y.tolist()))) == len(g)  # no duplicates


def test_default_tiles_cover_the_real_slides_tissue(real_slide):
    """Tissue recall and precision of the tiles on the real slide, against an independent
    full-resolution optical-density mask (tests/support/reference_tissue.py says why it is a
    fair reference). The default rule must leave much less tissue outside every tile than the
    old >= 50 % rule, at a modest cost in precision."""
    from tests.support.reference_tissue import reference_tissue_mask, tile_coverage

    with open_slide(real_slide) as r:
        ref = reference_tissue_mask(r.read_region(0, 0, 0, r.width, r.height))
    new = process_slide(real_slide, TilingSpec())
    old = process_slide(real_slide, TilingSpec(tile_rule="min-tissue"))
    # the reference is a sensible tissue mask: same area as histstore's detector within 25 %
    ref_mm2 = ref.sum() * new.mpp ** 2 / 1e6
    assert 0.75 < ref_mm2 / new.tissue_area_mm2 < 1.25
    rec_new, prec_new = tile_coverage(ref, new.grid.x, new.grid.y, new.grid.size_l0)
    rec_old, prec_old = tile_coverage(ref, old.grid.x, old.grid.y, old.grid.size_l0)
    print(f"\nreal slide, tissue recall / precision vs reference: default {rec_new:.3f} / {prec_new:.3f} "
          f"({len(new.grid)} tiles), min-tissue 0.5 {rec_old:.3f} / {prec_old:.3f} ({len(old.grid)} tiles)")
    assert rec_new >= 0.93 and prec_new >= 0.75
    assert rec_new - rec_old >= 0.05 and (1 - rec_new) < 0.5 * (1 - rec_old)
