"""Attention heatmaps: each tile of a tested slide coloured by its attention in one run.

HistCode explains a slide's prediction by drawing every tile's attention, normalised within
the slide, at the tile's position ("spatial deconvolution", arXiv 2204.11994). Here:

- `load_slide_attention` reads one slide's tiles, attention scores, prediction and label for a
  run and fold from the catalog (`attention` joined with `tiles`; the fold defaults to the one
  in which the slide was in the test subset: attention is stored for test slides only).
- `paint_tiles` paints all tiles into a low-resolution grid at once (a 2-D difference array,
  O(tiles + pixels)), so 20,000 tiles take milliseconds, not one matplotlib patch each.
- `render_heatmap` blends that grid over the slide thumbnail, read from the pyramid's coarse
  levels (`SlideReader.thumbnail`, never the full-resolution level), and writes a PNG with a
  colour bar and the prediction in the title, or a GeoJSON FeatureCollection (one polygon per
  tile in level-0 px, QuPath's conventions) - plus, with `top=K`, a gallery of the K most and
  K least attended tiles read at full resolution.

What the values mean depends on the model (histstore/mil/models.py `attention_kind`): softmax
weights summing to 1 (gated-attention, attention, dsmil), the share of max-pooled features
(max), or raw per-tile class scores (mean, mil-rnn). Normalising within the slide (min-max, or
percentile rank as in CLAM) puts all of them on [0, 1]; the colour bar says which it is.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histstore.catalog.bulk import query_numpy
from histstore.errors import InvalidInput, MissingStep, NotTested, SlideNotFound, SlideReadError
from histstore.reports.common import (ATTENTION_KIND, HEATMAP_DIR, Artifact, atomic_write,
                                      attention_label, is_regression, new_figure, register_artifacts,
                                      require_train_run, run_dir, safe_name, save_figure)
from histstore.store import Store

FORMATS = ("png", "geojson")
NORMS = ("minmax", "percentile")
DEFAULT_MAX_SIDE = 1024  # thumbnail pixels on the long side (drawn about 1:1 in the PNG)
_DPI = 130
MAX_TOP = 64
_NO_FILE_GREY = 250  # blank canvas for slides without an image file
# QuPath classifications for the extreme tenth of tiles (colours as QuPath reads them: [r, g, b])
_HIGH, _LOW = ("Attention high", [220, 40, 30]), ("Attention low", [40, 90, 220])


@dataclass
class SlideAttention:
    """One slide's tiles and attention in one fold of a run, read from the catalog.
    Arrays are (n_tiles,), ordered by tile idx; score is float64 (NaN never occurs: rows with
    a non-finite score are dropped and counted in notes)."""

    run: dict
    slide_id: str
    fold: int
    tested_folds: list[int]
    tile_id: np.ndarray
    idx: np.ndarray
    x: np.ndarray
    y: np.ndarray
    size_l0: np.ndarray
    score: np.ndarray
    slide: dict                # slides row: path, width, height, mpp, status
    read_spec: dict | None     # tilings.settings['read'] (how to re-read a tile's pixels)
    prediction: dict | None    # predictions row (test subset): label, target, score, predicted
    classes: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> str | None:
        return self.run["model"]

    @property
    def attention_kind(self) -> str:
        return ATTENTION_KIND.get(self.model or "", "unknown")

    @property
    def width(self) -> int:
        w = self.slide.get("width")
        return int(w) if w else int((self.x + self.size_l0).max())

    @property
    def height(self) -> int:
        h = self.slide.get("height")
        return int(h) if h else int((self.y + self.size_l0).max())


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


# ------------------------------------------------------------------------------ catalog
def _listing(items, limit: int = 6) -> str:
    items = [str(i) for i in items]
    more = f", ... ({len(items)} in all)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_slide_attention(store: Store, run_id: int | str, slide_id: str,
                         fold: int | None = None) -> SlideAttention:
    """Read a slide's attention in a run. Raises NotFound (run, slide, fold), NotTested (the
    slide was not in the test subset there), MissingStep (the run stored no attention)."""
    with store.read() as conn:
        run = require_train_run(conn, run_id)
        rid = int(run["run_id"])
        q = conn.exec_driver_sql
        if not q("SELECT count(*) FROM splits WHERE run_id = ?", (rid,)).scalar():
            children = q("SELECT run_id, task FROM runs WHERE parent_run_id = ? ORDER BY run_id",
                         (rid,)).all()
            if children:
                first = children[0][0]
                raise InvalidInput(
                    f"run {rid} is the parent of {len(children)} gene runs and holds no attention "
                    f"itself: {_listing(f'{c} ({t})' for c, t in children)}",
                    hint=f"draw one gene's run, e.g. `histstore heatmap --run {first} --slide {slide_id}`")
            raise MissingStep(f"run {rid} has no splits yet (status {run['status']})",
                              hint=f"`histstore runs show {rid}`")
        row = q("SELECT slide_id, path, width, height, mpp, status FROM slides WHERE slide_id = ?",
                (slide_id,)).first()
        if row is None:
            raise SlideNotFound(f"no slide {slide_id!r} in the catalog",
                                hint=f"the run's test slides: `histstore sql \"SELECT fold, slide_id FROM "
                                     f"splits WHERE run_id = {rid} AND subset = 'test'\"`")
        slide = dict(row._mapping)
        splits = dict(q("SELECT fold, subset FROM splits WHERE run_id = ? AND slide_id = ?",
                        (rid, slide_id)).all())
        if not splits:
            members = [r[0] for r in q("SELECT DISTINCT slide_id FROM splits WHERE run_id = ? ORDER BY 1",
                                       (rid,)).all()]
            raise NotTested(f"slide {slide_id} is not in run {rid} (cohort {run['cohort']}, "
                            f"{len(members)} slides: {_listing(members, 4)})",
                            hint=f"pick one of the run's slides: `histstore sql \"SELECT fold, slide_id FROM "
                                 f"splits WHERE run_id = {rid} AND subset = 'test'\"`")
        finished = {int(r[0]) for r in q(
            "SELECT DISTINCT fold FROM predictions WHERE run_id = ? AND subset = 'test'", (rid,)).all()}
        test_folds = sorted(int(f) for f, s in splits.items() if s == "test")
        tested = [f for f in test_folds if f in finished]
        notes: list[str] = []
        if fold is None:
            if not tested:
                if test_folds:
                    raise NotTested(f"slide {slide_id} is in the test subset of fold {test_folds[0]} of "
                                    f"run {rid}, which has not finished (run {run['status']})",
                                    hint=f"`histstore train --resume {rid}` finishes it")
                raise NotTested(f"slide {slide_id} was not tested in run {rid}: it is in "
                                f"{_subsets(splits)} only", hint="attention is stored for test slides only")
            fold = tested[0]
            if len(tested) > 1:
                notes.append(f"slide tested in folds {tested}; showing fold {fold}")
        else:
            fold = int(fold)
            if fold not in splits:
                folds = [r[0] for r in q("SELECT DISTINCT fold FROM splits WHERE run_id = ? ORDER BY 1",
                                         (rid,)).all()]
                raise NotTested(f"run {rid} has no fold {fold} (folds {_listing(folds)})",
                                hint="leave --fold out to use the fold that tested the slide")
            if fold not in tested:
                where = (f"it was tested in fold {_listing(tested)}" if tested
                         else "it was not tested in any finished fold")
                what = (f"in its {splits[fold]} subset" if splits[fold] != "test"
                        else "in its test subset, but that fold has not finished")
                raise NotTested(f"slide {slide_id} was not tested in fold {fold} of run {rid} ({what}); "
                                f"{where}", hint=(f"use --fold {tested[0]} or leave --fold out" if tested
                                                  else f"`histstore train --resume {rid}`"))
        att = query_numpy(conn, """
            SELECT t.tile_id, t.tiling_id, t.idx, t.x, t.y, t.size_l0, a.score
            FROM attention a JOIN tiles t ON t.tile_id = a.tile_id
            WHERE a.run_id = $1 AND a.fold = $2 AND t.slide_id = $3 ORDER BY t.idx""",
            [rid, fold, slide_id])
        if len(att["tile_id"]) == 0:
            stored = q("SELECT count(*) FROM attention WHERE run_id = ?", (rid,)).scalar()
            why = ("the run stored no tile attention at all" if not stored
                   else "its other slides have attention; this one has none")
            raise MissingStep(f"run {rid} ({run['model']}) has no attention for slide {slide_id} in "
                              f"fold {fold}: {why}",
                              hint="retrain with `histstore train` (every histstore model stores "
                                   "per-tile attention for its test slides)")
        pred = q("SELECT label, target, score, predicted FROM predictions WHERE run_id = ? AND fold = ? "
                 "AND slide_id = ? AND subset = 'test'", (rid, fold, slide_id)).first()
        tilings = np.unique(att["tiling_id"])
        settings = q("SELECT settings FROM tilings WHERE tiling_id = ?", (int(tilings[0]),)).scalar()
    if len(tilings) > 1:
        notes.append(f"tiles come from {len(tilings)} tilings; the first one's read spec is used")
    settings = json.loads(settings) if isinstance(settings, str) else (settings or {})
    score = np.asarray(att["score"], np.float64)
    ok = np.isfinite(score)
    if not ok.all():
        notes.append(f"{int((~ok).sum())} tiles with a non-finite attention score left out")
        if not ok.any():
            raise MissingStep(f"run {rid} stored only non-finite attention for slide {slide_id}",
                              hint="the model diverged; retrain with a lower --lr")
    return SlideAttention(
        run=run, slide_id=slide_id, fold=int(fold), tested_folds=tested,
        tile_id=att["tile_id"][ok].astype(np.int64), idx=att["idx"][ok].astype(np.int64),
        x=att["x"][ok].astype(np.int64), y=att["y"][ok].astype(np.int64),
        size_l0=att["size_l0"][ok].astype(np.int64), score=score[ok], slide=slide,
        read_spec=settings.get("read"), prediction=dict(pred._mapping) if pred is not None else None,
        classes=list(run["settings"].get("classes") or []), notes=notes)


def _subsets(splits: dict) -> str:
    return ", ".join(f"{s} of fold {f}" for f, s in sorted(splits.items()))


# ------------------------------------------------------------------------------ numbers
def normalise(score: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Within-slide normalisation to [0, 1]. minmax: (s - min) / (max - min); percentile: the
    tile's rank among the slide's tiles (ties share their mean rank), 0 = least, 1 = most.
    A constant slide (or one tile) maps to 0.5."""
    s = np.asarray(score, np.float64)
    if method not in NORMS:
        raise InvalidInput(f"unknown normalisation {method!r}; choose {' or '.join(NORMS)}")
    if s.size == 0:
        return s
    if method == "percentile":
        from scipy.stats import rankdata

        if s.size == 1:
            return np.full(1, 0.5)
        return (rankdata(s, method="average") - 1.0) / (s.size - 1)
    lo, hi = float(s.min()), float(s.max())
    if not hi > lo:
        return np.full(s.size, 0.5)
    return (s - lo) / (hi - lo)


