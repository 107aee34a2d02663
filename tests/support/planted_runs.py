"""Catalog rows for tests and benchmarks of the reports, written without training.

- `plant_run`: a finished train run whose fold 0 tested the given slides, with the given
  per-tile attention (or none), so a heatmap of any size can be drawn in seconds;
- `register_slide_without_pixels`: a features-only slide (path NULL, as `histstore features
  import` registers them) with an imported tiling of the given tile boxes.

Both write one transaction each through the ordinary tables; test support, never used by
the library.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from histstore.catalog.bulk import insert_frame, query_numpy
from histstore.runs import create_run, end_run
from histstore.store import Store


def plant_run(store: Store, slides: dict[str, tuple[str, np.ndarray | None]], *,
              model: str = "gated-attention", task: str = "tumor",
              classes: tuple[str, ...] = ("normal", "tumor"), cohort: str | None = None,
              attention: bool = True) -> int:
    """A finished run with one fold whose test subset holds `slides`:
    {slide_id: (true label, attention per tile in idx order, or None for none)}.
    The prediction's score is the label's correctness stand-in: 0.9 for the positive class,
    0.1 otherwise. Returns the run id."""
    pos = classes[-1]
    with store.write() as conn:
        rid = create_run(conn, kind="train", settings={"task": task, "classes": list(classes), "folds": 1,
                                                       "planted": True},
                         seed=0, cohort=cohort, task=task, model=model)
        split_rows, pred_rows = [], []
        tile_ids, fold_scores = [], []
        for sid, (label, scores) in slides.items():
            case = conn.exec_driver_sql("SELECT case_id FROM slides WHERE slide_id = ?", (sid,)).scalar()
            if case is None:
                raise KeyError(f"no slide {sid!r}")
            split_rows.append({"run_id": rid, "fold": 0, "slide_id": sid, "case_id": case, "subset": "test"})
            score = 0.9 if label == pos else 0.1
            pred_rows.append({"run_id": rid, "fold": 0, "slide_id": sid, "subset": "test", "label": label,
                              "target": float(classes.index(label)), "score": score,
                              "predicted": pos if score > 0.5 else classes[0]})
            if attention and scores is not None:
                ids = query_numpy(conn, "SELECT tile_id FROM tiles WHERE slide_id = $1 ORDER BY idx",
                                  [sid])["tile_id"]
                scores = np.asarray(scores, np.float32)
                if len(ids) != len(scores):
                    raise ValueError(f"{sid}: {len(ids)} tiles but {len(scores)} scores")
                tile_ids.append(ids.astype(np.int64))
                fold_scores.append(scores)
        insert_frame(conn, "splits", pd.DataFrame(split_rows))
        insert_frame(conn, "predictions", pd.DataFrame(pred_rows))
        if tile_ids:
            ids = np.concatenate(tile_ids)
            insert_frame(conn, "attention", {"run_id": np.full(len(ids), rid, np.int64),
                                             "fold": np.zeros(len(ids), np.int32), "tile_id": ids,
                                             "score": np.concatenate(fold_scores)})
        end_run(conn, rid, "finished")
    return int(rid)


def register_slide_without_pixels(store: Store, slide_id: str, x, y, size_l0: int,
                                  case_id: str | None = None) -> int:
    """A slide known only by its tiles (no file, no width/height), like an imported feature
    set's. Returns the tiling id."""
    x = np.asarray(x, np.int64)
    y = np.asarray(y, np.int64)
    case_id = case_id or slide_id[:12]
    with store.write() as conn:
        conn.exec_driver_sql("INSERT INTO cases (case_id) VALUES (?) ON CONFLICT DO NOTHING", (case_id,))
        conn.exec_driver_sql("INSERT INTO slides (slide_id, case_id, path, status) VALUES (?, ?, NULL, 'registered')",
                             (slide_id, case_id))
        tiling_id = conn.exec_driver_sql(
            "INSERT INTO tilings (slide_id, kind, settings_key, settings, tile_size, overlap, size_l0, n_tiles) "
            "VALUES (?, 'imported', ?, ?, ?, 0, ?, ?) RETURNING tiling_id",
            (slide_id, f"planted-{slide_id}", json.dumps({"source": "planted"}), int(size_l0), int(size_l0),
             len(x))).scalar()
        insert_frame(conn, "tiles", {"tiling_id": np.full(len(x), tiling_id, np.int64),
                                     "slide_id": [slide_id] * len(x), "idx": np.arange(len(x), dtype=np.int32),
                                     "x": x, "y": y, "size_l0": np.full(len(x), size_l0, np.int32)})
    return int(tiling_id)
