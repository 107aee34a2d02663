"""The viewer's endpoints: DZI tiles that are the slide's pixels, an attention overlay that is
hottest over the planted tumour, the tile under a click, the top tiles, the gene switch, a
tiling overlay, and the running jobs."""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image


def _image(r, media: str) -> Image.Image:
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.headers["content-type"] == media
    return Image.open(io.BytesIO(r.content))


def _dzi(client, sid):
    r = client.get(f"/dzi/{sid}.dzi")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(r.text)
    size = root.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    return int(root.get("TileSize")), int(root.get("Overlap")), int(size.get("Width")), int(size.get("Height"))


@pytest.mark.parametrize("which", ["tumour", "real"])
def test_dzi_tiles_are_the_slides_pixels(client, web, which):
    import math

    import openslide

    sid = getattr(web, which)
    tile, overlap, width, height = _dzi(client, sid)
    with openslide.OpenSlide(str(web.store.resolve(_slide_path(web, sid)))) as osr:
        assert (width, height) == osr.dimensions
        top = math.ceil(math.log2(max(width, height)))
        # a tile in the middle of the full-resolution level: 254 + 2 x 1 overlap
        col, row = 2, 3
        img = _image(client.get(f"/dzi/{sid}_files/{top}/{col}_{row}.jpeg"), "image/jpeg")
        assert img.size == (tile + 2 * overlap, tile + 2 * overlap)
        x0, y0 = col * tile - overlap, row * tile - overlap
        ref = np.asarray(osr.read_region((x0, y0), 0, img.size).convert("RGB"), np.float32)
        assert np.abs(np.asarray(img.convert("RGB"), np.float32) - ref).mean() < 6  # JPEG, q80
        corner = _image(client.get(f"/dzi/{sid}_files/{top}/0_0.jpeg"), "image/jpeg")
        assert corner.size == (tile + overlap, tile + overlap)
        whole = _image(client.get(f"/dzi/{sid}_files/0/0_0.jpeg"), "image/jpeg")
        assert whole.size == (1, 1)
    assert client.get(f"/dzi/{sid}_files/{top + 1}/0_0.jpeg").status_code == 404
    assert client.get(f"/dzi/{sid}_files/{top}/999_0.jpeg").status_code == 404


def _slide_path(web, sid):
    with web.store.read() as conn:
        return conn.exec_driver_sql("SELECT path FROM slides WHERE slide_id = ?", (sid,)).scalar()


