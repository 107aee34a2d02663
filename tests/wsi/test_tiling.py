"""Tile grids: spec validation, read-level choice, geometry, tissue fractions, re-reading pixels."""
from __future__ import annotations

import numpy as np
import pytest

from histstore.errors import InvalidInput, SlideReadError
from histstore.wsi.process import read_tile, read_tiles
from histstore.wsi.reader import open_slide
from histstore.wsi.tiling import (
    SlideGeometry,
    TilingSpec,
    choose_read_level,
    magnification_to_mpp,
    mask_fraction,
    mpp_to_magnification,
    plan_tiles,
)
from histstore.wsi.tissue import TissueMask

from .conftest import coordinate_pattern, gradient_pattern, write_pyramid


# -- TilingSpec -----------------------------------------------------------------------------
def test_spec_defaults_follow_histcode():
    s = TilingSpec()
    assert (s.target_mpp, s.tile_size, s.overlap, s.tile_rule, s.min_tissue, s.tissue_method) == (
        0.5, 128, 0, "clam-four-pt", None, "hsv-otsu")
    assert s.stride == 128 and s.label == "128px@0.5mpp" and s.rule_label == "clam-four-pt"
    assert TilingSpec(overlap=16).label == "128px@0.5mpp-ov16"
    m = TilingSpec(tile_rule="min-tissue")
    assert m.min_tissue == 0.5 and m.rule_label == "min tissue 0.5"


def test_spec_roundtrip_and_normalised_types():
    s = TilingSpec(target_mpp=1, tile_size=np.int64(64), overlap=8, min_tissue=1, tile_rule="min-tissue")
    d = s.to_dict()
    # the min-tissue rule is recorded as before tile rules existed: old tilings keep their key
    assert d == {"target_mpp": 1.0, "tile_size": 64, "overlap": 8, "min_tissue": 1.0,
                 "tissue_method": "hsv-otsu"}
    assert type(d["tile_size"]) is int and type(d["target_mpp"]) is float
    assert TilingSpec.from_dict(d) == s and hash(TilingSpec.from_dict(d)) == hash(s)
    assert TilingSpec.from_dict({}) == TilingSpec(tile_rule="min-tissue")
    c = TilingSpec(target_mpp=1, tile_size=64)
    assert c.to_dict() == {"target_mpp": 1.0, "tile_size": 64, "overlap": 0, "tissue_method": "hsv-otsu",
                           "tile_rule": "clam-four-pt"}
    assert TilingSpec.from_dict(c.to_dict()) == c


def test_settings_keys_old_tilings_keep_theirs():
    """A tiling made before tile rules existed (min tissue 0.5) has the same key as
    `--tile-rule min-tissue` now; the new default has another."""
    from histstore.ingest import tiling_key
    from histstore.keys import settings_key

    old = {"target_mpp": 0.5, "tile_size": 128, "overlap": 0, "min_tissue": 0.5, "tissue_method": "hsv-otsu"}
    assert tiling_key(TilingSpec(tile_rule="min-tissue")) == settings_key(old)
    assert tiling_key(TilingSpec()) != settings_key(old)


@pytest.mark.parametrize("kwargs", [
    dict(tile_size=0), dict(tile_size=4), dict(tile_size=128.0), dict(tile_size=True),
    dict(target_mpp=0), dict(target_mpp=-0.5), dict(target_mpp=float("nan")), dict(target_mpp="0.5"),
    dict(overlap=-1), dict(overlap=128), dict(min_tissue=1.5, tile_rule="min-tissue"),
    dict(min_tissue=-0.1, tile_rule="min-tissue"), dict(min_tissue="a", tile_rule="min-tissue"),
    dict(tissue_method="magic"), dict(tile_rule="four_pt"),
    dict(min_tissue=0.5),  # min_tissue goes with the min-tissue rule only
])
def test_spec_validation(kwargs):
    with pytest.raises(InvalidInput):
        TilingSpec(**kwargs)


def test_spec_from_dict_rejects_unknown_keys():
    with pytest.raises(InvalidInput, match="unknown"):
        TilingSpec.from_dict({"tile_size": 128, "tilesize": 64})


def test_magnification_convention():
    assert magnification_to_mpp(20) == 0.5
    assert magnification_to_mpp(40) == 0.25
    assert magnification_to_mpp(10) == 1.0
    assert mpp_to_magnification(0.5) == 20
    for bad in (0, -20, "20"):
        with pytest.raises(InvalidInput):
            magnification_to_mpp(bad)


# -- read level ----------------------------------------------------------------------------
GEO_40X = SlideGeometry(40000, 30000, (1.0, 4.0, 16.0, 64.0), 0.25)


@pytest.mark.parametrize("target, level", [
    (0.25, 0), (0.26, 0), (0.5, 0), (0.99, 0), (1.0, 1), (1.005, 1), (2.0, 1), (3.9, 1),
    (4.0, 2), (15.5, 2), (15.9, 3), (16.0, 3), (100.0, 3),  # 15.9: within 1%
    (0.24, 0),  # 4% finer than the slide: read level 0 and enlarge a little
])
def test_read_level_is_coarsest_not_coarser_than_target(target, level):
    assert choose_read_level(GEO_40X, target) == level


