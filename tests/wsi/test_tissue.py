"""Tissue detection (HSV saturation, median blur, Otsu, close, area filters) and the QC image."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from histstore.wsi.reader import open_slide
from histstore.wsi.synth import make_slide_model
from histstore.wsi.tissue import (
    TissueMask,
    detect_tissue,
    mask_downsample,
    render_qc_png,
    tissue_mask_from_rgb,
)

from .conftest import write_pyramid

PINK = (205, 130, 180)
GLASS = (243, 243, 241)


def test_mask_resolution_rule():
    assert mask_downsample(100_000, 80_000) == 64  # a full slide: the authors' 64x
    assert mask_downsample(2220, 2967) == pytest.approx(2967 / 1024)  # a crop: keep ~1024 px
    assert mask_downsample(500, 300) == 1


def test_area_filters_on_a_drawn_image():
    img = np.full((400, 400, 3), GLASS, np.uint8)
    cv2.circle(img, (200, 200), 120, PINK, -1)  # tissue
    cv2.circle(img, (200, 200), 50, GLASS, -1)  # large hole (lumen): kept
    cv2.circle(img, (280, 200), 4, GLASS, -1)  # tiny hole: filled
    cv2.circle(img, (30, 30), 3, PINK, -1)  # speck of dust: dropped
    mask, thr = tissue_mask_from_rgb(img, min_object_frac=5e-4, max_hole_frac=5e-4)
    assert 15 <= thr < 120
    assert mask[200, 90] and mask[280, 200]  # tissue, filled tiny hole
    assert not mask[200, 200]  # large hole stays a hole
    assert not mask[30, 30] and not mask[5, 5]


def test_blank_and_full_images():
    blank = np.full((300, 300, 3), GLASS, np.uint8)
    blank += np.random.default_rng(0).integers(0, 3, blank.shape, dtype=np.uint8)  # scanner noise
    mask, thr = tissue_mask_from_rgb(blank)
    assert not mask.any() and thr >= 15
    full = np.full((300, 300, 3), PINK, np.uint8)
    full[::7, ::7] = (80, 50, 130)  # nuclei
    assert tissue_mask_from_rgb(full)[0].mean() > 0.99


def test_real_slide_tissue(real_slide):
    with open_slide(real_slide) as r:
        tm = detect_tissue(r)
    assert tm.mask.shape == (1024, 766) and tm.mask.dtype == bool
    assert tm.slide_size == (2220, 2967)
    sx, sy = tm.scale
    assert sx == pytest.approx(2220 / 766) and sy == pytest.approx(2967 / 1024)
    # about a third of this crop is tissue (checked by eye on the QC image)
    assert 0.25 < tm.tissue_fraction < 0.45
    # glass along the left and right edges and the top, tissue in the lower middle
    assert not tm.mask[:, :30].any() and not tm.mask[:, -80:].any() and not tm.mask[:25].any()
    assert tm.mask[900:1000, 300:500].mean() > 0.9
    assert tm.thumbnail.shape == (1024, 766, 3)


@pytest.mark.parametrize("seed, tumor", [(3, False), (4, True)])
def test_synthetic_tissue_matches_truth(tmp_path, seed, tumor):
    from histstore.wsi.synth import synth_slide

    s = synth_slide(tmp_path / "s.tiff", size=(1536, 1280), seed=seed, tumor=tumor)
    with open_slide(s.path) as r:
        tm = detect_tissue(r)
    model = make_slide_model(1536, 1280, 0.5, seed, tumor)
    truth, _ = model.lowres_masks(tm.scale[0])
    truth = truth[: tm.mask.shape[0], : tm.mask.shape[1]]
    inter = (truth & tm.mask).sum()
    union = (truth | tm.mask).sum()
    assert inter / union > 0.93
    assert abs(tm.tissue_fraction - s.tissue_area_fraction) < 0.03


def test_slide_without_tissue(tmp_path):
    img = np.full((1024, 1024, 3), GLASS, np.uint8)
    path = write_pyramid(tmp_path / "glass.tiff", img, mpp=0.5)
    with open_slide(path) as r:
        tm = detect_tissue(r)
    assert not tm.mask.any() and tm.area_px == 0


def test_qc_png(real_slide):
    from histstore.wsi.tiling import SlideGeometry, TilingSpec, plan_tiles

    with open_slide(real_slide) as r:
        tm = detect_tissue(r)
        grid = plan_tiles(SlideGeometry.from_reader(r), tm, TilingSpec())
    png = render_qc_png(tm.thumbnail, tm, grid, max_side=512)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (512, 383, 3)
    # the tissue outline is drawn in green
    green = (img[..., 1] > 150) & (img[..., 0] < 60) & (img[..., 2] < 60)
    assert green.sum() > 500
    plain = render_qc_png(tm.thumbnail, tm, None, max_side=512)
    assert plain != png


def test_tissue_mask_without_thumbnail_is_light():
    tm = TissueMask(np.ones((4, 4), bool), 2.0, (8, 8), 20.0, thumbnail=np.zeros((4, 4, 3), np.uint8))
    light = tm.without_thumbnail()
    assert light.thumbnail is None and light == tm and light.area_px == 64
