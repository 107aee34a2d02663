"""Runs planted in a test store for the web tests (no training): attention that follows the
synthetic slides' planted tumour regions, a gene run with two per-gene children, a running job."""
from __future__ import annotations

import numpy as np
import pandas as pd

from histstore.catalog.bulk import insert_frame, query_numpy
from histstore.runs import create_run, end_run
from histstore.store import Store
from histstore.wsi.synth import tumor_fraction_of_tiles


def planted_scores(store: Store, truth: dict, slide_id: str, invert: bool = False, seed: int = 0) -> np.ndarray:
    """Per-tile attention (idx order): the tile's share of planted tumour, plus a little noise;
    invert: high outside the tumour instead."""
    with store.read() as conn:
        t = query_numpy(conn, "SELECT x, y, size_l0 FROM tiles WHERE slide_id = $1 ORDER BY idx", [slide_id])
    frac = tumor_fraction_of_tiles(truth["slides"][slide_id], t["x"], t["y"], t["size_l0"])
    noise = np.random.default_rng(seed).uniform(0, 0.05, frac.size)
    return ((1.0 - frac) if invert else frac) + noise + 0.01


def _fill_run(conn, rid: int, slides: dict[str, tuple[str, np.ndarray]], classes: tuple[str, str]) -> None:
    splits, preds, ids, scores = [], [], [], []
    for sid, (label, att) in slides.items():
        case = conn.exec_driver_sql("SELECT case_id FROM slides WHERE slide_id = ?", (sid,)).scalar()
        splits.append({"run_id": rid, "fold": 0, "slide_id": sid, "case_id": case, "subset": "test"})
        score = 0.9 if label == classes[1] else 0.2
        preds.append({"run_id": rid, "fold": 0, "slide_id": sid, "subset": "test", "label": label,
                      "target": float(classes.index(label)), "score": score,
                      "predicted": classes[1] if score > 0.5 else classes[0]})
        tid = query_numpy(conn, "SELECT tile_id FROM tiles WHERE slide_id = $1 ORDER BY idx", [sid])["tile_id"]
        assert len(tid) == len(att), (sid, len(tid), len(att))
        ids.append(tid.astype(np.int64))
        scores.append(np.asarray(att, np.float32))
    insert_frame(conn, "splits", pd.DataFrame(splits))
    insert_frame(conn, "predictions", pd.DataFrame(preds))
    ids = np.concatenate(ids)
    insert_frame(conn, "attention", {"run_id": np.full(len(ids), rid, np.int64), "fold": np.zeros(len(ids), np.int32),
                                     "tile_id": ids, "score": np.concatenate(scores)})
    conn.exec_driver_sql(
        "INSERT INTO metrics (run_id, fold, subset, name, value) VALUES (?, 0, 'test', 'auc', 1.0), "
        "(?, 0, 'test', 'accuracy', 1.0)", (rid, rid))


def plant_tumour_run(store: Store, truth: dict, slide_ids: list[str], cohort: str) -> int:
    """A finished gated-attention run (task tumor, fold 0 tests `slide_ids`) whose attention is
    the planted tumour share of each tile."""
    classes = ("normal", "tumor")
    slides = {s: ("tumor" if truth["slides"][s]["tumor"] else "normal", planted_scores(store, truth, s))
              for s in slide_ids}
    with store.write() as conn:
        rid = create_run(conn, kind="train", settings={"task": "tumor", "classes": list(classes), "folds": 1,
                                                       "planted": True},
                         seed=0, cohort=cohort, task="tumor", model="gated-attention")
        _fill_run(conn, rid, slides, classes)
        end_run(conn, rid, "finished")
    return int(rid)


def plant_gene_run(store: Store, truth: dict, slide_ids: list[str], cohort: str) -> tuple[int, list[int]]:
    """A gene run (parent, task de) with two children: de:TP53 attends to the planted tumour,
    de:EGFR to everything else."""
    classes = ("not_de", "de")
    genes = {gene: {s: ("de", planted_scores(store, truth, s, invert=invert)) for s in slide_ids}
             for gene, invert in (("TP53", False), ("EGFR", True))}
    with store.write() as conn:
        parent = create_run(conn, kind="train", settings={"task": "de", "genes": ["TP53", "EGFR"], "folds": 1,
                                                          "classes": list(classes), "planted": True},
                            seed=0, cohort=cohort, task="de", model="gated-attention")
        children = []
        for gene, slides in genes.items():
            rid = create_run(conn, kind="train", settings={"task": f"de:{gene}", "classes": list(classes), "folds": 1,
                                                           "planted": True},
                             seed=0, cohort=cohort, task=f"de:{gene}", model="gated-attention", parent_run_id=parent)
            _fill_run(conn, rid, slides, classes)
            conn.exec_driver_sql("INSERT INTO metrics (run_id, subset, name, value) VALUES "
                                 "(?, 'cohort', 'mean_abs_log2fc', ?)", (rid, 1.5 if gene == "TP53" else 0.4))
            end_run(conn, rid, "finished")
            children.append(int(rid))
        end_run(conn, parent, "finished")
    return int(parent), children


def plant_running_job(store: Store, cohort: str) -> int:
    with store.write() as conn:
        return int(create_run(conn, kind="train", settings={"task": "tumor"}, seed=0, cohort=cohort, task="tumor",
                              model="mean", progress_total=5, progress_unit="folds"))
