"""Finished train runs with chosen test scores, written straight into the catalog (no
training): the per-fold metrics are computed from the scores as `histstore train` computes
them, so `runs show`, `compare` and reports see what they would see after training."""
from __future__ import annotations

import numpy as np
import pandas as pd

from histstore.evaluation.case_level import case_metrics
from histstore.mil.metrics import classification_metrics
from histstore.runs import create_run, end_run, write_metrics
from histstore.store import Store


def ensure_slides(store: Store, slides: dict[str, str]) -> None:
    """slide_id -> case_id, registered without pixels when missing."""
    with store.write() as conn:
        for sid, case in slides.items():
            conn.exec_driver_sql("INSERT INTO cases (case_id) VALUES (?) ON CONFLICT DO NOTHING", (case,))
            conn.exec_driver_sql("INSERT INTO slides (slide_id, case_id, path, status) VALUES (?, ?, NULL, "
                                 "'registered') ON CONFLICT DO NOTHING", (sid, case))


def plant_scored_run(store: Store, preds: pd.DataFrame, *, classes=("normal", "tumor"), task: str = "tumor",
                     model: str = "gated-attention", parent: int | None = None, n_folds: int | None = None) -> int:
    """preds: fold, slide_id, case_id, label, score (positive-class probability), one row per
    test slide. Returns the run id."""
    classes = list(classes)
    pos = classes[-1]
    n_folds = n_folds or int(preds["fold"].max()) + 1
    ensure_slides(store, dict(zip(preds["slide_id"], preds["case_id"])))
    rows = []
    for fold, g in preds.groupby("fold"):
        y = (g["label"] == pos).to_numpy(int)
        s = g["score"].to_numpy(float)
        probs = np.stack([1 - s, s], axis=1)
        m = classification_metrics(y, probs, 2).values | case_metrics(g["case_id"].tolist(), y, probs, False, 2).values
        rows += [{"fold": int(fold), "subset": "test", "name": k, "value": v} for k, v in m.items()]
    with store.write() as conn:
        rid = create_run(conn, kind="train", settings={"task": task, "classes": classes, "folds": n_folds},
                         seed=0, task=task, model=model, parent_run_id=parent)
        split = preds[["fold", "slide_id", "case_id"]].assign(run_id=rid, subset="test")
        from histstore.catalog.bulk import insert_frame

        insert_frame(conn, "splits", split)
        insert_frame(conn, "predictions", pd.DataFrame({
            "run_id": rid, "fold": preds["fold"].astype(int), "slide_id": preds["slide_id"], "subset": "test",
            "label": preds["label"], "target": (preds["label"] == pos).astype(float), "score": preds["score"],
            "predicted": np.where(preds["score"] > 0.5, pos, classes[0])}))
        write_metrics(conn, rid, rows)
        end_run(conn, rid, "finished")
    return int(rid)


def plant_parent(store: Store, genes: list[str], task_kind: str = "de") -> int:
    with store.write() as conn:
        rid = create_run(conn, kind="train", settings={"task": task_kind, "genes": genes, "folds": 3}, seed=0,
                         task=f"{task_kind}:*", model="gated-attention")
        end_run(conn, rid, "finished")
    return int(rid)


def cohort_frame(n_cases: int, slides_per_case: int, n_folds: int, seed: int, signal: float,
                 case_labels: bool = False) -> pd.DataFrame:
    """Test predictions of n_cases cases (slides_per_case each), folds by case. Labels per
    slide alternate tumour/normal within a case, or are one per case with case_labels. score
    = sigmoid(signal * (2 y - 1) + noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cases):
        case_y = int(rng.integers(0, 2))
        for k in range(slides_per_case):
            y = case_y if case_labels else (c + k) % 2
            score = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1))))
            rows.append({"fold": c % n_folds, "slide_id": f"S{c:03d}-{k}", "case_id": f"C{c:03d}",
                         "label": "tumor" if y else "normal", "score": float(score)})
    return pd.DataFrame(rows)
