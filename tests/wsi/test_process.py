"""process_slide: the per-slide ingest step, pure and picklable."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import pickle

import numpy as np
import pytest

from histstore.errors import SlideReadError
from histstore.wsi.process import process_slide, read_tile
from histstore.wsi.reader import open_slide
from histstore.wsi.tiling import TilingSpec

from .conftest import gradient_pattern, write_pyramid


def test_real_slide(real_slide):
    r = process_slide(real_slide, TilingSpec())
    assert (r.width, r.height, r.level_count) == (2220, 2967, 1)
    assert r.mpp == pytest.approx(0.499) and r.mpp_source == "file"
    assert r.objective_power == 20 and r.vendor == "aperio"
    assert len(r.fingerprint) == 64 and r.file_size == real_slide.stat().st_size
    g = r.grid
    assert (g.read_level, g.read_size, g.size_l0) == (0, 128, 128)
    assert g.tile_rule == "clam-four-pt" and g.min_tissue is None
    # the default (CLAM's rule) keeps every tile whose central region touches tissue, so the
    # tiles cover more than the tissue area (edges), but not much more
    tile_mm2 = (g.size_l0 * r.mpp / 1000) ** 2
    assert 1.0 * r.tissue_area_mm2 < r.n_tiles * tile_mm2 < 1.5 * r.tissue_area_mm2
    assert 100 < r.n_tiles < g.n_candidates
    assert (g.tissue_fraction > 0).all() and (g.tissue_fraction < 0.5).any()
    assert r.qc_png[:4] == b"\x89PNG"
    assert set(r.timings) == {"open", "tissue", "tiling", "qc"}
    props = r.slide_properties()
    assert props["fingerprint"] == r.fingerprint and props["mpp"] == r.mpp
    # kept tiles really are on tissue: saturated, not white glass (edge tiles hold less)
    import cv2

    with open_slide(real_slide) as s:
        tiles = [read_tile(s, g.x[i], g.y[i], g.spec) for i in range(0, r.n_tiles, 10)]
    sat = np.array([cv2.cvtColor(t, cv2.COLOR_RGB2HSV)[..., 1].mean() for t in tiles])
    assert sat.min() > 12 and np.median(sat) > 40


def test_real_slide_min_tissue_rule(real_slide):
    """The old rule, asked for explicitly: tiles need >= 50 % tissue, so their total area is
    close to the tissue area, and all of them are well inside the tissue."""
    r = process_slide(real_slide, TilingSpec(tile_rule="min-tissue"))
    g = r.grid
    assert g.tile_rule == "min-tissue" and g.min_tissue == 0.5
    tile_mm2 = (g.size_l0 * r.mpp / 1000) ** 2
    assert 0.8 * r.tissue_area_mm2 < r.n_tiles * tile_mm2 < 1.2 * r.tissue_area_mm2
    assert 100 < r.n_tiles < g.n_candidates / 2
    assert (g.tissue_fraction >= 0.5).all()
    import cv2

    with open_slide(real_slide) as s:
        tiles = [read_tile(s, g.x[i], g.y[i], g.spec) for i in range(0, r.n_tiles, 10)]
    sat = [cv2.cvtColor(t, cv2.COLOR_RGB2HSV)[..., 1].mean() for t in tiles]
    assert min(sat) > 25


def test_result_pickles(synth6):
    r = process_slide(synth6.slides[0].path, TilingSpec())
    back = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(back.grid.x, r.grid.x)
    assert back.qc_png == r.qc_png and back.grid.spec == r.grid.spec
    assert back.mask.thumbnail is None  # the thumbnail does not travel between processes


def _run(path, spec_dict, assume):
    try:
        return process_slide(path, TilingSpec.from_dict(spec_dict), assume).n_tiles, None
    except SlideReadError as e:
        return None, e


def test_in_worker_processes(synth6, tmp_path):
    """Results and typed errors (with hints) come back from spawned workers."""
    nompp = write_pyramid(tmp_path / "nompp.tiff", gradient_pattern(600, 600), mpp=None)
    paths = [str(synth6.slides[0].path), str(tmp_path / "missing.svs"), str(nompp)]
    with cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        out = list(pool.map(_run, paths, [TilingSpec().to_dict()] * 3, [None] * 3))
    assert out[0][0] > 20 and out[0][1] is None
    assert isinstance(out[1][1], SlideReadError) and "missing.svs" in str(out[1][1])
    assert out[2][1].hint and "--assume-mpp" in out[2][1].hint


def test_assume_mpp(tmp_path):
    img = np.full((1024, 1024, 3), 240, np.uint8)
    img[200:800, 200:800] = (200, 80, 160)
    path = write_pyramid(tmp_path / "nompp.tiff", img, mpp=None, compression="jpeg")
    with pytest.raises(SlideReadError, match="unknown") as e:
        process_slide(path, TilingSpec())
    assert "--assume-mpp" in str(e.value)
    r = process_slide(path, TilingSpec(), assume_mpp=0.5)
    assert r.mpp == 0.5 and r.mpp_source == "assumed"
    # the 600 px square holds 4 x 4 whole 128 px tiles, plus edge tiles at least half inside
    assert 16 <= r.n_tiles <= 25
    r = process_slide(path, TilingSpec(), assume_mpp=0.25)  # same pixels, finer: bigger tiles
    assert r.grid.size_l0 == 256 and 4 <= r.n_tiles <= 9


def test_no_tissue_is_an_error_unless_allowed(tmp_path):
    path = write_pyramid(tmp_path / "glass.tiff", np.full((1024, 1024, 3), 242, np.uint8), mpp=0.5)
    with pytest.raises(SlideReadError, match="no tissue found.*glass.tiff"):
        process_slide(path, TilingSpec())
    r = process_slide(path, TilingSpec(), allow_empty=True)
    assert r.n_tiles == 0 and r.tissue_area_mm2 == 0


def test_too_coarse_slide(tmp_path):
    path = write_pyramid(tmp_path / "coarse.tiff", gradient_pattern(512, 512), mpp=2.0)
    with pytest.raises(SlideReadError, match="coarser than the target"):
        process_slide(path, TilingSpec(target_mpp=0.5))


def test_other_tilings_of_the_same_slide(synth6):
    path = synth6.slides[0].path
    a = process_slide(path, TilingSpec())
    b = process_slide(path, TilingSpec(target_mpp=1.0, tile_size=64))
    c = process_slide(path, TilingSpec(overlap=64))
    assert a.fingerprint == b.fingerprint
    assert (b.grid.size_l0, b.grid.read_size, b.grid.read_level) == (128, 128, 0)
    np.testing.assert_array_equal(a.grid.x, b.grid.x)  # same footprints, same tiles
    assert c.grid.stride_l0 == 64 and 3 * a.n_tiles < c.n_tiles < 5 * a.n_tiles
    d = process_slide(path, TilingSpec(target_mpp=2.0, tile_size=64))
    assert (d.grid.read_level, d.grid.read_size, d.grid.size_l0) == (1, 64, 256)
