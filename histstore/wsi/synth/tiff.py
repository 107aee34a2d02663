"""Writing a `SlideModel` as a pyramidal, tiled, JPEG-compressed TIFF.

Files are written with tifffile as OpenSlide's generic-tiff reader wants them (see
../shared/docs/stack-notes.md): one page per level, tile 256 x 256, resolution tags in
centimetres (so OpenSlide reports mpp), subfiletype=1 on the reduced levels. Level 0 is
rendered in strips and streamed to tifffile as an iterator of tiles, so a 60000 x 60000 slide
never sits in memory; reduced levels are accumulated from the strips (in a temporary
memory-mapped file when large).
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from histstore.fsops import remove_file
from histstore.wsi.synth.image import _BACKGROUND, SlideModel

TILE = 256  # TIFF tile edge
_BIG_PIXELS = 1 << 28  # above this many level-0 px: BigTIFF, reduced levels memory-mapped


def _level_sizes(width: int, height: int, downsamples) -> list[tuple[int, int]]:
    return [(max(1, math.ceil(width / d)), max(1, math.ceil(height / d))) for d in downsamples]


def write_slide_tiff(
    path: str | Path,
    model: SlideModel,
    downsamples: tuple[int, ...] = (1, 4, 16),
    jpeg_quality: int = 85,
    strip_rows: int = 512,
    chunk_cols: int = 4096,
) -> None:
    """Render `model` into a pyramidal tiled JPEG TIFF at `path`, strip by strip.

    downsamples: powers of two, first 1, each dividing strip_rows (a multiple of 256).
    """
    import cv2
    import tifffile

    if downsamples[0] != 1 or any(strip_rows % d for d in downsamples[1:]):
        raise ValueError(f"bad downsamples {downsamples} for strip_rows {strip_rows}")
    W, H = model.width, model.height
    sizes = _level_sizes(W, H, downsamples)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    big = W * H > _BIG_PIXELS
    tmpdir = tempfile.TemporaryDirectory(dir=path.parent, prefix=".synth-") if big else None
    partial = path.with_name(f".{path.name}.partial")
    reduced: list[np.ndarray] = []
    for i, (lw, lh) in enumerate(sizes[1:], start=1):
        if big and lw * lh * 3 > _BIG_PIXELS:
            reduced.append(
                np.lib.format.open_memmap(
                    os.path.join(tmpdir.name, f"level{i}.npy"), "w+", np.uint8, (lh, lw, 3)
                )
            )
        else:
            reduced.append(np.empty((lh, lw, 3), np.uint8))

    n_tx = math.ceil(W / TILE)
    padded_w = n_tx * TILE

    def level0_tiles() -> Iterator[np.ndarray]:
        for y0 in range(0, H, strip_rows):
            rows = min(strip_rows, H - y0)
            strip = np.empty((strip_rows, padded_w, 3), np.uint8)
            strip[:] = _BACKGROUND
            for x0 in range(0, W, chunk_cols):
                cols = min(chunk_cols, W - x0)
                strip[:rows, x0 : x0 + cols] = model.render(x0, y0, cols, rows)
            for (lw, lh), d, arr in zip(sizes[1:], downsamples[1:], reduced):
                r0 = y0 // d
                r1 = min(lh, r0 + math.ceil(rows / d))
                arr[r0:r1] = cv2.resize(
                    strip[:rows, :W], (lw, r1 - r0), interpolation=cv2.INTER_AREA
                )
            for ty in range(0, rows, TILE):
                for tx in range(0, padded_w, TILE):
                    yield strip[ty : ty + TILE, tx : tx + TILE]

    px_per_cm = 1e4 / model.mpp
    common = dict(
        tile=(TILE, TILE),
        compression="jpeg",
        compressionargs={"level": jpeg_quality},
        photometric="rgb",
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    try:
        # written under a hidden name and renamed when complete: an interrupted run never
        # leaves a truncated slide under the real name
        with tifffile.TiffWriter(partial, bigtiff=big) as tif:
            tif.write(
                level0_tiles(),
                shape=(H, W, 3),
                dtype=np.uint8,
                resolution=(px_per_cm, px_per_cm),
                description=f"histstore synthetic slide seed={model.seed}",
                **common,
            )
            for d, arr in zip(downsamples[1:], reduced):
                tif.write(
                    arr,
                    resolution=(px_per_cm / d, px_per_cm / d),
                    subfiletype=1,
                    **common,
                )
        os.replace(partial, path)
    finally:
        del reduced
        if tmpdir is not None:
            tmpdir.cleanup()
        if partial.exists():
            remove_file(partial, partial.parent)  # histstore.fsops