def test_read_level_tolerates_reported_downsample_jitter():
    geo = SlideGeometry(40000, 30000, (1.0, 4.000345, 16.00138), 0.2527)
    assert choose_read_level(geo, 4 * 0.2527) == 1


def test_slide_too_coarse_for_target_is_refused():
    geo = SlideGeometry(4000, 3000, (1.0,), 1.0, name="coarse.svs")
    with pytest.raises(SlideReadError, match="coarser than the target") as e:
        choose_read_level(geo, 0.5)
    assert "coarse.svs" in str(e.value) and "--mpp" in str(e.value)


def test_geometry_requires_mpp():
    with pytest.raises(SlideReadError, match="unknown"):
        SlideGeometry(100, 100, (1.0,), None)


# -- grid geometry ---------------------------------------------------------------------------
@pytest.mark.parametrize("slide_mpp, downsamples, target, tile, overlap", [
    (0.5, (1, 4, 16), 0.5, 128, 0),
    (0.25, (1, 4, 16), 0.5, 128, 0),
    (0.25, (1, 4, 16), 0.5, 128, 32),
    (0.2527, (1, 4.000345, 16.00138), 0.5, 224, 0),
    (0.499, (1,), 0.5, 256, 64),
    (0.5, (1, 4, 16), 2.0, 64, 0),
    (0.25, (1, 4, 16), 1.0, 96, 10),
    (0.5, (1, 2), 0.3, 100, 0),  # slide 1.67x coarser than target -> refused
])
def test_grid_geometry(slide_mpp, downsamples, target, tile, overlap):
    W, H = 5000, 3700
    geo = SlideGeometry(W, H, downsamples, slide_mpp)
    spec = TilingSpec(target_mpp=target, tile_size=tile, overlap=overlap)
    if slide_mpp > target * 1.1:
        with pytest.raises(SlideReadError):
            plan_tiles(geo, None, spec)
        return
    g = plan_tiles(geo, None, spec)
    scale = target / slide_mpp
    assert g.size_l0 == round(tile * scale)
    assert g.stride_l0 == g.size_l0 - round(overlap * scale)
    lvl = g.read_level
    assert slide_mpp * downsamples[lvl] <= target * 1.01  # never reads coarser than asked
    if lvl + 1 < len(downsamples):
        assert slide_mpp * downsamples[lvl + 1] > target * 1.01  # ... and no finer than needed
    assert g.read_size == round(tile * scale / downsamples[lvl])
    # every tile fully inside the slide, and the grid cannot fit one more column or row
    assert g.x.dtype == np.int64 and g.y.dtype == np.int64
    assert (g.x >= 0).all() and (g.y >= 0).all()
    assert (g.x + g.size_l0 <= W).all() and (g.y + g.size_l0 <= H).all()
    assert g.x.max() + g.stride_l0 + g.size_l0 > W and g.y.max() + g.stride_l0 + g.size_l0 > H
    nx = (W - g.size_l0) // g.stride_l0 + 1
    ny = (H - g.size_l0) // g.stride_l0 + 1
    assert len(g) == g.n_candidates == nx * ny
    # row-major: y then x; idx 0..n-1
    np.testing.assert_array_equal(g.idx, np.arange(len(g)))
    np.testing.assert_array_equal(np.lexsort((g.x, g.y)), np.arange(len(g)))
    xs = np.unique(g.x)
    assert (np.diff(xs) == g.stride_l0).all()
    if overlap == 0:  # tiles abut exactly: no gap, no overlap
        assert g.stride_l0 == g.size_l0
    else:
        assert g.stride_l0 < g.size_l0
    spec_d = g.spec
    assert spec_d["read_level"] == lvl and spec_d["size_l0"] == g.size_l0
    assert spec_d["tile_size"] == tile and spec_d["target_mpp"] == target


def test_slide_smaller_than_a_tile_has_no_tiles():
    g = plan_tiles(SlideGeometry(100, 500, (1.0,), 0.5), None, TilingSpec())
    assert len(g) == 0 and g.x.dtype == np.int64