def paint_tiles(x, y, size, values, scale: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """Paint level-0 boxes [x, x+size)^2 with `values` on an (H, W) grid of `scale` grid px per
    level-0 px; overlapping tiles average. float32 (H, W), NaN where no tile lies.

    Vectorised: each box adds +v / -v at its four corners of a difference array
    (np.bincount), and two cumulative sums integrate it - O(n_tiles + H*W) however many tiles.
    Box edges are rounded to grid px, and every box covers at least one px.
    """
    H, W = int(shape[0]), int(shape[1])
    sx, sy = float(scale[0]), float(scale[1])
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    size = np.broadcast_to(np.asarray(size, np.float64), x.shape)
    v = np.asarray(values, np.float64)
    x0 = np.clip(np.rint(x * sx), 0, W).astype(np.int64)
    y0 = np.clip(np.rint(y * sy), 0, H).astype(np.int64)
    x1 = np.clip(np.maximum(np.rint((x + size) * sx), x0 + 1), 0, W).astype(np.int64)
    y1 = np.clip(np.maximum(np.rint((y + size) * sy), y0 + 1), 0, H).astype(np.int64)
    keep = (x1 > x0) & (y1 > y0)
    x0, x1, y0, y1, v = x0[keep], x1[keep], y0[keep], y1[keep], v[keep]
    W1 = W + 1
    corners = np.concatenate([y0 * W1 + x0, y0 * W1 + x1, y1 * W1 + x0, y1 * W1 + x1])
    sign = np.repeat(np.array([1.0, -1.0, -1.0, 1.0]), v.size)
    n = (H + 1) * W1
    total = np.bincount(corners, weights=sign * np.tile(v, 4), minlength=n).reshape(H + 1, W1)
    count = np.bincount(corners, weights=sign, minlength=n).reshape(H + 1, W1)
    total = total.cumsum(0).cumsum(1)[:H, :W]
    count = count.cumsum(0).cumsum(1)[:H, :W]
    covered = count > 0.5  # integer-valued; float sums leave ~1e-12 residue elsewhere
    out = np.full((H, W), np.nan, np.float32)
    out[covered] = (total[covered] / count[covered]).astype(np.float32)
    return out


def blend(rgb: np.ndarray, heat: np.ndarray, cmap, alpha: float) -> np.ndarray:
    """uint8 (H, W, 3): the colour of `heat` (in [0, 1]) over `rgb` with opacity alpha;
    pixels without a tile keep the slide's colour."""
    out = rgb.astype(np.float32)
    covered = np.isfinite(heat)
    colours = cmap(heat[covered])[:, :3].astype(np.float32) * 255.0
    out[covered] = (1.0 - alpha) * out[covered] + alpha * colours
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------ drawing
def _cmap(name: str):
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise InvalidInput(f"unknown colour map {name!r}",
                           hint="e.g. inferno, viridis, magma, jet, RdYlBu_r (matplotlib's names)") from None


def _background(sa: SlideAttention, max_side: int) -> tuple[np.ndarray, tuple[float, float], str | None]:
    """Thumbnail (from the pyramid's coarse levels) and its scale, or a blank canvas of the
    slide's size and a note saying why."""
    from histstore.wsi.reader import open_slide

    W, H = sa.width, sa.height
    path = sa.slide.get("path")
    note = None
    if path:
        try:
            with open_slide(path) as reader:
                thumb = reader.thumbnail(max_side)
                W, H = reader.width, reader.height
            return thumb, (thumb.shape[1] / W, thumb.shape[0] / H), None
        except SlideReadError as exc:
            note = f"slide image unreadable ({exc.message}): tiles drawn on a blank canvas"
    else:
        note = "no slide image in the catalog (features-only slide): tiles drawn on a blank canvas"
    s = min(1.0, max_side / max(W, H))
    tw, th = max(1, round(W * s)), max(1, round(H * s))
    return np.full((th, tw, 3), _NO_FILE_GREY, np.uint8), (tw / W, th / H), note


def _title(sa: SlideAttention, regression: bool) -> str:
    run = sa.run
    head = f"{sa.slide_id}\nrun {run['run_id']} · {run['model']} · task {run['task']} · fold {sa.fold} (test)"
    p = sa.prediction
    if p is None:
        return head + "\nno prediction stored"
    if regression:
        return head + f"\npredicted {p['score']:.3g} · true {p['target']:.3g}"
    pos = sa.classes[-1] if sa.classes else "positive"
    if len(sa.classes) == 2:
        score = f"p({pos}) = {p['score']:.3f}"
    else:
        score = f"p = {p['score']:.3f}"
    mark = "correct" if p["predicted"] == p["label"] else "wrong"
    return head + f"\npredicted {p['predicted']} ({score}) · true {p['label']} ({mark})"


def _draw_png(sa: SlideAttention, rgb: np.ndarray, norm: str, cmap, path: Path,
              regression: bool, notes: list[str]) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    h, w = rgb.shape[:2]
    # the thumbnail at about one figure pixel per thumbnail pixel, within readable bounds
    img_w = float(np.clip(w / _DPI, 5.0, 14.0))
    img_h = float(np.clip(img_w * h / w, 2.0, 14.0))
    n_title = 3
    fig = new_figure(figsize=(img_w + 1.6, img_h + 0.3 * n_title + 0.5 + 0.25 * len(notes)))
    ax = fig.add_subplot()
    ax.imshow(rgb, extent=(0, sa.width, sa.height, 0), interpolation="antialiased")
    ax.set_axis_off()
    ax.set_title(_title(sa, regression), fontsize=10.5, loc="center")
    cb = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=cmap), ax=ax, shrink=0.8,
                      fraction=0.05, pad=0.02)
    what = attention_label(sa.model, regression)
    lo, hi = float(sa.score.min()), float(sa.score.max())
    if norm == "percentile":
        cb.set_ticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0%", "25%", "50%", "75%", "100%"])
        cb.set_label(f"{what}\npercentile rank within the slide", fontsize=9)
    else:
        cb.set_ticks([0, 0.25, 0.5, 0.75, 1.0],
                     labels=[f"{lo:.3g}\n(min)", "", "", "", f"{hi:.3g}\n(max)"])
        cb.set_label(f"{what}\nmin-max normalised within the slide", fontsize=9)
    cb.ax.tick_params(labelsize=8)
    footer = [f"{len(sa.score)} tiles · {sa.width} x {sa.height} px (level 0)"
              + (f" · {sa.slide['mpp']:.3g} µm/px" if sa.slide.get("mpp") else "")] + notes
    fig.text(0.01, 0.005, "\n".join(footer), fontsize=8, color="#444444", va="bottom", ha="left")
    save_figure(fig, path, dpi=_DPI)


