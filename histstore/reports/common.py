"""Shared pieces of the reports: figures, atomic file writes, artifact rows, run checks.

matplotlib is imported inside `new_figure` only, and figures are drawn on a bare `Figure`
(Agg canvas, no pyplot): no global backend switch, no GUI, safe in worker threads and
notebooks alike.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from histstore.catalog.bulk import insert_frame
from histstore.catalog.runs import require_run
from histstore.errors import InvalidInput
from histstore.fsops import remove_file
from histstore.store import Store

# What each MIL model stores as a tile's attention (mirrors `attention_kind` of the classes in
# histstore/mil/models.py, which import torch; tests/reports check the two agree).
ATTENTION_KIND = {
    "gated-attention": "softmax",
    "attention": "softmax",
    "dsmil": "softmax",
    "max": "share",
    "mean": "score",
    "mil-rnn": "score",
}

HEATMAP_DIR = "heatmaps"
REPORT_DIR = "reports"


def attention_label(model: str | None, regression: bool) -> str:
    """Colour-bar wording for a model's per-tile value (see ATTENTION_KIND)."""
    kind = ATTENTION_KIND.get(model or "")
    if kind == "softmax":
        return "attention weight (softmax over the slide's tiles)"
    if kind == "share":
        return "share of the max-pooled features"
    if kind == "score":
        return "tile score (predicted value)" if regression else "tile score (class log-odds)"
    return "tile attention"


def is_regression(run: dict) -> bool:
    spec = run["settings"].get("task_spec") or {}
    if spec.get("kind"):
        return spec["kind"] == "fc"
    return bool(run["task"]) and str(run["task"]).startswith("fc:")


def require_train_run(conn: sa.Connection, run_id: int | str) -> dict:
    """A run with MIL results: a train run, or an evaluate run (`histstore predict`, laid out
    as a train run with one test fold)."""
    run = require_run(conn, run_id)
    if run["kind"] not in ("train", "evaluate"):
        article = "an" if run["kind"][:1] in ("a", "e", "i", "o", "u") else "a"
        raise InvalidInput(f"run {run['run_id']} is {article} {run['kind']} run: heatmaps and reports cover "
                           "train and evaluate runs", hint="see `histstore runs list --kind train`")
    return run


def run_dir(store: Store, area: str, run_id: int) -> Path:
    return store.artifacts_dir / area / f"run{int(run_id)}"


def safe_name(text: str) -> str:
    """A slide id as a file name: histstore.ids.path_component, the one safe encoding."""
    from histstore.ids import path_component

    return path_component(str(text))


# ------------------------------------------------------------------------------- files
def new_figure(**kwargs):
    from matplotlib.figure import Figure

    kwargs.setdefault("layout", "constrained")
    return Figure(**kwargs)


def atomic_write(path: Path, write) -> Path:
    """Call write(tmp_path) and move the result into place: no half-written file remains
    when drawing fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            remove_file(tmp, path.parent)  # histstore.fsops
    return path


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi, facecolor="white"))


# ------------------------------------------------------------------------------- catalog
@dataclass(frozen=True)
class Artifact:
    kind: str
    path: Path
    run_id: int | None = None
    slide_id: str | None = None
    fold: int | None = None
    description: str | None = None


def register_artifacts(store: Store, artifacts: list[Artifact]) -> None:
    """Record files already written, in one transaction. A path registered before (the same
    heatmap drawn again) keeps one row: the old one is replaced."""
    if not artifacts:
        return
    import pandas as pd

    rows: list[dict[str, Any]] = [{
        "kind": a.kind, "path": store.relative(a.path), "run_id": a.run_id, "slide_id": a.slide_id,
        "fold": a.fold, "description": a.description} for a in artifacts]
    frame = pd.DataFrame(rows)
    frame["run_id"] = frame["run_id"].astype("Int64")
    frame["fold"] = frame["fold"].astype("Int32")
    frame["slide_id"] = frame["slide_id"].astype("string")
    frame["description"] = frame["description"].astype("string")
    with store.write() as conn:
        conn.exec_driver_sql("DELETE FROM artifacts WHERE path IN (SELECT unnest(?::VARCHAR[]))",
                             (frame["path"].tolist(),))
        insert_frame(conn, "artifacts", frame)