def test_plan_tiles_accepts_a_reader(synth6):
    with open_slide(synth6.slides[0].path) as r:
        g = plan_tiles(r, None, TilingSpec())
    w, h = synth6.slides[0].width, synth6.slides[0].height
    assert len(g) == (w // 128) * (h // 128)


# -- tissue fractions --------------------------------------------------------------------------
def _brute_fraction(mask, s, x, y, size):
    """Upsample the mask by an integer factor s and average each box."""
    big = np.kron(mask.astype(np.float64), np.ones((s, s)))
    return np.array([big[b:b + size, a:a + size].mean() for a, b in zip(x, y)])


def test_mask_fraction_exact_against_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((40, 50)) > 0.6
    s = 8
    x = rng.integers(0, 50 * s - 37, 300)
    y = rng.integers(0, 40 * s - 37, 300)
    got = mask_fraction(mask, (s, s), x, y, 37, 37)
    np.testing.assert_allclose(got, _brute_fraction(mask, s, x, y, 37), atol=1e-9)


def test_mask_fraction_non_integer_scale_and_outside():
    mask = np.ones((10, 10), bool)
    # scale 3.3: the mask covers 33 x 33 level-0 px; a box half outside is half covered
    f = mask_fraction(mask, (3.3, 3.3), np.array([0.0, 16.5, 33.0]), np.array([0.0, 0.0, 0.0]), 33.0, 33.0)
    np.testing.assert_allclose(f, [1.0, 0.5, 0.0], atol=1e-9)
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True  # covers [2.5, 5) x [2.5, 5) at scale 2.5
    f = mask_fraction(mask, (2.5, 2.5), np.array([2.5, 3.75, 0.0]), np.array([2.5, 3.75, 0.0]), 2.5, 2.5)
    np.testing.assert_allclose(f, [1.0, 0.25, 0.0], atol=1e-9)


def test_min_tissue_filters_by_mask():
    W = H = 1024
    mask = np.zeros((64, 64), bool)
    mask[:, :24] = True  # tissue on x < 384 (scale 16)
    tm = TissueMask(mask, 16.0, (W, H), threshold=0.0)
    geo = SlideGeometry(W, H, (1.0,), 0.5)
    g = plan_tiles(geo, tm, TilingSpec(tile_size=128, min_tissue=0.5, tile_rule="min-tissue"))
    assert set(np.unique(g.x)) == {0, 128, 256}  # tile 256..384 fully tissue
    assert np.allclose(g.tissue_fraction, 1.0)
    g = plan_tiles(geo, tm, TilingSpec(tile_size=256, min_tissue=0.5, tile_rule="min-tissue"))
    assert set(np.unique(g.x)) == {0, 256}  # [256, 512) is exactly half tissue: kept
    assert np.allclose(sorted(set(g.tissue_fraction.round(6))), [0.5, 1.0])
    g = plan_tiles(geo, tm, TilingSpec(tile_size=256, min_tissue=0.51, tile_rule="min-tissue"))
    assert set(np.unique(g.x)) == {0}
    g = plan_tiles(geo, tm, TilingSpec(tile_size=128, min_tissue=0.0, tile_rule="min-tissue"))
    assert len(g) == 64 and g.tissue_fraction.dtype == np.float32


# -- re-reading pixels -------------------------------------------------------------------------
def test_level0_coordinates_reread_exact_pixels(tmp_path):
    img = coordinate_pattern(1500, 1100)
    path = write_pyramid(tmp_path / "coords.tiff", img, mpp=0.5, downsamples=(1, 4))
    spec = TilingSpec(target_mpp=0.5, tile_size=96, overlap=20)
    with open_slide(path) as r:
        g = plan_tiles(r, None, spec)
        assert g.read_level == 0 and g.read_size == 96 and g.stride_l0 == 76
        for i in [0, 1, 17, len(g) // 2, len(g) - 1]:
            x, y = int(g.x[i]), int(g.y[i])
            np.testing.assert_array_equal(read_tile(r, x, y, g.spec), img[y:y + 96, x:x + 96])
        batch = read_tiles(r, g.x[:5], g.y[:5], g)
        assert batch.shape == (5, 96, 96, 3)
        np.testing.assert_array_equal(batch[3], img[g.y[3]:g.y[3] + 96, g.x[3]:g.x[3] + 96])


@pytest.mark.parametrize("target, tile, level, read_size", [
    (0.25, 64, 0, 64),  # native
    (0.5, 64, 0, 128),  # shrink level 0 by 2
    (1.0, 64, 1, 64),  # level 1 is exactly 1.0 um/px
    (2.0, 32, 1, 64),  # shrink level 1 by 2
])
def test_tiles_at_other_resolutions_show_the_right_place(tmp_path, target, tile, level, read_size):
    """On smooth ramps, a tile's mean colour is the ramp's value at the tile's centre."""
    W, H = 4096, 2048
    img = gradient_pattern(W, H)
    path = write_pyramid(tmp_path / "ramp.tiff", img, mpp=0.25, downsamples=(1, 4))
    with open_slide(path) as r:
        g = plan_tiles(r, None, TilingSpec(target_mpp=target, tile_size=tile))
        assert (g.read_level, g.read_size) == (level, read_size)
        assert g.size_l0 == round(tile * target / 0.25)
        rng = np.random.default_rng(0)
        for i in rng.choice(len(g), 12, replace=False):
            t = read_tile(r, g.x[i], g.y[i], g.spec)
            assert t.shape == (tile, tile, 3) and t.dtype == np.uint8
            cx = g.x[i] + g.size_l0 / 2
            cy = g.y[i] + g.size_l0 / 2
            assert abs(t[..., 0].mean() - 255 * cx / (W - 1)) < 1.5
            assert abs(t[..., 1].mean() - 255 * cy / (H - 1)) < 1.5
