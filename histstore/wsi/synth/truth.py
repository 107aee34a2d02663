"""Ground-truth geometry of synthetic slides: how much of each tile lies in a planted region."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from histstore.wsi.synth.slide import SynthSlide


def tumor_fraction_of_tiles(truth: dict[str, Any] | SynthSlide, x, y, size_l0) -> np.ndarray:
    """Fraction of each tile [x, x+size_l0)^2 (level-0 px) inside the slide's planted regions.

    truth: one slide's entry of truth.json (truth["slides"][slide_id]) or a SynthSlide.
    Returns float64 (n,); all zeros for a normal slide.
    """
    import cv2

    from histstore.wsi.tiling import mask_fraction

    t = truth.truth() if isinstance(truth, SynthSlide) else truth
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    regions = [np.asarray(r["points"], np.float64) for r in t.get("regions", [])]
    if not regions:
        return np.zeros(x.size)
    W, H = int(t["width"]), int(t["height"])
    step = max(1.0, max(W, H) / 2048.0)
    mw, mh = math.ceil(W / step), math.ceil(H / step)
    mask = np.zeros((mh, mw), np.uint8)
    for p in regions:
        # pixel (r, c) covers [c*step, (c+1)*step): its centre is (c + 0.5) * step
        cv2.fillPoly(mask, [np.round((p / step - 0.5) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return mask_fraction(mask, (step, step), x, y, size_l0, size_l0)
