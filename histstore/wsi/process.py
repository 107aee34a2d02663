"""Per-slide ingest step: properties, fingerprint, tissue mask, tile grid, QC image.

`process_slide` is a pure function of (file, settings) meant to run in worker processes: its
inputs and its `SlideResult` pickle, it writes nothing, and it raises only SlideReadError
(whose message and hint survive pickling), so the parent can record a failed slide and go on.

`read_tile` / `read_tiles` turn a tile's level-0 (x, y) and the grid's tile spec back into
pixels: read `read_size` px at `read_level`, resample to `tile_size` (area interpolation when
shrinking). `read_tiles_into` reads runs of side-by-side tiles as one region (same pixels).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histstore.errors import SlideReadError
from histstore.wsi.fingerprint import slide_fingerprint
from histstore.wsi.reader import open_slide
from histstore.wsi.tiling import SlideGeometry, TileGrid, TilingSpec, plan_tiles
from histstore.wsi.tissue import TissueMask, detect_tissue, render_qc_png


@dataclass
class SlideResult:
    """Everything ingest learns about one slide. Picklable.

    mpp_source: 'file' or 'assumed'. tissue_area_mm2: area of the tissue mask.
    mask: the tissue mask (no thumbnail). qc_png: PNG bytes (slide, tissue outline, tiles).
    timings: seconds per stage (open, tissue, tiling, qc).
    """

    path: str
    width: int
    height: int
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    mpp_source: str
    objective_power: float | None
    vendor: str | None
    fingerprint: str
    file_size: int
    grid: TileGrid
    tissue_area_mm2: float
    tissue_fraction: float
    mask: TissueMask
    qc_png: bytes = field(repr=False)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_tiles(self) -> int:
        return len(self.grid)

    def slide_properties(self) -> dict[str, Any]:
        """Scalar slide columns (for a catalog row)."""
        return {
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "level_count": self.level_count,
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "vendor": self.vendor,
            "fingerprint": self.fingerprint,
            "file_size": self.file_size,
            "tissue_area_mm2": self.tissue_area_mm2,
            "tissue_fraction": self.tissue_fraction,
        }


def process_slide(
    path: str | Path,
    spec: TilingSpec,
    assume_mpp: float | None = None,
    *,
    allow_empty: bool = False,
    qc_max_side: int = 1024,
) -> SlideResult:
    """Open, fingerprint, detect tissue, plan tiles and draw the QC image for one slide.

    Raises SlideReadError for a missing/corrupt/unsupported file, an unknown mpp without
    `assume_mpp`, a slide too coarse for spec.target_mpp, and (unless allow_empty) a slide
    where the tile rule keeps no tile.
    """
    path = Path(path)
    t0 = time.perf_counter()
    fingerprint = slide_fingerprint(path)
    file_size = path.stat().st_size
    timings: dict[str, float] = {}
    with open_slide(path, assume_mpp=assume_mpp) as reader:
        geometry = SlideGeometry.from_reader(reader)
        timings["open"] = time.perf_counter() - t0
        t = time.perf_counter()
        if spec.tissue_method != "hsv-otsu":  # pragma: no cover - TilingSpec validates
            raise ValueError(spec.tissue_method)
        mask = detect_tissue(reader)
        timings["tissue"] = time.perf_counter() - t
        t = time.perf_counter()
        grid = plan_tiles(geometry, mask, spec)
        timings["tiling"] = time.perf_counter() - t
        t = time.perf_counter()
        qc_png = render_qc_png(mask.thumbnail, mask, grid, max_side=qc_max_side)
        timings["qc"] = time.perf_counter() - t
        result = SlideResult(
            path=str(path),
            width=reader.width,
            height=reader.height,
            level_count=reader.level_count,
            level_dimensions=reader.level_dimensions,
            level_downsamples=reader.level_downsamples,
            mpp=geometry.mpp,
            mpp_source=reader.mpp_source,
            objective_power=reader.objective_power,
            vendor=reader.vendor,
            fingerprint=fingerprint,
            file_size=file_size,
            grid=grid,
            tissue_area_mm2=mask.area_px * geometry.mpp**2 / 1e6,
            tissue_fraction=mask.tissue_fraction,
            mask=mask.without_thumbnail(),
            qc_png=qc_png,
            timings=timings,
        )
    if not allow_empty and result.n_tiles == 0:
        if spec.tile_rule == "min-tissue":
            rule, hint = (f"no tile has tissue fraction >= {spec.min_tissue:g}",
                          "check the slide; a lower --min-tissue keeps tiles with less tissue")
        else:
            rule, hint = (f"no tile touches the tissue ({spec.tile_rule})",
                          "check the slide; the tissue may be smaller than one tile")
        found = "no tissue found" if not mask.mask.any() else (
            f"{rule} (tissue covers {100 * mask.tissue_fraction:.1f}% of the slide)"
        )
        raise SlideReadError(f"{found}: {path}", hint=hint)
    return result


def _spec_dict(grid_spec: TileGrid | dict[str, Any]) -> dict[str, Any]:
    return grid_spec.spec if isinstance(grid_spec, TileGrid) else grid_spec


def read_tile(reader, x: int, y: int, grid_spec: TileGrid | dict[str, Any]) -> np.ndarray:
    """Pixels of the tile whose level-0 top-left is (x, y): uint8 (tile_size, tile_size, 3) RGB.

    grid_spec: a TileGrid or its `spec` dict (read_level, read_size, tile_size).
    """
    import cv2

    s = _spec_dict(grid_spec)
    size, out = int(s["read_size"]), int(s["tile_size"])
    region = reader.read_region(int(x), int(y), int(s["read_level"]), size, size)
    if size == out:
        return region
    interp = cv2.INTER_AREA if size > out else cv2.INTER_LINEAR
    return cv2.resize(region, (out, out), interpolation=interp)


def read_tiles(reader, x, y, grid_spec: TileGrid | dict[str, Any]) -> np.ndarray:
    """Many tiles at once: uint8 (n, tile_size, tile_size, 3) (see `read_tiles_into`)."""
    s = _spec_dict(grid_spec)
    x = np.asarray(x).reshape(-1)
    t = int(s["tile_size"])
    out = np.empty((x.size, t, t, 3), np.uint8)
    read_tiles_into(reader, x, y, s, out)
    return out


# Longest run of tiles read as one region: bounds the region's memory (a 128 px run of 32
# tiles is 2 MB as RGBA).
MAX_RUN_TILES = 32


def tile_runs(x, y, step: int | None, max_run: int = MAX_RUN_TILES) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive tiles that sit side by side in one row
    (same y, each x `step` level-0 px right of the previous), at most max_run long; step None:
    every tile on its own."""
    x = np.asarray(x, np.int64).reshape(-1)
    y = np.asarray(y, np.int64).reshape(-1)
    n = x.size
    if n == 0:
        return []
    if step is None:
        return [(i, i + 1) for i in range(n)]
    # a run breaks where the next tile is not the right-hand neighbour
    breaks = np.flatnonzero((np.diff(x) != step) | (np.diff(y) != 0)) + 1
    out = []
    for a, b in zip(np.r_[0, breaks].tolist(), np.r_[breaks, n].tolist()):
        out.extend((i, min(i + max_run, b)) for i in range(a, b, max_run))
    return out


