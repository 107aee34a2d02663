"""The heatmap PNG: the blended thumbnail with a colour bar, the prediction in the title and
the tile count, resolution and notes in a footer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from histstore.reports.common import attention_label, new_figure, save_figure
from histstore.reports.slide_attention import SlideAttention

_DPI = 130


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


def draw_heatmap_png(sa: SlideAttention, rgb: np.ndarray, norm: str, cmap, path: Path,
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
