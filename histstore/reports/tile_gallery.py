"""The top-tiles gallery: a slide's most and least attended tiles at full resolution."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from histstore.errors import SlideReadError
from histstore.reports.common import attention_label, new_figure, save_figure
from histstore.reports.slide_attention import SlideAttention


def draw_tile_gallery(sa: SlideAttention, k: int, path: Path, regression: bool) -> tuple[bool, str | None]:
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
