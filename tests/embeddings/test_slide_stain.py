"""Per-slide stain normalisation: tiles of a slide keep their haematoxylin order, a slide
re-stained as a whole comes back to the reference, fits and fallbacks are in the catalog,
per-tile fitting stays available, bad values are refused."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from histstore.embeddings.stain import HE_REF, MAX_C_REF, apply_stain_fit, fit_stains, macenko_normalize
from histstore.errors import InvalidInput
from tests.encoders.synth_tiles import concentrations, perturbed_stains, render


def _mean_haematoxylin(tile: np.ndarray) -> float:
    """Mean H concentration of an RGB tile unmixed with the reference stains (what the
    normalised tiles are rendered with)."""
    od = -np.log((tile.reshape(-1, 3).astype(float) + 1.0) / 240.0)
    return float(np.linalg.lstsq(HE_REF.double().numpy(), od.T, rcond=None)[0][0].mean())


def test_tiles_of_a_slide_keep_their_haematoxylin_order():
    # one slide (one stain matrix); tile 0 has 1.5x the haematoxylin, tile 1 0.6x
    he = perturbed_stains(7)
    scales = [1.5, 0.6, 1.0, 1.0, 1.0, 1.0]
    tiles = torch.from_numpy(np.stack([render(concentrations(64, s) * np.array([f, 1.0]).reshape(2, 1, 1), he, seed=s)
                                       for s, f in enumerate(scales)]))
    fit = fit_stains(tiles)
    assert fit.ok and fit.stain_matrix.shape == (2, 3) and fit.max_c.shape == (2,)
    per_slide, ok = apply_stain_fit(tiles, fit.stain_matrix, fit.max_c)
    assert ok.all()
    per_tile = macenko_normalize(tiles)

    def ratio(batch):
        return _mean_haematoxylin(batch[0].numpy()) / _mean_haematoxylin(batch[1].numpy())

    assert ratio(tiles) > 2.0
    assert ratio(per_slide) > 2.0      # darker stays darker, by about as much
    assert ratio(per_tile) < 1.2       # each tile rescaled to its own percentile: the difference is gone


@pytest.mark.parametrize("seed", range(2))
def test_slide_restained_as_a_whole_comes_back_to_the_reference(seed):
    # a slide at the reference stains (its pooled 99th percentiles = MAX_C_REF) ...
    conc = np.stack([concentrations(64, s) for s in range(8)])
    p99 = np.percentile(conc.transpose(1, 0, 2, 3).reshape(2, -1), 99, axis=1)
    conc *= (MAX_C_REF.numpy() / p99).reshape(1, 2, 1, 1)
    reference = np.stack([render(c, seed=s) for s, c in enumerate(conc)]).astype(float)
    # ... re-stained as a whole: other stain vectors, 1.3x haematoxylin, 0.75x eosin
    he = perturbed_stains(11 + seed)
    shifted = np.stack([render(c * np.array([1.3, 0.75]).reshape(2, 1, 1), he, seed=s + 10) for s, c in enumerate(conc)])
    fit = fit_stains(torch.from_numpy(shifted))
    assert fit.ok
    # the fit finds the stain vectors used (unit columns of he) and the concentration shift
    cos = (fit.stain_matrix / np.linalg.norm(fit.stain_matrix, axis=1, keepdims=True) * he.T).sum(axis=1)
    assert (cos > 0.99).all(), cos
    np.testing.assert_allclose(fit.max_c / MAX_C_REF.numpy(), [1.3, 0.75], rtol=0.15)
    out, ok = apply_stain_fit(torch.from_numpy(shifted), fit.stain_matrix, fit.max_c)
    assert ok.all()
    before = np.abs(shifted - reference).mean()
    after = np.abs(out.numpy() - reference).mean()
    assert before > 9 and after < 0.45 * before and after < 5, (before, after)


def test_restained_slide_file_normalises_to_the_original(tmp_path):
    """Through slide files (JPEG tiles, OpenSlide, the seeded tile sample): one synthetic
    slide stained at the reference and by another site (other stain vectors, 1.3x
    haematoxylin, 0.75x eosin; histstore.wsi.synth.stain) gives nearly the same tiles after
    each slide's own fit."""
    from histstore.embeddings.dataset import SlideTiles
    from histstore.embeddings.slide_stain import fit_slide_stain
    from histstore.embeddings.stain_settings import StainSettings
    from histstore.wsi.process import read_tiles
    from histstore.wsi.reader import open_slide
    from histstore.wsi.synth.image import make_slide_model
    from histstore.wsi.synth.stain import OD_EOSIN, OD_HEMATOXYLIN, SiteStain
    from histstore.wsi.synth.tiff import write_slide_tiff

    other = SiteStain("SB", tuple((OD_HEMATOXYLIN * [1.25, 0.8, 1.2]).tolist()),
                      tuple((OD_EOSIN * [0.8, 1.1, 1.3]).tolist()), 1.3, 0.75, 0.0)
    for name, stain in (("a", None), ("b", other)):
        write_slide_tiff(tmp_path / f"{name}.tiff", make_slide_model(768, 768, 0.5, seed=4, tumor=True, stain=stain))
    xy = np.array([(x, y) for y in range(128, 640, 64) for x in range(128, 640, 64)])
    spec = {"read_level": 0, "read_size": 64, "tile_size": 64}
    settings = StainSettings(max_tiles=48)
    normed, raw = [], []
    for name in ("a", "b"):
        slide = SlideTiles(name, str(tmp_path / f"{name}.tiff"), 0, spec, xy[:, 0], xy[:, 1], np.arange(len(xy)))
        fitted = fit_slide_stain(slide, settings)
        assert fitted.fit.ok and fitted.tiles_sampled == 48
        with open_slide(slide.path, assume_mpp=0.5) as reader:
            px = read_tiles(reader, slide.x, slide.y, spec)
        raw.append(px.astype(float))
        normed.append(apply_stain_fit(torch.from_numpy(px), fitted.fit.stain_matrix, fitted.fit.max_c)[0].numpy().astype(float))
    before = np.abs(raw[0] - raw[1]).mean()
    after = np.abs(normed[0] - normed[1]).mean()
    assert before > 10 and after < 0.4 * before, (before, after)


