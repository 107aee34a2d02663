"""Attention heatmaps: each tile of a tested slide coloured by its attention in one run.

HistCode explains a slide's prediction by drawing every tile's attention, normalised within
the slide, at the tile's position ("spatial deconvolution", arXiv 2204.11994). Here:

- `slide_attention.load_slide_attention` reads one slide's tiles, attention scores, prediction
  and label for a run and fold from the catalog;
- `raster` normalises the scores within the slide, paints all tiles into a low-resolution grid
  at once and blends it over the slide thumbnail (read from the pyramid's coarse levels);
- `heatmap_png`, `heatmap_geojson`, `tile_gallery` write the PNG (colour bar, prediction in the
  title), the GeoJSON FeatureCollection (one polygon per tile in level-0 px, QuPath's
  conventions) and, with `top=K`, the K most and K least attended tiles at full resolution;
- `render_heatmap` (this module) ties them together and registers the files as artifacts.

What the values mean depends on the model (histstore/mil/models.py `attention_kind`): softmax
weights summing to 1 (gated-attention, attention, dsmil), the share of max-pooled features
(max), or raw per-tile class scores (mean, mil-rnn). Normalising within the slide (min-max, or
percentile rank as in CLAM) puts all of them on [0, 1]; the colour bar says which it is.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histstore.errors import InvalidInput
from histstore.reports.common import (HEATMAP_DIR, Artifact, atomic_write, is_regression, register_artifacts, run_dir,
                                      safe_name)
from histstore.reports.heatmap_geojson import heatmap_geojson
from histstore.reports.heatmap_png import draw_heatmap_png
from histstore.reports.raster import NORMS, blend, colour_map, normalise, paint_tiles, slide_background
from histstore.reports.slide_attention import SlideAttention, load_slide_attention
from histstore.reports.tile_gallery import draw_tile_gallery
from histstore.store import Store

FORMATS = ("png", "geojson")
DEFAULT_MAX_SIDE = 1024  # thumbnail pixels on the long side (drawn about 1:1 in the PNG)
MAX_TOP = 64


@dataclass
class HeatmapResult:
    run_id: int
    slide_id: str
    fold: int
    model: str | None
    attention_kind: str
    norm: str
    n_tiles: int
    path: Path                       # the PNG or GeoJSON
    gallery_path: Path | None        # --top K: the K most / least attended tiles
    heat: np.ndarray | None          # normalised attention on the thumbnail grid (NaN: no tile)
    scale: tuple[float, float]       # thumbnail px per level-0 px (x, y)
    prediction: dict | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def paths(self) -> list[Path]:
        return [self.path] + ([self.gallery_path] if self.gallery_path else [])


def default_output(store: Store, run_id: int, slide_id: str, fold: int, fmt: str) -> Path:
    return run_dir(store, HEATMAP_DIR, run_id) / f"{safe_name(slide_id)}_fold{fold}.{fmt}"


def _resolve_output(store: Store, sa: SlideAttention, out: Path | str | None, fmt: str | None) -> tuple[Path, str]:
    if fmt is not None and fmt not in FORMATS:
        raise InvalidInput(f"unknown heatmap format {fmt!r}; choose {' or '.join(FORMATS)}")
    rid = int(sa.run["run_id"])
    if out is None:
        fmt = fmt or "png"
        return default_output(store, rid, sa.slide_id, sa.fold, fmt), fmt
    out = Path(out)
    if out.is_dir() or str(out).endswith(("/", "\\")):
        fmt = fmt or "png"
        return out / default_output(store, rid, sa.slide_id, sa.fold, fmt).name, fmt
    named = {".png": "png", ".geojson": "geojson", ".json": "geojson"}.get(out.suffix.lower())
    if fmt is not None and named is not None and named != fmt:
        raise InvalidInput(f"--out {out.name} names a {named} file but --format is {fmt}",
                           hint=f"use a .{fmt} name, or leave --format out")
    return out, fmt or named or "png"


def render_heatmap(store: Store, run_id: int | str, slide_id: str, fold: int | None = None,
                   out: Path | str | None = None, fmt: str | None = None, alpha: float = 0.4,
                   cmap: str = "inferno", norm: str = "minmax", top: int = 0,
                   max_side: int = DEFAULT_MAX_SIDE) -> HeatmapResult:
    """Draw one slide's attention in one run (fold: default, the fold that tested the slide).

    out: a file (format from its suffix unless fmt is given) or a folder; default
    `<store>/artifacts/heatmaps/run<id>/<slide>_fold<f>.<fmt>`. fmt: 'png' (thumbnail with the
    attention blended in with `alpha`, colour map `cmap`, colour bar, prediction in the title)
    or 'geojson' (one polygon per tile, QuPath-readable). norm: 'minmax' or 'percentile'.
    top: also write `<name>_top<K>.png`, the K most and K least attended tiles at full
    resolution. Every file is registered in `artifacts` once written.
    """
    t0 = time.perf_counter()
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInput(f"--alpha must be in [0, 1], got {alpha}")
    if norm not in NORMS:
        raise InvalidInput(f"unknown normalisation {norm!r}; choose {' or '.join(NORMS)}")
    if not 0 <= int(top) <= MAX_TOP:
        raise InvalidInput(f"--top must be between 0 and {MAX_TOP}, got {top}")
    if max_side < 16:
        raise InvalidInput(f"max_side must be >= 16 px, got {max_side}")
    cmap_ = colour_map(cmap)
    sa = load_slide_attention(store, run_id, slide_id, fold)
    path, fmt = _resolve_output(store, sa, out, fmt)
    regression = is_regression(sa.run)
    values = normalise(sa.score, norm)
    notes = list(sa.notes)
    heat, scale = None, (1.0, 1.0)
    if fmt == "png":
        rgb, scale, note = slide_background(sa, max_side)
        if note:  # a blank canvas: nothing to see through, so the colours are drawn opaque
            notes.append(note)
        heat = paint_tiles(sa.x, sa.y, sa.size_l0, values, scale, rgb.shape[:2])
        draw_heatmap_png(sa, blend(rgb, heat, cmap_, 1.0 if note else alpha), norm, cmap_, path,
                         regression, notes)
    else:
        doc = heatmap_geojson(sa, values, norm, cmap_, regression)
        atomic_write(path, lambda p: p.write_text(json.dumps(doc, separators=(",", ":"))))
    rid = int(sa.run["run_id"])
    kind_desc = f"{sa.model} attention, {norm}"
    artifacts = [Artifact(f"heatmap-{fmt}", path, rid, sa.slide_id, sa.fold, kind_desc)]
    gallery = None
    if top:
        gpath = path.with_name(f"{path.stem}_top{int(top)}.png")
        written, note = draw_tile_gallery(sa, int(top), gpath, regression)
        if written:
            gallery = gpath
            artifacts.append(Artifact("heatmap-top-tiles", gpath, rid, sa.slide_id, sa.fold,
                                      f"{int(top)} most and least attended tiles"))
        if note:
            notes.append(note)
    register_artifacts(store, artifacts)
    return HeatmapResult(run_id=rid, slide_id=sa.slide_id, fold=sa.fold, model=sa.model,
                         attention_kind=sa.attention_kind, norm=norm, n_tiles=len(sa.score), path=path,
                         gallery_path=gallery, heat=heat, scale=scale, prediction=sa.prediction,
                         notes=notes, seconds=time.perf_counter() - t0)