def _geojson(sa: SlideAttention, norm_values: np.ndarray, norm: str, cmap, regression: bool) -> dict:
    """FeatureCollection: one Polygon per tile in level-0 px (QuPath's coordinates: pixels,
    origin at the top left of the full-resolution image). QuPath reads properties.objectType,
    .classification {name, color}, .measurements {name: number}, .name and .color ([r, g, b]),
    and ignores the rest; tile_id, idx, attention and attention_norm are also plain properties
    for other readers."""
    n = len(sa.score)
    order = np.argsort(-sa.score, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(1, n + 1)
    tenth = max(1, n // 10) if n >= 10 else 0
    colours = np.rint(cmap(norm_values)[:, :3] * 255).astype(int).tolist()
    ns = uuid.uuid5(uuid.NAMESPACE_URL, f"histstore:run{sa.run['run_id']}:fold{sa.fold}")
    features = []
    for i in range(n):
        x0, y0 = int(sa.x[i]), int(sa.y[i])
        x1, y1 = x0 + int(sa.size_l0[i]), y0 + int(sa.size_l0[i])
        # 7 significant digits: attention is stored as float32
        raw, nv = float(f"{sa.score[i]:.7g}"), float(f"{norm_values[i]:.6g}")
        props = {
            "objectType": "detection",
            "name": f"tile {int(sa.idx[i])}",
            "color": colours[i],
            "measurements": {"attention": raw, "attention_norm": nv, "attention_rank": int(rank[i])},
            "tile_id": int(sa.tile_id[i]),
            "idx": int(sa.idx[i]),
            "attention": raw,
            "attention_norm": nv,
        }
        if tenth and rank[i] <= tenth:
            props["classification"] = {"name": _HIGH[0], "color": _HIGH[1]}
        elif tenth and rank[i] > n - tenth:
            props["classification"] = {"name": _LOW[0], "color": _LOW[1]}
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid5(ns, str(int(sa.tile_id[i])))),
            "geometry": {"type": "Polygon",
                         "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
            "properties": props,
        })
    run = sa.run
    return {
        "type": "FeatureCollection",
        "features": features,
        # foreign member (allowed by RFC 7946 section 6.1): what the numbers are
        "histstore": {
            "run_id": int(run["run_id"]), "fold": sa.fold, "slide_id": sa.slide_id, "model": run["model"],
            "task": run["task"], "attention_kind": sa.attention_kind,
            "attention": attention_label(sa.model, regression), "normalisation": norm,
            "coordinates": "level-0 pixels, origin top left", "width": sa.width, "height": sa.height,
            "prediction": sa.prediction,
        },
    }


