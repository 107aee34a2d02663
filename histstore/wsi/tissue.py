"""Tissue detection, as in HistCode's code (arXiv 2204.11994; segmentation borrowed from CLAM).

Saturation channel (HSV) of a low-resolution image of the whole slide, median blur (7),
Otsu threshold, morphological close, then drop small objects and fill small holes. Glass is
white or grey (saturation near 0), stained tissue is pink/purple (high saturation), so Otsu
separates them without per-cohort tuning.

Resolution: the authors read the pyramid level nearest 64x downsampling, which on a full
slide (50k-100k px) gives a mask of roughly 1000-1500 px. On smaller slides (or crops, such as
the one-level sample slide) 64x would leave only a few mask pixels per tile, so the downsample
is lowered until the mask's longer side reaches `min_mask_side` px. Area filters are fractions
of the mask image, as the brief for histstore asks, so they mean the same at any resolution.
Pen marks are saturated too and are not removed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TARGET_DOWNSAMPLE = 64.0
MIN_MASK_SIDE = 1024


@dataclass
class TissueMask:
    """Boolean tissue mask over the whole slide.

    mask: bool (mh, mw). downsample: level-0 px per mask px (from the longer side).
    slide_size: level-0 (width, height). threshold: saturation cut-off used (0-255).
    thumbnail: the RGB image the mask was computed from (mh, mw, 3), kept for QC; may be None.
    """

    mask: np.ndarray
    downsample: float
    slide_size: tuple[int, int]
    threshold: float
    thumbnail: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def scale(self) -> tuple[float, float]:
        """Exact level-0 px per mask px along (x, y)."""
        mh, mw = self.mask.shape
        return self.slide_size[0] / mw, self.slide_size[1] / mh

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide's area that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def area_px(self) -> float:
        """Tissue area in level-0 px^2 (multiply by mpp^2 for um^2)."""
        sx, sy = self.scale
        return float(self.mask.sum()) * sx * sy

    def without_thumbnail(self) -> TissueMask:
        return TissueMask(self.mask, self.downsample, self.slide_size, self.threshold, None)


def mask_downsample(width: int, height: int, target: float = TARGET_DOWNSAMPLE,
                    min_mask_side: int = MIN_MASK_SIDE) -> float:
    """Downsample for the mask: `target`, lowered so the longer mask side is >= min_mask_side."""
    return max(1.0, min(float(target), max(width, height) / float(min_mask_side)))


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    *,
    median_ksize: int = 7,
    close_ksize: int = 5,
    min_saturation: float = 15.0,
    min_object_frac: float = 5e-4,
    max_hole_frac: float = 5e-4,
) -> tuple[np.ndarray, float]:
    """Tissue mask of a low-resolution RGB image (h, w, 3) uint8 -> (bool (h, w), threshold).

    min_saturation floors the Otsu threshold: on a slide that is nearly all glass (or all
    tissue) Otsu would otherwise split noise (or two stains) in two. Objects smaller than
    min_object_frac of the image are dropped; holes smaller than max_hole_frac are filled.
    """
    import cv2

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 (h, w, 3) RGB, got {rgb.dtype} {rgb.shape}")
    sat = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)[..., 1]
    sat = cv2.medianBlur(sat, median_ksize)
    otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(float(otsu), float(min_saturation))
    mask = (sat > threshold).astype(np.uint8)
    if close_ksize > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_ksize, close_ksize))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    area = mask.size
    mask = _drop_small_components(mask, min_object_frac * area)
    # holes are the small components of the background (background touching the image edge
    # is never a hole)
    holes = 1 - mask
    kept_holes = _drop_small_components(holes, max_hole_frac * area, keep_border=True)
    mask = 1 - kept_holes
    return mask.astype(bool), threshold


def _drop_small_components(mask: np.ndarray, min_area: float, keep_border: bool = False) -> np.ndarray:
    import cv2

    if min_area <= 0 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    if keep_border:
        h, w = mask.shape
        x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
        keep |= (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
    keep[0] = False  # label 0 is the other class
    return keep[labels].astype(np.uint8)


def detect_tissue(
    reader,
    *,
    target_downsample: float = TARGET_DOWNSAMPLE,
    min_mask_side: int = MIN_MASK_SIDE,
    **params,
) -> TissueMask:
    """Tissue mask of a slide (a SlideReader). `params` go to `tissue_mask_from_rgb`."""
    ds = mask_downsample(reader.width, reader.height, target_downsample, min_mask_side)
    mw = max(1, int(round(reader.width / ds)))
    mh = max(1, int(round(reader.height / ds)))
    rgb = reader.read_downsampled(mw, mh)
    mask, threshold = tissue_mask_from_rgb(rgb, **params)
    return TissueMask(
        mask=mask,
        downsample=max(reader.width / mw, reader.height / mh),
        slide_size=(reader.width, reader.height),
        threshold=threshold,
        thumbnail=rgb,
    )


def render_qc_png(
    thumbnail: np.ndarray,
    mask: TissueMask,
    grid=None,
    max_side: int = 1024,
) -> bytes:
    """QC image as PNG bytes: the slide with the tissue outline (green) and kept tiles (blue).

    thumbnail: RGB (h, w, 3) uint8 of the whole slide (any size; usually mask.thumbnail).
    grid: optional TileGrid; its tiles are shaded, and outlined when large enough to see.
    """
    import cv2

    img = np.ascontiguousarray(thumbnail)
    h, w = img.shape[:2]
    f = min(1.0, max_side / max(h, w))
    if f < 1.0:
        img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    h, w = img.shape[:2]
    sx = w / mask.slide_size[0]  # thumbnail px per level-0 px
    sy = h / mask.slide_size[1]
    out = img.copy()
    if grid is not None and len(grid):
        x0 = np.floor(grid.x * sx).astype(np.int32)
        y0 = np.floor(grid.y * sy).astype(np.int32)
        x1 = np.ceil((grid.x + grid.size_l0) * sx).astype(np.int32) - 1
        y1 = np.ceil((grid.y + grid.size_l0) * sy).astype(np.int32) - 1
        cover = np.zeros((h, w), np.uint8)
        for a, b, c, d in zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist()):
            cv2.rectangle(cover, (a, b), (c, d), 1, thickness=-1)
        tint = np.array([60, 110, 255], np.float32)
        sel = cover.astype(bool)
        out[sel] = (0.85 * out[sel] + 0.15 * tint).astype(np.uint8)
        if grid.size_l0 * sx >= 16:  # outlines only where a tile is at least 16 px wide
            for a, b, c, d in zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist()):
                cv2.rectangle(out, (a, b), (c, d), (40, 90, 255), thickness=1)
    m = cv2.resize(mask.mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (0, 200, 0), thickness=max(1, round(max(h, w) / 400)))
    ok, buf = cv2.imencode(".png", cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 only fails on empty images
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