def test_sample_is_seeded_and_spread_over_the_slide():
    from histstore.embeddings.slide_stain import sample_tiles

    a = sample_tiles(1000, 128, 0, "S1")
    assert len(a) == 128 and len(set(a.tolist())) == 128
    assert np.array_equal(a, sample_tiles(1000, 128, 0, "S1"))
    assert not np.array_equal(a, sample_tiles(1000, 128, 1, "S1"))
    assert not np.array_equal(a, sample_tiles(1000, 128, 0, "S2"))
    # one tile in each of the 128 equal strata of the idx range
    assert np.array_equal(np.floor(a / (1000 / 128)).astype(int), np.arange(128))
    assert np.array_equal(sample_tiles(50, 128, 0, "S1"), np.arange(50))


def test_failed_fit_says_why_and_never_raises():
    white = torch.full((4, 32, 32, 3), 250, dtype=torch.uint8)
    fit = fit_stains(white)
    assert not fit.ok and fit.stain_matrix is None and "too little stained tissue" in fit.reason
    grey = torch.full((4, 32, 32, 3), 100, dtype=torch.uint8)  # one direction only
    fit = fit_stains(grey)
    assert not fit.ok and "single stain" in fit.reason
    assert not fit_stains(torch.zeros(0, 8, 8, 3, dtype=torch.uint8)).ok


# --- through `embed`: a normal slide and a faintly stained one ----------------------------

@dataclass
class _FaintSlide:
    """Pale eosin on glass: the tissue detector tiles it, but no pixel reaches Macenko's
    optical-density threshold in every channel, so no stain fit is possible."""
    width: int = 1024
    height: int = 1024
    mpp: float = 0.5
    seed: int = 0

    def render(self, x0, y0, w, h):
        yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w]
        inside = (xx - 512) ** 2 + (yy - 512) ** 2 < 400 ** 2
        density = (0.6 + 0.4 * np.random.default_rng(x0 * 7 + y0).random((h, w))) * inside
        od = 0.3 * np.array([0.2159, 0.8012, 0.5581]) + 0.03 * np.array([0.5626, 0.7201, 0.4062])
        return np.clip(np.round(240 * np.exp(-od * density[..., None])), 0, 255).astype(np.uint8)


@pytest.fixture
def two_slides(store, tmp_path):
    from histstore.ingest import ingest
    from histstore.wsi.synth import synth_slide
    from histstore.wsi.synth.tiff import write_slide_tiff
    from histstore.wsi.tiling import TilingSpec

    synth_slide(tmp_path / "NORMAL-1.tiff", size=(1024, 1024), seed=4)
    write_slide_tiff(tmp_path / "FAINT-1.tiff", _FaintSlide())
    m = tmp_path / "m.csv"
    m.write_text(f"path,slide_id,case_id\n{tmp_path / 'NORMAL-1.tiff'},NORMAL-1,C1\n"
                 f"{tmp_path / 'FAINT-1.tiff'},FAINT-1,C2\n")
    ingest(store, m, TilingSpec(target_mpp=1.0, tile_size=64), cohort="two", workers=1,
           show_progress=False)
    return store


OPTS = dict(allow_random=True, batch_size=32, workers=0, precision="fp32", show_progress=False)


def _stain_rows(store, set_name):
    with store.read() as conn:
        rows = conn.exec_driver_sql(
            "SELECT s.slide_id, s.method, s.stain_matrix, s.max_concentrations, s.tiles_sampled, s.n_tiles, "
            "s.tiles_fallback, s.note FROM slide_stain s JOIN embedding_sets e USING (embedding_set_id) "
            "WHERE e.name = ? ORDER BY 1", (set_name,)).all()
    return {r[0]: r[1:] for r in rows}


