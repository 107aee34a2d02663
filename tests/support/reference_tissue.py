"""An independent tissue mask, to judge how well a tiling covers a slide's tissue.

histstore's detector (histstore.wsi.tissue) thresholds the HSV saturation of a downsampled
thumbnail with Otsu. This reference shares none of that: it works at full resolution, on
optical density (absorbance) instead of saturation, with a fixed physical threshold instead
of a data-driven one, and with its own morphology. A pixel is tissue when any channel absorbs
more than OD 0.15 relative to the glass (the brightest 1 % of the slide): 0.15 is the
"transparent pixel" cut-off of Macenko et al. (ISBI 2009), the usual line between stained
tissue and background. A 9 px close joins fibres into tissue, a 5 px open removes dust-sized
specks, and pieces smaller than a 64 x 64 px square (32 um at 0.5 um/px) are dropped. So an
error of histstore's detector (a missed pale edge, a strand lost at low resolution) is not
repeated by the reference, which makes it a fair yardstick for recall (tissue inside some
tile) and precision (tile area that is tissue). It is stricter than any tiler can be: gaps
between collagen fibres count as glass, so no tiling reaches precision 1.
"""
from __future__ import annotations

import numpy as np

OD_THRESHOLD = 0.15
MIN_PIECE_PX = 64 * 64


def reference_tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """bool (h, w) tissue mask of a full-resolution RGB image (h, w, 3) uint8."""
    import cv2

    f = rgb.astype(np.float32)
    glass = np.percentile(f.reshape(-1, 3), 99, axis=0)
    od = -np.log10(np.clip((f + 1.0) / (glass + 1.0), 1e-6, 1.0))
    mask = (od.max(axis=2) > OD_THRESHOLD).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= MIN_PIECE_PX
    keep[0] = False
    return keep[labels]


def tile_coverage(reference: np.ndarray, x, y, size: int) -> tuple[float, float]:
    """(recall, precision) of square level-0 tiles (top-left x, y, side size) against a
    full-resolution reference mask: recall = reference tissue inside some tile / all reference
    tissue; precision = reference tissue inside the tiles / area the tiles cover."""
    covered = np.zeros(reference.shape, bool)
    for a, b in zip(np.asarray(x).tolist(), np.asarray(y).tolist()):
        covered[b:b + size, a:a + size] = True
    hit = np.count_nonzero(covered & reference)
    return hit / max(1, np.count_nonzero(reference)), hit / max(1, np.count_nonzero(covered))