def _draw_gallery(sa: SlideAttention, k: int, path: Path, regression: bool) -> tuple[bool, str | None]:
    """The k most and k least attended tiles, read at full resolution with the tiling's read
    spec. Returns (written, note); nothing is written when the slide has no readable image."""
    from histstore.wsi.process import read_tiles
    from histstore.wsi.reader import open_slide

    if not sa.slide.get("path"):
        return False, "no top-tiles gallery: the slide has no image file (features-only)"
    n = len(sa.score)
    k = min(k, n)
    order = np.argsort(-sa.score, kind="stable")
    most, least = order[:k], order[::-1][:k]
    spec = sa.read_spec
    note = None
    if not spec:
        size = int(sa.size_l0[0])
        spec = {"read_level": 0, "read_size": size, "tile_size": min(size, 256)}
        note = "the tiling stored no read spec: gallery tiles read at level 0"
    try:
        with open_slide(sa.slide["path"]) as reader:
            tiles = read_tiles(reader, sa.x[np.r_[most, least]], sa.y[np.r_[most, least]], spec)
    except SlideReadError as exc:
        return False, f"no top-tiles gallery: {exc.message}"
    ncols = min(k, 8)
    nrows = math.ceil(k / ncols)
    cell = 1.55
    fig = new_figure(figsize=(ncols * cell + 0.2, 2 * nrows * (cell + 0.35) + 1.0))
    fig.suptitle(f"{sa.slide_id} · run {sa.run['run_id']} ({sa.run['model']}) · fold {sa.fold}\n"
                 f"{attention_label(sa.model, regression)}", fontsize=10)
    blocks = fig.subfigures(2, 1)
    for b, (sub, label, sel, offset) in enumerate(((blocks[0], f"{k} most attended", most, 0),
                                                   (blocks[1], f"{k} least attended", least, k))):
        sub.suptitle(label, fontsize=9.5, fontweight="bold")
        axes = sub.subplots(nrows, ncols, squeeze=False)
        for j, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if j >= len(sel):
                continue
            i = sel[j]
            ax.imshow(tiles[offset + j], interpolation="nearest")
            rank = j + 1 if b == 0 else n - j
            ax.set_title(f"#{rank} · {sa.score[i]:.3g}\ntile {int(sa.idx[i])}", fontsize=7)
    save_figure(fig, path, dpi=120)
    return True, note