def test_fallbacks_recorded_and_per_tile_option(two_slides):
    from histstore.embed import embed
    from histstore.embeddings.dataset import TileDataset, load_slide_tiles

    rep = embed(two_slides, "resnet18", "two", **OPTS)  # default: per slide
    rows = _stain_rows(two_slides, rep.embedding_set)
    method, matrix, max_c, sampled, n, fallback, note = rows["NORMAL-1"]
    assert method == "macenko" and np.array(matrix).shape == (2, 3) and len(max_c) == 2
    assert sampled == min(n, 128) and fallback == 0 and note is None
    method, matrix, max_c, sampled, n, fallback, note = rows["FAINT-1"]
    assert matrix is None and max_c is None and fallback == n > 0 and "too little stained tissue" in note
    assert any("FAINT-1" in w and "no stain normalisation" in w for w in rep.warnings)

    tile = embed(two_slides, "resnet18", "two", stain_norm="macenko-tile", **OPTS)
    assert tile.embedding_set != rep.embedding_set and tile.embedding_set.endswith("-macenko-tile")
    with two_slides.read() as conn:
        settings = dict(conn.exec_driver_sql("SELECT name, settings->>'$.stain_fit.scope' FROM embedding_sets").all())
        slides = load_slide_tiles(conn, ["NORMAL-1", "FAINT-1"], _tiling_key(conn, rep.embedding_set))
    assert settings == {rep.embedding_set: "slide", tile.embedding_set: "tile"}
    rows = _stain_rows(two_slides, tile.embedding_set)
    # per tile: the count is the tiles whose own fit failed
    ds = TileDataset(slides)
    pixels = torch.from_numpy(np.stack([ds[i][0] for i in range(len(ds))]))
    ds.close()
    _, ok = macenko_normalize(pixels, return_mask=True)
    n_normal = len(slides[0])
    assert rows["NORMAL-1"][:4] == ("macenko-tile", None, None, None)
    assert rows["NORMAL-1"][5] == int((~ok[:n_normal]).sum())
    assert rows["FAINT-1"][5] == rows["FAINT-1"][4] == len(slides[1])


def _tiling_key(conn, set_name):
    return conn.exec_driver_sql("SELECT tiling_key FROM embedding_sets WHERE name = ?", (set_name,)).scalar()


def test_bad_stain_options_are_refused_before_anything_else(store, cli):
    from histstore.embed import embed

    # checked first: an empty store would otherwise raise EmptyCohort
    with pytest.raises(InvalidInput, match="--stain-norm must be one of macenko, macenko-tile, none"):
        embed(store, "resnet18", "two", stain_norm="reinhard", **OPTS)
    with pytest.raises(InvalidInput, match="max_tiles"):
        embed(store, "resnet18", "two", stain_tiles=0, **OPTS)
    res = cli("embed", "--encoder", "resnet18", "--cohort", "two", "--random-init", "--stain-norm", "reinhard")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "'reinhard' is not one of 'macenko', 'macenko-tile', 'none'" in res.output
    assert "Error" in res.output.strip().splitlines()[-1]
    with store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM embedding_sets").scalar() == 0


@pytest.mark.parametrize("background", [True, False], ids=["reading-thread", "in-turn"])
def test_stain_on_the_reading_thread_gives_the_same_embeddings(two_slides, monkeypatch, background):
    """On a CPU, with the in-process reader (workers=0) the fit, its application and the
    preprocessing run where the tiles are read (a background thread, the default, or the
    caller's thread in turn with the model); with reader processes they run on
    the caller's thread after the batch arrives. The embeddings and the recorded fits must
    not depend on where they ran."""
    import shutil

    from histstore.embed import embed
    from histstore.embeddings import slide_embed
    from histstore.embeddings.arrays import read_array
    from histstore.embeddings.sets import resolve_set
    from histstore.store import Store

    copy = Store.open(shutil.copytree(two_slides.root, two_slides.root.parent / "copy"))
    monkeypatch.setattr(slide_embed, "READ_IN_BACKGROUND", background)
    threaded = embed(two_slides, "resnet18", "two", **OPTS)
    monkeypatch.undo()
    caller = embed(copy, "resnet18", "two", **{**OPTS, "workers": 1})
    assert threaded.n_tiles == caller.n_tiles > 0 and threaded.embedding_set == caller.embedding_set
    dirs = []
    for st in (two_slides, copy):
        with st.read() as conn:
            dirs.append(resolve_set(conn, threaded.embedding_set).directory(st))
    for slide in ("NORMAL-1", "FAINT-1"):
        np.testing.assert_array_equal(read_array(dirs[0], slide), read_array(dirs[1], slide))
    assert _stain_rows(two_slides, threaded.embedding_set) == _stain_rows(copy, caller.embedding_set)
