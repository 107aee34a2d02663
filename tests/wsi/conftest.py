"""Fixtures and helpers for the wsi tests (real_slide and synth6 come from tests/conftest.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_pyramid(path: Path, level0: np.ndarray, mpp: float | None, downsamples=(1,),
                  compression: str = "zlib") -> Path:
    """Write a tiled pyramidal TIFF that OpenSlide opens (generic-tiff).

    Lossless (zlib) by default so tests can compare exact pixel values. mpp=None writes no
    resolution tags (OpenSlide then reports no mpp).
    """
    import cv2
    import tifffile

    h, w = level0.shape[:2]
    with tifffile.TiffWriter(path) as tif:
        for i, d in enumerate(downsamples):
            img = level0 if d == 1 else cv2.resize(
                level0, (max(1, w // d), max(1, h // d)), interpolation=cv2.INTER_AREA
            )
            kw = {}
            if mpp is not None:
                ppcm = 1e4 / (mpp * d)
                kw = dict(resolution=(ppcm, ppcm), resolutionunit="CENTIMETER")
            tif.write(
                img, tile=(256, 256), compression=compression, photometric="rgb",
                subfiletype=1 if i else 0, metadata=None, **kw,
            )
    return path


def coordinate_pattern(w: int, h: int) -> np.ndarray:
    """Every pixel names its position: R = x mod 251, G = y mod 251, B = block id."""
    x = np.arange(w)[None, :]
    y = np.arange(h)[:, None]
    r = np.broadcast_to(x % 251, (h, w))
    g = np.broadcast_to(y % 251, (h, w))
    b = (x // 251 * 7 + y // 251 * 13) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def gradient_pattern(w: int, h: int) -> np.ndarray:
    """Smooth ramps (survive downsampling): R = 255 x / w, G = 255 y / h, B = 128."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    r = np.broadcast_to(x, (h, w))
    g = np.broadcast_to(y, (h, w))
    return np.stack([r, g, np.full((h, w), 128, np.float32)], -1).round().astype(np.uint8)


@pytest.fixture(scope="session")
def tumor_slide(tmp_path_factory):
    """One 2048 x 2048 tumour slide (two planted regions, ~40% of the tissue)."""
    from histstore.wsi.synth import synth_slide

    d = tmp_path_factory.mktemp("tumor")
    return synth_slide(d / "TCGA-SY-0099-01Z-00-DX1.tiff", size=(2048, 2048), seed=5,
                       tumor=True, burden=0.4, n_regions=2)
