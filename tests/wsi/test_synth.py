"""Synthetic cohorts: deterministic, openable, H&E-like, tumour regions only where planted."""
from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest

from histstore.wsi.process import process_slide, read_tiles
from histstore.wsi.reader import open_slide
from histstore.wsi.synth import GENES, make_slide_model, synth_cohort, synth_slide, tumor_fraction_of_tiles
from histstore.wsi.tiling import TilingSpec


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Four 768 x 640 slides (2 cases), written twice with the same seed and once with another."""
    kw = dict(n_slides=4, size=(768, 640))
    a = synth_cohort(tmp_path_factory.mktemp("a"), seed=3, **kw)
    b = synth_cohort(tmp_path_factory.mktemp("b"), seed=3, **kw)
    c = synth_cohort(tmp_path_factory.mktemp("c"), seed=4, **kw)
    return a, b, c


def test_deterministic_for_a_seed(small):
    a, b, c = small
    for name in ("manifest.csv", "labels.csv", "foldchanges.csv", "truth.json"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes()
    for sa, sb, sc in zip(a.slides, b.slides, c.slides):
        assert _sha(sa.path) == _sha(sb.path)
        assert _sha(sa.path) != _sha(sc.path)
    assert (a.out_dir / "foldchanges.csv").read_bytes() != (c.out_dir / "foldchanges.csv").read_bytes()


def test_files_and_ids(synth6):
    slides = synth6.slides
    assert len(slides) == 6
    man = _rows(synth6.manifest)
    assert [r["slide_id"] for r in man] == [s.slide_id for s in slides]
    assert all((synth6.out_dir / r["path"]).is_file() for r in man)  # relative to the manifest
    assert all(r["case_id"] == r["slide_id"][:12] for r in man)
    assert len({r["case_id"] for r in man}) == 3
    labels = {r["slide_id"]: r["tumor"] for r in _rows(synth6.labels)}
    for s in slides:
        # TCGA sample type: 01 = primary tumour, 11 = solid tissue normal
        assert s.slide_id[13:15] == ("01" if s.tumor else "11")
        assert labels[s.slide_id] == ("tumor" if s.tumor else "normal")
        assert s.path.stem == s.slide_id  # the folder scan's default slide_id is the stem
    assert sum(s.tumor for s in slides) == 3
    fc = _rows(synth6.foldchanges)
    assert set(fc[0]) == {"case_id", "gene", "log2_fold_change", "p_adj"}
    assert len(fc) == 3 * len(GENES)
    assert all(0 <= float(r["p_adj"]) <= 1 for r in fc)


def test_csv_files_end_lines_with_lf(synth6):
    """manifest, labels and fold changes end every line with a bare "\n" (no CRLF)."""
    for path in (synth6.manifest, synth6.labels, synth6.foldchanges):
        data = path.read_bytes()
        assert b"\r" not in data, path.name
        assert data.endswith(b"\n") and data.count(b"\n") == len(_rows(path)) + 1, path.name


def test_openslide_reads_them_with_mpp(synth6):
    for s in synth6.slides:
        with open_slide(s.path) as r:
            assert r.vendor == "generic-tiff" and r.mpp == pytest.approx(0.5)
            assert 2 <= r.level_count <= 3 and r.level_downsamples[1] == pytest.approx(4)
            assert (r.width, r.height) == (s.width, s.height)


def test_tile_counts_in_the_requested_range(synth6):
    for s in synth6.slides:
        n = process_slide(s.path, TilingSpec()).n_tiles
        assert 100 <= n <= 300, (s.slide_id, n)


def test_regions_only_on_tumour_slides(synth6):
    truth = synth6.truth()
    for s in synth6.slides:
        t = truth["slides"][s.slide_id]
        if s.tumor:
            assert 1 <= len(t["regions"]) <= 3 and t["tumor_area_fraction"] > 0.05
            for reg in t["regions"]:
                pts = np.asarray(reg["points"])
                assert reg["shape"] == "polygon" and pts.shape[1] == 2
                assert (pts >= 0).all() and (pts[:, 0] < s.width).all() and (pts[:, 1] < s.height).all()
        else:
            assert t["regions"] == [] and t["tumor_area_fraction"] == 0


def _darkness(tiles):
    """Fraction of nuclear (dark, purple) pixels per tile."""
    lum = tiles.astype(np.float32).mean(-1)
    return (lum < 110).mean(axis=(1, 2))


def test_tumour_texture_is_distinct_and_where_planted(tumor_slide, synth6):
    """Tiles inside planted regions hold far more nuclear pixels than stroma tiles; normal
    slides look like the stroma of tumour slides."""
    res = process_slide(tumor_slide.path, TilingSpec())
    g = res.grid
    frac = tumor_fraction_of_tiles(tumor_slide.truth(), g.x, g.y, g.size_l0)
    assert frac.max() == pytest.approx(1.0) and frac.min() == 0.0
    inside, outside = frac > 0.95, frac == 0
    assert inside.sum() >= 10 and outside.sum() >= 10
    with open_slide(tumor_slide.path) as r:
        tiles = read_tiles(r, g.x, g.y, g)
    dark = _darkness(tiles)
    assert dark[inside].mean() > 3 * dark[outside].mean()
    assert dark[inside].min() > dark[outside].max()  # separable tile by tile
    # tumour tiles: darker and bluer overall
    mean_rgb = tiles.reshape(len(tiles), -1, 3).mean(1)
    assert mean_rgb[inside, 0].mean() < mean_rgb[outside, 0].mean() - 20
    # a normal slide's tiles look like the tumour slide's stroma
    normal = next(s for s in synth6.slides if not s.tumor)
    rn = process_slide(normal.path, TilingSpec())
    with open_slide(normal.path) as r:
        dn = _darkness(read_tiles(r, rn.grid.x, rn.grid.y, rn.grid))
    assert dn.mean() < 2 * dark[outside].mean() and dn.max() < dark[inside].min()


def test_colours_are_h_and_e_like(tumor_slide):
    """Stroma pink (R > B > G), nuclei purple (B > R > G), glass near white."""
    with open_slide(tumor_slide.path) as r:
        img = r.read_region(0, 0, 0, r.width, r.height).reshape(-1, 3).astype(int)
    lum = img.mean(1)
    glass = img[lum > 238]
    assert len(glass) > 0.2 * len(img) and (np.abs(np.median(glass, 0) - 243) <= 3).all()
    stroma = img[(lum > 130) & (lum < 200)]
    r, g, b = stroma.mean(0)
    assert r > b > g and r - g > 40
    nuclei = img[lum < 90]
    r, g, b = nuclei.mean(0)
    assert b > r > g


def test_tumor_fraction_of_tiles(tumor_slide):
    t = tumor_slide.truth()
    step = 16
    xs, ys = np.meshgrid(np.arange(0, 2048, step), np.arange(0, 2048, step))
    f = tumor_fraction_of_tiles(t, xs.ravel(), ys.ravel(), step)
    area = f.sum() * step * step
    model = make_slide_model(2048, 2048, 0.5, 5, True, 0.4, 2)
    tissue, tum = model.lowres_masks(4)
    assert area == pytest.approx(tum.sum() * 16, rel=0.02)
    assert tumor_slide.tumor_area_fraction == pytest.approx(tum.sum() / tissue.sum(), rel=0.05)
    # SynthSlide works in place of the truth dict; a normal slide gives zeros
    np.testing.assert_array_equal(tumor_fraction_of_tiles(tumor_slide, xs.ravel(), ys.ravel(), step), f)
    assert not tumor_fraction_of_tiles({"regions": [], "width": 10, "height": 10}, [0], [0], 5).any()


def test_genes_track_burden_as_labelled(tmp_path):
    """Strong genes follow the case's tumour burden closely, weak ones loosely, 'none' not at all."""
    c = synth_cohort(tmp_path, n_slides=48, seed=1, size=(256, 256))
    burden = c.case_burden
    fc = _rows(c.foldchanges)
    corr = {}
    for gene, strength, _ in GENES:
        rows = [r for r in fc if r["gene"] == gene]
        x = np.array([burden[r["case_id"]] for r in rows])
        y = np.array([float(r["log2_fold_change"]) for r in rows])
        corr[gene] = (strength, abs(np.corrcoef(x, y)[0, 1]))
    by = {k: [v for s, v in corr.values() if s == k] for k in ("strong", "weak", "none")}
    assert min(by["strong"]) > 0.85
    assert 0.15 < np.mean(by["weak"]) < 0.75
    assert np.mean(by["none"]) < 0.3
    assert json.loads(c.truth_path.read_text())["genes"]["TP53"]["strength"] == "strong"


