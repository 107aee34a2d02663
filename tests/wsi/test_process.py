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

from .conftest import coordinate_pattern, gradient_pattern, write_pyramid


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


# -- tiles read in runs ------------------------------------------------------------------------
class _Counting:
    """A SlideReader that counts its read_region calls."""

    def __init__(self, reader):
        self.reader, self.calls = reader, 0
        self.level_downsamples = reader.level_downsamples

    def read_region(self, *args):
        self.calls += 1
        return self.reader.read_region(*args)


def _per_tile(reader, x, y, spec):
    return np.stack([read_tile(reader, int(a), int(b), spec) for a, b in zip(x, y)])


@pytest.mark.parametrize("target, tile, overlap, level", [
    (0.5, 64, 0, 0),    # level 0, read as is
    (1.0, 40, 0, 0),    # level 0 shrunk 80 -> 40 px
    (2.0, 32, 0, 1),    # level 1 (downsample 4), read as is
    (4.0, 32, 0, 1),    # level 1 shrunk 64 -> 32 px
    (0.5, 64, 16, 0),   # overlapping tiles: never side by side, read one by one
])
def test_runs_of_tiles_read_the_same_pixels_as_tile_by_tile(tmp_path, target, tile, overlap, level):
    """Side-by-side tiles read as one region give exactly each tile's own read, with gaps in
    the rows (tiles dropped), rows that end at the slide's edge, and runs cut at max_run."""
    from histstore.wsi.process import read_tiles_into, run_step, tile_runs
    from histstore.wsi.tiling import plan_tiles

    img = coordinate_pattern(1024, 768)
    img[::7, ::5] = (255, 0, 255)  # detail that a shifted or resampled read would change
    path = write_pyramid(tmp_path / "grid.tiff", img, mpp=0.5, downsamples=(1, 4))
    with open_slide(path) as r:
        g = plan_tiles(r, None, TilingSpec(target_mpp=target, tile_size=tile, overlap=overlap))
        assert g.read_level == level
        keep = np.ones(len(g), bool)
        keep[np.random.default_rng(0).choice(len(g), len(g) // 5, replace=False)] = False  # gaps
        x, y = g.x[keep], g.y[keep]
        out = np.empty((x.size, tile, tile, 3), np.uint8)
        counting = _Counting(r)
        read_tiles_into(counting, x, y, g.spec, out)
        np.testing.assert_array_equal(out, _per_tile(r, x, y, g.spec))
        runs = tile_runs(x, y, run_step(r, g.spec), max_run=2)
        if overlap:
            assert counting.calls == x.size  # no two tiles side by side
        else:
            whole = tile_runs(x, y, run_step(r, g.spec))
            assert counting.calls == len(whole) < x.size * 0.7 and len(runs) > len(whole)
            assert any(b - a > 1 and x[b - 1] == g.x.max() for a, b in runs)  # a run ends a row
        out4 = np.empty_like(out)
        for a, b in runs:  # shorter runs, the same pixels
            read_tiles_into(r, x[a:b], y[a:b], g.spec, out4[a:b])
        np.testing.assert_array_equal(out4, out)


def test_runs_past_the_slide_edge_and_off_the_level_grid(tmp_path):
    """A run that reaches past the slide's edge reads white there, as a lone tile does; tiles
    whose level coordinates are not whole pixels, or a pyramid whose downsample is not a
    whole number, are read one by one."""
    from histstore.wsi.process import read_tiles_into, run_step

    img = coordinate_pattern(1000, 600)
    path = write_pyramid(tmp_path / "edge.tiff", img, mpp=0.5, downsamples=(1, 4))
    with open_slide(path) as r:
        spec0 = {"read_level": 0, "read_size": 64, "tile_size": 64}
        x = np.array([900, 964, 900, 964, 300])  # the second and fourth reach past x = 1000
        y = np.array([0, 0, 560, 560, 10])       # the last row runs past y = 600
        counting = _Counting(r)
        out = np.empty((5, 64, 64, 3), np.uint8)
        read_tiles_into(counting, x, y, spec0, out)
        assert counting.calls == 3
        np.testing.assert_array_equal(out, _per_tile(r, x, y, spec0))
        assert (out[1, :, 36:] == 255).all() and (out[3, 40:] == 255).all() and (out[2, 40:] == 255).all()
        assert not (out[0] == 255).all(axis=-1).any()

        spec1 = {"read_level": 1, "read_size": 16, "tile_size": 16}
        x1 = np.array([2, 66, 130, 0, 64, 128])  # 2 / 4 is no whole level-1 pixel
        y1 = np.array([0, 0, 0, 8, 8, 8])
        counting = _Counting(r)
        out1 = np.empty((6, 16, 16, 3), np.uint8)
        read_tiles_into(counting, x1, y1, spec1, out1)
        assert counting.calls == 4
        np.testing.assert_array_equal(out1, _per_tile(r, x1, y1, spec1))

    odd = write_pyramid(tmp_path / "odd.tiff", img, mpp=0.5, downsamples=(1, 3))
    with open_slide(odd) as r:
        assert not float(r.level_downsamples[1]).is_integer()
        assert run_step(r, {"read_level": 1, "read_size": 16, "tile_size": 16}) is None
        assert run_step(r, spec0) == 64