def run_step(reader, grid_spec: TileGrid | dict[str, Any]) -> int | None:
    """Level-0 distance between side-by-side tiles whose pixels one wide read gives exactly
    (sliced every read_size px), or None when only per-tile reads are exact.

    OpenSlide reads a box at level L from level-0 (x, y) / downsample: only when that is a
    whole pixel for every tile (level 0, or an integer downsample dividing the coordinates,
    checked per run) do a wide box and the tiles' own boxes land on the same pixel grid."""
    s = _spec_dict(grid_spec)
    level, size = int(s["read_level"]), int(s["read_size"])
    ds = float(reader.level_downsamples[level])
    if not ds.is_integer():
        return None
    return size * int(ds)


def read_tiles_into(reader, x, y, grid_spec: TileGrid | dict[str, Any], out: np.ndarray) -> None:
    """Tiles (x[i], y[i]) into out[i] (uint8 [n, tile_size, tile_size, 3]), pixel for pixel what
    `read_tile` gives each: horizontally adjacent tiles (a tiling is a grid) are read as one
    region and sliced, which saves OpenSlide's per-call cost (tests/wsi/test_process.py)."""
    import cv2

    s = _spec_dict(grid_spec)
    x = np.asarray(x, np.int64).reshape(-1)
    y = np.asarray(y, np.int64).reshape(-1)
    level, size, t = int(s["read_level"]), int(s["read_size"]), int(s["tile_size"])
    if out.shape != (x.size, t, t, 3) or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {(x.size, t, t, 3)}, got {out.dtype} {out.shape}")
    step = run_step(reader, s)
    ds = int(step // size) if step is not None else 1
    interp = cv2.INTER_AREA if size > t else cv2.INTER_LINEAR
    for a, b in tile_runs(x, y, step):
        if b - a == 1 or int(x[a]) % ds or int(y[a]) % ds:
            for i in range(a, b):
                out[i] = read_tile(reader, int(x[i]), int(y[i]), s)
            continue
        region = reader.read_region(int(x[a]), int(y[a]), level, size * (b - a), size)
        for k in range(b - a):
            part = region[:, k * size:(k + 1) * size]
            if size == t:
                out[a + k] = part
            else:
                cv2.resize(part, (t, t), dst=out[a + k], interpolation=interp)
