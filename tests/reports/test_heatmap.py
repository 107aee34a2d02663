"""`histstore heatmap`: attention drawn where the planted tumour is; GeoJSON QuPath can load;
one-line errors; features-only slides."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from PIL import Image

from histstore.errors import InvalidInput, MissingStep, NotFound, NotTested, SlideNotFound
from histstore.reports.heatmap import render_heatmap
from histstore.reports.raster import normalise, paint_tiles
from tests.support.planted_runs import plant_run, register_slide_without_pixels


def _q(store, sql, *params):
    with store.read() as conn:
        return conn.exec_driver_sql(sql, params).all()


def _tested(t, tumor=True):
    """(slide_id, fold) of the run's test slides, tumour or normal."""
    rows = _q(t.store, "SELECT slide_id, fold FROM splits WHERE run_id = ? AND subset = 'test' ORDER BY 1",
              t.run_id)
    return [(s, f) for s, f in rows if t.truth["slides"][s]["tumor"] == tumor]


def _region_mask(truth: dict, scale, shape) -> np.ndarray:
    """The planted regions rasterised on the heat grid (pixel centres, like paint_tiles)."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    for r in truth["regions"]:
        p = np.asarray(r["points"], np.float64) * np.asarray(scale)
        cv2.fillPoly(mask, [np.round((p - 0.5) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return mask.astype(bool)


# ------------------------------------------------------------------------------ pixels
def test_hottest_region_lies_on_planted_tumour(trained, tmp_path):
    """On every tested tumour slide, the rendered heat grid is hotter inside the planted regions
    than outside, and its hottest tenth lies mostly inside them (they cover about a quarter of
    the tiles)."""
    inside_hot, base, hotter = [], [], 0
    tumour = _tested(trained)
    assert len(tumour) == 10
    for sid, fold in tumour:
        r = render_heatmap(trained.store, trained.run_id, sid, out=tmp_path / f"{sid}.png", max_side=384)
        assert r.fold == fold and r.path.is_file()
        heat = r.heat
        covered = np.isfinite(heat)
        regions = _region_mask(trained.truth["slides"][sid], r.scale, heat.shape)
        assert np.nanmax(heat) == pytest.approx(1.0) and np.nanmin(heat) == pytest.approx(0.0)
        hot = covered & (heat >= np.quantile(heat[covered], 0.9))
        inside_hot.append((hot & regions).sum() / hot.sum())
        base.append((covered & regions).sum() / covered.sum())
        hotter += heat[covered & regions].mean() > heat[covered & ~regions].mean()
    assert hotter >= 8, hotter
    assert np.mean(inside_hot) >= 0.55, (inside_hot, base)
    assert np.mean(inside_hot) > np.mean(base) + 0.25


def test_png_is_the_blended_thumbnail_with_top_gallery(trained, tmp_path):
    sid, fold = _tested(trained)[0]
    r = render_heatmap(trained.store, trained.run_id, sid, top=3, alpha=0.5, cmap="viridis",
                       norm="percentile")
    # default location, registered once even when drawn twice
    assert r.path == trained.store.artifacts_dir / "heatmaps" / f"run{trained.run_id}" / f"{sid}_fold{fold}.png"
    assert r.gallery_path == r.path.with_name(f"{sid}_fold{fold}_top3.png")
    render_heatmap(trained.store, trained.run_id, sid, top=3, alpha=0.5, cmap="viridis", norm="percentile")
    rows = _q(trained.store, "SELECT kind, path, run_id, slide_id, fold FROM artifacts WHERE slide_id = ? "
                             "AND kind LIKE 'heatmap%' AND path LIKE 'artifacts/%' ORDER BY kind", sid)
    assert rows == [("heatmap-png", f"artifacts/heatmaps/run{trained.run_id}/{sid}_fold{fold}.png",
                     trained.run_id, sid, fold),
                    ("heatmap-top-tiles", f"artifacts/heatmaps/run{trained.run_id}/{sid}_fold{fold}_top3.png",
                     trained.run_id, sid, fold)]
    img = np.asarray(Image.open(r.path).convert("RGB"))
    assert img.shape[0] > 600 and img.shape[1] > 600
    # the heat grid is at thumbnail scale: 2048 px -> 1024 (--max-side default)
    assert r.heat.shape == (1024, 1024) and r.scale == (0.5, 0.5)
    gallery = np.asarray(Image.open(r.gallery_path).convert("RGB"))
    assert gallery.shape[1] > 3 * 64 and gallery.std() > 10  # tiles, not a blank page
    # the colour of a fully covered pixel is the blend of the thumbnail and the colour map
    from histstore.reports.raster import blend
    import matplotlib

    rgb = np.full((2, 2, 3), 200, np.uint8)
    heat = np.array([[1.0, np.nan], [0.0, 0.5]], np.float32)
    out = blend(rgb, heat, matplotlib.colormaps["viridis"], 0.5)
    top = np.asarray(matplotlib.colormaps["viridis"](1.0)[:3]) * 255
    assert np.allclose(out[0, 0], 0.5 * 200 + 0.5 * top, atol=1)
    assert (out[0, 1] == 200).all()  # no tile: the slide shows through


def test_geojson_is_valid_and_has_one_feature_per_tile(trained, tmp_path):
    sid, fold = _tested(trained)[1]
    r = render_heatmap(trained.store, trained.run_id, sid, out=tmp_path / "tiles.geojson", top=2)
    assert r.path.suffix == ".geojson" and r.gallery_path is not None
    doc = json.loads(r.path.read_text())
    tiles = _q(trained.store, "SELECT t.tile_id, t.idx, t.x, t.y, t.size_l0 FROM attention a JOIN tiles t "
                              "USING (tile_id) WHERE a.run_id = ? AND a.fold = ? AND t.slide_id = ?",
               trained.run_id, fold, sid)
    width, height = _q(trained.store, "SELECT width, height FROM slides WHERE slide_id = ?", sid)[0]
    assert doc["type"] == "FeatureCollection"
    feats = doc["features"]
    assert len(feats) == len(tiles) == r.n_tiles
    assert sorted(f["properties"]["tile_id"] for f in feats) == sorted(t[0] for t in tiles)
    by_id = {t[0]: t for t in tiles}
    ids = set()
    for f in feats:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        uuid.UUID(f["id"])
        ids.add(f["id"])
        rings = f["geometry"]["coordinates"]
        assert len(rings) == 1 and len(rings[0]) == 5
        ring = np.asarray(rings[0])
        assert (ring[0] == ring[-1]).all()  # closed
        assert (ring[:, 0] >= 0).all() and (ring[:, 0] <= width).all()
        assert (ring[:, 1] >= 0).all() and (ring[:, 1] <= height).all()
        p = f["properties"]
        _, idx, x, y, size = by_id[p["tile_id"]]
        assert p["idx"] == idx and ring.min(0).tolist() == [x, y] and ring.max(0).tolist() == [x + size, y + size]
        # counter-clockwise in GeoJSON's y-up sense (RFC 7946): positive shoelace area
        area = 0.5 * np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
        assert area == pytest.approx(size * size)
        # QuPath's fields: objectType, measurements {name: number}, color [r, g, b]
        assert p["objectType"] == "detection"
        assert set(p["measurements"]) == {"attention", "attention_norm", "attention_rank"}
        assert all(isinstance(v, (int, float)) for v in p["measurements"].values())
        assert len(p["color"]) == 3 and all(0 <= c <= 255 for c in p["color"])
        assert 0.0 <= p["attention_norm"] <= 1.0
        if "classification" in p:
            assert p["classification"]["name"] in ("Attention high", "Attention low")
    assert len(ids) == len(feats)
    top = max(feats, key=lambda f: f["properties"]["attention"])["properties"]
    assert top["attention_norm"] == 1.0 and top["measurements"]["attention_rank"] == 1
    assert top["classification"]["name"] == "Attention high"
    assert doc["histstore"]["run_id"] == trained.run_id and doc["histstore"]["attention_kind"] == "softmax"
    assert _q(trained.store, "SELECT count(*) FROM artifacts WHERE path = ? AND kind = 'heatmap-geojson'",
              str(r.path)) == [(1,)]
    # --out FOLDER takes the default file name
    again = render_heatmap(trained.store, trained.run_id, sid, out=tmp_path, fmt="geojson")
    assert again.path == tmp_path / f"{sid}_fold{fold}.geojson" and again.path.is_file()


# ------------------------------------------------------------------------------ errors
def _one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_errors_are_one_line_with_hints(trained):
    store, rid = trained.store, trained.run_id
    sid, fold = _tested(trained)[0]
    with pytest.raises(NotFound, match="no run 999"):
        render_heatmap(store, 999, sid)
    with pytest.raises(SlideNotFound, match="no slide 'nope'") as e:
        render_heatmap(store, rid, "nope")
    assert "splits" in e.value.hint
    other = (fold + 1) % 5
    with pytest.raises(NotTested) as e:
        render_heatmap(store, rid, sid, fold=other)
    text = _one_line(e.value)
    assert f"not tested in fold {other}" in text and f"tested in fold {fold}" in text
    assert e.value.hint == f"use --fold {fold} or leave --fold out"
    with pytest.raises(NotTested, match="has no fold 7"):
        render_heatmap(store, rid, sid, fold=7)
    with pytest.raises(InvalidInput, match="unknown colour map"):
        render_heatmap(store, rid, sid, cmap="nope")
    with pytest.raises(InvalidInput, match="alpha"):
        render_heatmap(store, rid, sid, alpha=2)
    with pytest.raises(InvalidInput, match="names a png file but --format is geojson"):
        render_heatmap(store, rid, sid, out="x.png", fmt="geojson")
    # the CLI prints them as one line, exit code 1, no traceback
    from click.testing import CliRunner

    from histstore.cli.main import main

    res = CliRunner().invoke(main, ["--store", str(store.root), "heatmap", "--run", rid, "--slide", sid,
                                    "--fold", other])
    assert res.exit_code == 1 and "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "not tested in fold" in lines[0] and f"--fold {fold}" in lines[0]


def test_slide_not_in_run_and_run_without_attention(trained):
    store = trained.store
    normal, _ = _tested(trained, tumor=False)[0]
    tumour, _ = _tested(trained)[0]
    # a run that tested only the normal slide, and stored no attention at all
    rid = plant_run(store, {normal: ("normal", None)}, attention=False, cohort="syn20")
    with pytest.raises(NotTested) as e:
        render_heatmap(store, rid, tumour)
    assert f"slide {tumour} is not in run {rid}" in _one_line(e.value) and normal in str(e.value)
    with pytest.raises(MissingStep) as e:
        render_heatmap(store, rid, normal)
    assert "stored no tile attention" in _one_line(e.value) and "histstore train" in e.value.hint


def test_features_only_slide_gets_a_blank_canvas(trained):
    store = trained.store
    g = np.arange(0, 2560, 256)
    x, y = (a.ravel() for a in np.meshgrid(g, g[:6]))
    register_slide_without_pixels(store, "FEAT-ONLY-1", x, y, 256)
    scores = np.exp(-((x - 1300) ** 2 + (y - 700) ** 2) / 4e5)  # one hot spot
    rid = plant_run(store, {"FEAT-ONLY-1": ("tumor", scores / scores.sum())}, model="max")
    r = render_heatmap(store, rid, "FEAT-ONLY-1", top=4)
    assert r.path.is_file() and r.gallery_path is None
    assert any("features-only" in n and "blank canvas" in n for n in r.notes)
    assert any("no top-tiles gallery" in n for n in r.notes)
    # canvas = the tiles' extent (2560 x 1536 level-0 px), every tile painted, hottest at the spot
    assert r.heat.shape == (614, 1024) and np.isfinite(r.heat).all()
    row, col = np.unravel_index(np.nanargmax(r.heat), r.heat.shape)
    assert abs(col / r.scale[0] - 1300) < 256 and abs(row / r.scale[1] - 700) < 256
    assert r.attention_kind == "share"


# ------------------------------------------------------------------------------ pieces
def test_paint_tiles_is_exact_and_vectorised():
    # two overlapping boxes average; uncovered is NaN; a box smaller than a pixel still shows
    heat = paint_tiles([0, 2, 8], [0, 0, 8], [4, 4, 0.1], [1.0, 3.0, 5.0], (1.0, 1.0), (10, 10))
    assert np.isnan(heat[5, 5]) and heat[0, 0] == 1.0 and heat[0, 3] == 2.0 and heat[0, 5] == 3.0
    assert heat[8, 8] == 5.0 and np.isfinite(heat).sum() == 16 + 8 + 1
    # scaled: a 256 px grid of 20,000 tiles fills its bounding box at 1/16
    n = 141
    gx, gy = (a.ravel() for a in np.meshgrid(np.arange(n) * 256, np.arange(n) * 256))
    v = np.random.default_rng(0).random(gx.size)
    heat = paint_tiles(gx, gy, 256, v, (1 / 16, 1 / 16), (n * 16, n * 16))
    assert np.isfinite(heat).all()
    assert np.allclose(heat[::16, ::16].ravel(), v)


def test_normalise():
    s = np.array([3.0, 1.0, 2.0, 2.0])
    assert normalise(s, "minmax").tolist() == [1.0, 0.0, 0.5, 0.5]
    assert normalise(s, "percentile").tolist() == pytest.approx([1.0, 0.0, 0.5, 0.5])
    assert normalise(np.ones(3), "minmax").tolist() == [0.5] * 3
    with pytest.raises(InvalidInput):
        normalise(s, "zscore")


def test_attention_kinds_match_the_models():
    from histstore.mil.models import MODELS
    from histstore.reports.common import ATTENTION_KIND

    assert {name: cls.attention_kind for name, cls in MODELS.items()} == ATTENTION_KIND


def test_importing_the_reports_is_cheap():
    """No torch, no matplotlib until something is drawn (the CLI starts fast)."""
    import subprocess
    import sys

    code = ("import sys, histstore.reports.heatmap, histstore.reports.report, histstore.cli.report_cmds; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
