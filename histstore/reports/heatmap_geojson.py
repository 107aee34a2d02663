"""The heatmap as GeoJSON: one polygon per tile in level-0 px, readable by QuPath."""
from __future__ import annotations

import uuid

import numpy as np

from histstore.reports.common import attention_label
from histstore.reports.slide_attention import SlideAttention

# QuPath classifications for the extreme tenth of tiles (colours as QuPath reads them: [r, g, b])
_HIGH, _LOW = ("Attention high", [220, 40, 30]), ("Attention low", [40, 90, 220])


def heatmap_geojson(sa: SlideAttention, norm_values: np.ndarray, norm: str, cmap, regression: bool) -> dict:
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