def test_windows_render_identically():
    """Rendering is a function of level-0 coordinates: strips agree with the whole."""
    m = make_slide_model(768, 768, 0.5, 9, True, 0.4)
    whole = m.render(0, 0, 768, 768).astype(int)
    left, right = m.render(0, 0, 300, 768), m.render(300, 0, 468, 768)
    assert np.abs(np.concatenate([left, right], 1) - whole).max() <= 2


def test_streamed_bigtiff_path(tmp_path, monkeypatch):
    """The large-slide path (BigTIFF, reduced levels in a memory map) on a small slide, with
    sizes that are not multiples of the tile."""
    import histstore.wsi.synth.tiff as synth_tiff

    monkeypatch.setattr(synth_tiff, "_BIG_PIXELS", 1000)
    s = synth_slide(tmp_path / "big.tiff", size=(1900, 1300), mpp=0.25, seed=2, tumor=True,
                    downsamples=(1, 4, 16))
    assert not list(tmp_path.glob(".synth-*"))  # temporary maps removed
    with open_slide(s.path) as r:
        assert r.level_dimensions == ((1900, 1300), (475, 325), (119, 82))
        assert r.mpp == pytest.approx(0.25)
        full = r.read_region(0, 0, 0, 1900, 1300)
        low = r.read_region(0, 0, 1, 475, 325)
    import cv2

    ref = cv2.resize(full, (475, 325), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(ref - low).mean() < 3
    with open(s.path, "rb") as f:
        assert f.read(4) == b"II+\x00"  # BigTIFF


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    import histstore.wsi.synth as synth

    calls = {"n": 0}
    real = synth.SlideModel.render

    def flaky(self, *a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(synth.SlideModel, "render", flaky)
    with pytest.raises(KeyboardInterrupt):
        synth_slide(tmp_path / "x.tiff", size=(600, 1200), seed=1)
    assert list(tmp_path.iterdir()) == []