# ------------------------------------------------------------------------------ entry point
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
    colour_map = _cmap(cmap)
    sa = load_slide_attention(store, run_id, slide_id, fold)
    path, fmt = _resolve_output(store, sa, out, fmt)
    regression = is_regression(sa.run)
    values = normalise(sa.score, norm)
    notes = list(sa.notes)
    heat, scale = None, (1.0, 1.0)
    if fmt == "png":
        rgb, scale, note = _background(sa, max_side)
        if note:  # a blank canvas: nothing to see through, so the colours are drawn opaque
            notes.append(note)
        heat = paint_tiles(sa.x, sa.y, sa.size_l0, values, scale, rgb.shape[:2])
        _draw_png(sa, blend(rgb, heat, colour_map, 1.0 if note else alpha), norm, colour_map, path,
                  regression, notes)
    else:
        doc = _geojson(sa, values, norm, colour_map, regression)
        atomic_write(path, lambda p: p.write_text(json.dumps(doc, separators=(",", ":"))))
    rid = int(sa.run["run_id"])
    kind_desc = f"{sa.model} attention, {norm}"
    artifacts = [Artifact(f"heatmap-{fmt}", path, rid, sa.slide_id, sa.fold, kind_desc)]
    gallery = None
    if top:
        gpath = path.with_name(f"{path.stem}_top{int(top)}.png")
        written, note = _draw_gallery(sa, int(top), gpath, regression)
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