def _heat(png: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Invert the inferno colours of an attention overlay back to [0, 1] (NaN: transparent)."""
    import matplotlib

    rgba = np.asarray(png.convert("RGBA"))
    lut = matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255
    rgb = rgba[..., :3].reshape(-1, 3).astype(np.float32)
    nearest = np.argmin(((rgb[:, None, :] - lut[None, :, :]) ** 2).sum(-1), axis=1)
    heat = (nearest / 255.0).reshape(rgba.shape[:2])
    heat[rgba[..., 3] == 0] = np.nan
    return heat, rgba


def _regions(truth_slide: dict, shape) -> np.ndarray:
    import cv2

    sx, sy = shape[1] / truth_slide["width"], shape[0] / truth_slide["height"]
    mask = np.zeros(shape, np.uint8)
    for r in truth_slide["regions"]:
        p = np.asarray(r["points"], np.float64) * [sx, sy]
        cv2.fillPoly(mask, [np.round((p - 0.5) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return mask.astype(bool)


def test_attention_overlay_is_hottest_over_the_planted_tumour(client, web):
    sid = web.tumour
    meta = client.get(f"/api/slides/{sid}/attention?run={web.run_id}&fold=0")
    assert meta.status_code == 200 and meta.headers["content-type"] == "application/json"
    info = meta.json()
    png = _image(client.get(info["overlay"]), "image/png")
    heat, rgba = _heat(png)
    truth = web.truth["slides"][sid]
    assert png.size[0] / png.size[1] == pytest.approx(truth["width"] / truth["height"], rel=0.01)
    inside = _regions(truth, heat.shape)
    covered = np.isfinite(heat)
    assert covered.mean() > 0.2 and (inside & covered).sum() > 50
    assert np.nanmean(heat[inside & covered]) > np.nanmean(heat[~inside & covered]) + 0.4
    hot = covered & (heat >= np.nanquantile(heat, 0.9))
    assert (hot & inside).sum() / hot.sum() > 0.8
    # the same colours as the PNG heatmaps' colour bar
    assert info["label"].startswith("attention weight")


def test_top_tiles_lie_in_the_planted_tumour(client, web):
    from histstore.wsi.synth import tumor_fraction_of_tiles

    info = client.get(f"/api/slides/{web.tumour}/attention?run={web.run_id}&fold=0&k=5").json()
    top = info["top"]
    assert [t["rank"] for t in top] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in zip(top, top[1:]))
    frac = tumor_fraction_of_tiles(web.truth["slides"][web.tumour], [t["x"] for t in top], [t["y"] for t in top],
                                   top[0]["size_l0"])
    assert frac.min() > 0.5, frac


def test_gene_switch_changes_the_map(client, web):
    hot_inside = {}
    for gene, rid in web.genes.items():
        info = client.get(f"/api/slides/{web.tumour}/attention?run={rid}&fold=0").json()
        assert info["task"] == f"de:{gene}"
        heat, _ = _heat(_image(client.get(info["overlay"]), "image/png"))
        inside = _regions(web.truth["slides"][web.tumour], heat.shape) & np.isfinite(heat)
        outside = ~_regions(web.truth["slides"][web.tumour], heat.shape) & np.isfinite(heat)
        hot_inside[gene] = np.nanmean(heat[inside]) - np.nanmean(heat[outside])
    assert hot_inside["TP53"] > 0.3 and hot_inside["EGFR"] < -0.3, hot_inside
    # the parent holds no attention itself: a one-line error naming its gene runs
    r = client.get(f"/api/slides/{web.tumour}/attention?run={web.gene_run}")
    assert r.status_code == 400 and "gene runs" in r.json()["error"]


def test_tile_at_a_click(client, web):
    with web.store.read() as conn:
        tid, x, y, size, tissue = conn.exec_driver_sql(
            "SELECT tile_id, x, y, size_l0, tissue_fraction FROM tiles WHERE slide_id = ? ORDER BY idx LIMIT 1 OFFSET 7",
            (web.tumour,)).one()
        score = conn.exec_driver_sql("SELECT score FROM attention WHERE run_id = ? AND tile_id = ?",
                                     (web.run_id, tid)).scalar()
    r = client.get(f"/api/slides/{web.tumour}/tile-at?x={x + size / 2}&y={y + 1.5}&run={web.run_id}&fold=0")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    t = r.json()["tile"]
    assert (t["tile_id"], t["x"], t["y"]) == (tid, x, y)
    assert t["score"] == pytest.approx(score, rel=1e-6) and t["tissue_fraction"] == pytest.approx(tissue, rel=1e-6)
    assert 1 <= t["rank_in_slide"] <= t["n_tiles"] and 0 <= t["score_norm"] <= 1
    plain = client.get(f"/api/slides/{web.tumour}/tile-at?x={x + 1}&y={y + 1}").json()["tile"]
    assert plain["tile_id"] == tid and "score" not in plain
    assert client.get(f"/api/slides/{web.tumour}/tile-at?x=1&y=1").json() == {"tile": None}  # glass
    assert client.get(f"/api/slides/{web.tumour}/tile-at?x=nan&y=1").status_code == 400


def test_tiling_overlay_outlines_the_tiles(client, web):
    with web.store.read() as conn:
        tiling, n = conn.exec_driver_sql("SELECT tiling_id, n_tiles FROM tilings WHERE slide_id = ?",
                                         (web.tumour,)).one()
    png = _image(client.get(f"/api/slides/{web.tumour}/tilings/{tiling}/overlay.png"), "image/png")
    rgba = np.asarray(png.convert("RGBA"))
    assert png.size == (128, 128)  # 2048 px slide, 128 px tiles, 8 px per tile
    assert (rgba[..., 3] > 0).sum() == n * 64  # every tile's 8 x 8 px, nothing else
    assert client.get(f"/api/slides/{web.tumour}/tilings/999999/overlay.png").status_code == 404


def test_running_jobs_are_listed(client, web):
    r = client.get("/api/jobs")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    jobs = {j["run_id"]: j for j in r.json()["jobs"]}
    assert set(jobs) == {web.running}
    job = jobs[web.running]
    assert job["kind"] == "train"
    # planted by this (live) process with 0 of 5 folds done
    assert job["state"] == "running" and job["progress"] == "0/5 folds" and job["fraction"] == 0.0


def test_qc_thumbnail_and_artifact_files(client, web):
    with web.store.read() as conn:
        tiling = conn.exec_driver_sql("SELECT tiling_id FROM tilings WHERE slide_id = ?", (web.tumour,)).scalar()
    qc = _image(client.get(f"/slides/{web.tumour}/qc/{tiling}.png"), "image/png")
    assert min(qc.size) > 50
    art = _image(client.get(f"/artifacts/{web.artifact_id}"), "image/png")
    assert min(art.size) > 100
    assert client.get("/artifacts/987654").status_code == 404
    # a tiling of another slide is not this slide's
    with web.store.read() as conn:
        other = conn.exec_driver_sql("SELECT tiling_id FROM tilings WHERE slide_id = ?", (web.normal,)).scalar()
    assert client.get(f"/slides/{web.tumour}/qc/{other}.png").status_code == 404


def test_viewer_library_and_own_files(client):
    js = client.get("/vendor/openseadragon/openseadragon.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert b"OpenSeadragon" in js.content[:2000]
    icon = client.get("/vendor/openseadragon/images/home_rest.png")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/png"
    for name, media in (("viewer.js", "text/javascript"), ("style.css", "text/css"), ("jobs.js", "text/javascript")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media)
