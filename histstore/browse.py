"""Read-only views of the store for people browsing it (`histstore serve`): what a page shows
about a cohort, a slide, a run, the jobs running now, and what lies under a click in the viewer.

Everything here reads through `Store.read()` (read-only connections that wait their turn while a
job commits) and never writes. Names that come from a URL (slide ids, run ids, tiling and
artifact ids) are looked up in the catalog with bound parameters; a file is only ever reached
through a path the catalog recorded, and only inside the store or where the slide was ingested
from.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from histstore.catalog.bulk import query_arrow, query_numpy
from histstore.errors import InvalidInput, MissingStep, NotFound, SlideNotFound
from histstore.store import Store

MAX_TOP = 64


def _rows(conn: sa.Connection, sql: str, params: list | tuple = ()) -> list[dict]:
    return [dict(r._mapping) for r in conn.exec_driver_sql(sql, tuple(params)).all()]


def _require_slide(conn: sa.Connection, slide_id: str) -> dict:
    row = conn.exec_driver_sql("SELECT * FROM slides WHERE slide_id = ?", (str(slide_id),)).first()
    if row is None:
        raise SlideNotFound(f"no slide {slide_id!r} in the catalog")
    return dict(row._mapping)


def as_int(value: Any, what: str) -> int:
    """An id or number from a URL: an integer, or InvalidInput naming it."""
    try:
        text = str(value).strip()
        if not text.lstrip("-").isdigit():
            raise ValueError
        return int(text)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a whole number, got {str(value)[:40]!r}") from None


# ------------------------------------------------------------------------------ SQL
def user_sql(store: Store, query: str) -> pa.Table | None:
    """A person's SQL from the web app: `histstore sql`'s read-only rules (store.read() is
    DuckDB's sandbox: no file access, settings locked)."""
    from histstore.sql import run_sql

    return run_sql(store, query)


# ------------------------------------------------------------------------------ jobs
def running_jobs(store: Store) -> list[dict]:
    """Runs marked running, newest first, each with `state` ('running', or 'interrupted' when
    its process is gone or its heartbeat stale: histstore.liveness's one rule), its progress
    (`fraction`, `progress`) and heartbeat age."""
    from histstore.liveness import progress_text, running_rows

    with store.read() as conn:
        rows = running_rows(conn)
        extra = {r[0]: r[1:] for r in conn.exec_driver_sql(
            "SELECT run_id, parent_run_id FROM runs WHERE status = 'running'").all()}
    for r in rows:
        r["parent_run_id"] = extra.get(r["run_id"], (None,))[0]
        done, total = r.get("progress_done"), r.get("progress_total")
        r["fraction"] = (float(done or 0) / float(total)) if total else None
        r["progress"] = progress_text(done, total, r.get("progress_unit"))
    return sorted(rows, key=lambda r: r["run_id"], reverse=True)


# ------------------------------------------------------------------------------ cohorts
@dataclass
class CohortPage:
    report: Any                 # cohorts.CohortReport
    slides: pa.Table            # members: slide_id, case_id, status, size, tiles, labels, error


def cohort_page(store: Store, name: str) -> CohortPage:
    from histstore.cohorts import show_cohort

    report = show_cohort(store, str(name))
    with store.read() as conn:
        slides = query_arrow(conn, """
            SELECT s.slide_id, s.case_id, s.status, s.width, s.height, s.mpp,
                   (SELECT sum(n_tiles) FROM tilings t WHERE t.slide_id = s.slide_id) AS tiles,
                   (SELECT string_agg(l.task || '=' || l.value, ', ' ORDER BY l.task)
                    FROM slide_labels l WHERE l.slide_id = s.slide_id) AS labels,
                   s.error
            FROM cohort_slides c JOIN slides s ON s.slide_id = c.slide_id
            WHERE c.cohort = $1 ORDER BY s.slide_id""", [report.name])
    return CohortPage(report, slides)


def failed_slides(store: Store) -> pa.Table:
    """Slides whose ingest failed, with why (ingest keeps them out of cohorts)."""
    with store.read() as conn:
        return query_arrow(conn, "SELECT slide_id, case_id, path, error, updated_at FROM slides "
                                 "WHERE status = 'failed' ORDER BY slide_id")


# ------------------------------------------------------------------------------ slides
@dataclass
class SlidePage:
    slide: dict
    labels: list[dict]
    cohorts: list[str]
    tilings: list[dict]
    embeddings: list[dict]
    predictions: list[dict]
    artifacts: list[dict]


def slide_page(store: Store, slide_id: str) -> SlidePage:
    with store.read() as conn:
        slide = _require_slide(conn, slide_id)
        sid = slide["slide_id"]
        labels = _rows(conn, "SELECT task, value, level, source FROM slide_labels WHERE slide_id = ? ORDER BY task",
                       [sid])
        cohorts = [r[0] for r in conn.exec_driver_sql(
            "SELECT cohort FROM cohort_slides WHERE slide_id = ? ORDER BY 1", (sid,)).all()]
        tilings = _rows(conn, """
            SELECT tiling_id, kind, tile_size, target_mpp, overlap, min_tissue, tissue_method, read_level,
                   size_l0, n_tiles, tissue_area_mm2, qc_path IS NOT NULL AS has_qc, created_at
            FROM tilings WHERE slide_id = ? ORDER BY tiling_id""", [sid])
        embeddings = _rows(conn, """
            SELECT e.embedding_set_id, e.name, e.kind, e.stain_norm, a.n_rows, a.dim, a.status, a.tiling_id
            FROM embedding_arrays a JOIN embedding_sets e ON e.embedding_set_id = a.embedding_set_id
            WHERE a.slide_id = ? ORDER BY e.embedding_set_id""", [sid])
        predictions = _rows(conn, """
            SELECT p.run_id, r.parent_run_id, r.model, r.task, r.status AS run_status, p.fold, p.label,
                   p.target, p.score, p.predicted
            FROM predictions p JOIN runs r ON r.run_id = p.run_id
            WHERE p.slide_id = ? AND p.subset = 'test' ORDER BY p.run_id, p.fold""", [sid])
        artifacts = _rows(conn, "SELECT artifact_id, kind, run_id, fold, description, created_at FROM artifacts "
                                "WHERE slide_id = ? ORDER BY artifact_id", [sid])
    return SlidePage(slide, labels, cohorts, tilings, embeddings, predictions, artifacts)


def slide_image_path(store: Store, slide_id: str) -> Path:
    """The slide's image file as the catalog records it. MissingStep for slides without one
    (features-only) or whose ingest failed."""
    with store.read() as conn:
        slide = _require_slide(conn, slide_id)
    if not slide.get("path"):
        raise MissingStep(f"slide {slide['slide_id']} has no image file (features-only)")
    if slide["status"] == "failed":
        raise MissingStep(f"slide {slide['slide_id']} failed ingest: {slide.get('error')}")
    return store.resolve(slide["path"])


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def qc_image_path(store: Store, slide_id: str, tiling_id: int) -> Path:
    """A tiling's QC thumbnail, found through the catalog (and inside the store's artifacts)."""
    with store.read() as conn:
        _require_slide(conn, slide_id)
        qc = conn.exec_driver_sql("SELECT qc_path FROM tilings WHERE slide_id = ? AND tiling_id = ?",
                                  (str(slide_id), int(tiling_id))).first()
    if qc is None:
        raise NotFound(f"slide {slide_id} has no tiling {tiling_id}")
    if not qc[0]:
        raise MissingStep(f"tiling {tiling_id} has no QC image")
    path = store.resolve(qc[0])
    if not _inside(path, store.artifacts_dir) or not path.is_file():
        raise MissingStep(f"QC image of tiling {tiling_id} is missing from the store")
    return path


def artifact_path(store: Store, artifact_id: int) -> tuple[Path, dict]:
    """A file registered in `artifacts`, only when it lies inside the store."""
    with store.read() as conn:
        row = conn.exec_driver_sql("SELECT artifact_id, kind, path, run_id, slide_id, fold, description "
                                   "FROM artifacts WHERE artifact_id = ?", (int(artifact_id),)).first()
    if row is None:
        raise NotFound(f"no artifact {artifact_id}")
    info = dict(row._mapping)
    path = store.resolve(info["path"])
    if not _inside(path, store.root) or not path.is_file():
        raise MissingStep(f"artifact {artifact_id} ({info['kind']}) is not a file inside the store")
    return path, info


# ------------------------------------------------------------------------------ viewer
@dataclass
class ViewerRun:
    run_id: int
    label: str
    folds: list[int] = field(default_factory=list)              # folds that tested the slide
    genes: list[dict] = field(default_factory=list)             # gene runs: {run_id, task, folds}

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "label": self.label, "folds": self.folds, "genes": self.genes}


def _run_label(r: dict) -> str:
    parts = [f"run {r['run_id']}", r.get("model") or r.get("kind") or "", r.get("task") or ""]
    if r.get("status") and r["status"] != "finished":
        parts.append(r["status"])
    return " · ".join(p for p in parts if p)


def viewer_runs(store: Store, slide_id: str) -> list[ViewerRun]:
    """Train and evaluate runs whose finished test folds hold this slide, for the viewer's run
    menu; the per-gene runs of a gene run sit under their parent (a switch between the genes'
    maps). An evaluate run's parent is the train run it applied: it stands on its own."""
    with store.read() as conn:
        sid = _require_slide(conn, slide_id)["slide_id"]
        tested = _rows(conn, """
            SELECT p.run_id, r.parent_run_id, r.kind, r.model, r.task, r.status,
                   list(DISTINCT p.fold ORDER BY p.fold) AS folds
            FROM predictions p JOIN runs r ON r.run_id = p.run_id
            WHERE p.slide_id = ? AND p.subset = 'test' AND r.kind IN ('train', 'evaluate')
            GROUP BY ALL ORDER BY p.run_id""", [sid])
        parent_ids = sorted({r["parent_run_id"] for r in tested if r["parent_run_id"] is not None})
        parents = {r["run_id"]: r for r in _rows(
            conn, "SELECT run_id, model, task, status, kind FROM runs WHERE run_id IN (SELECT unnest(?::BIGINT[]))",
            [parent_ids])} if parent_ids else {}
    out: dict[int, ViewerRun] = {}
    for r in tested:
        pid = r["parent_run_id"]
        if pid is None or parents.get(pid, {}).get("kind") != r["kind"]:
            out[r["run_id"]] = ViewerRun(int(r["run_id"]), _run_label(r), [int(f) for f in r["folds"]])
            continue
        if pid not in out:
            out[pid] = ViewerRun(int(pid), _run_label(parents.get(pid, {"run_id": pid})) + " (genes)")
        out[pid].genes.append({"run_id": int(r["run_id"]), "task": r["task"], "folds": [int(f) for f in r["folds"]]})
    return [out[k] for k in sorted(out)]


def slide_tiling_tiles(store: Store, slide_id: str, tiling_id: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(slide row, tiles of one of its tilings: x, y, size_l0, tissue_fraction)."""
    with store.read() as conn:
        slide = _require_slide(conn, slide_id)
        ok = conn.exec_driver_sql("SELECT count(*) FROM tilings WHERE slide_id = ? AND tiling_id = ?",
                                  (slide["slide_id"], int(tiling_id))).scalar()
        if not ok:
            raise NotFound(f"slide {slide['slide_id']} has no tiling {tiling_id}")
        tiles = query_numpy(conn, "SELECT x, y, size_l0, tissue_fraction FROM tiles WHERE tiling_id = $1 "
                                  "ORDER BY idx", [int(tiling_id)])
    return slide, tiles


def slide_size(slide: dict, tiles: dict[str, np.ndarray]) -> tuple[int, int]:
    """Level-0 width and height: the catalog's, else the tiles' extent (features-only)."""
    w, h = slide.get("width"), slide.get("height")
    if w and h:
        return int(w), int(h)
    if len(tiles["x"]) == 0:
        raise MissingStep(f"slide {slide['slide_id']} has neither a size nor tiles")
    return (int((tiles["x"] + tiles["size_l0"]).max()), int((tiles["y"] + tiles["size_l0"]).max()))


def top_tiles(sa, k: int = 10) -> list[dict]:
    """The k most attended tiles of a SlideAttention, most first."""
    from histstore.reports.raster import normalise

    if not 1 <= int(k) <= MAX_TOP:
        raise InvalidInput(f"k must be between 1 and {MAX_TOP}, got {k}")
    norm = normalise(sa.score, "minmax")
    order = np.argsort(-sa.score, kind="stable")[: int(k)]
    return [{"rank": i + 1, "tile_id": int(sa.tile_id[j]), "idx": int(sa.idx[j]), "x": int(sa.x[j]),
             "y": int(sa.y[j]), "size_l0": int(sa.size_l0[j]), "score": float(sa.score[j]),
             "norm": float(norm[j])} for i, j in enumerate(order)]


def tile_at(store: Store, slide_id: str, x: float, y: float, tiling_id: int | None = None,
            run_id: int | None = None, fold: int | None = None) -> dict | None:
    """The tile under level-0 point (x, y): of a run's attention (run_id + fold: with its score,
    min-max normalised score and rank in the slide) or of a tiling (else the slide's first).
    None when no tile lies there; where tiles overlap, the one whose centre is nearest."""
    if not (math.isfinite(x) and math.isfinite(y)):
        raise InvalidInput("x and y must be finite numbers")
    with store.read() as conn:
        sid = _require_slide(conn, slide_id)["slide_id"]
        near = "ORDER BY (x + size_l0 / 2.0 - $2) ^ 2 + (y + size_l0 / 2.0 - $3) ^ 2, tile_id LIMIT 1"
        inside = "$2 >= x AND $2 < x + size_l0 AND $3 >= y AND $3 < y + size_l0"
        if run_id is not None:
            if fold is None:
                raise InvalidInput("a fold is needed with a run")
            rows = query_arrow(conn, f"""
                WITH a AS (
                    SELECT t.tile_id, t.tiling_id, t.idx, t.x, t.y, t.size_l0, t.tissue_fraction, a.score,
                           rank() OVER (ORDER BY a.score DESC) AS rank_in_slide, count(*) OVER () AS n_tiles,
                           min(a.score) OVER () AS lo, max(a.score) OVER () AS hi
                    FROM attention a JOIN tiles t ON t.tile_id = a.tile_id
                    WHERE a.run_id = $4 AND a.fold = $5 AND t.slide_id = $1 AND isfinite(a.score))
                SELECT * FROM a WHERE {inside} {near}""",
                [sid, float(x), float(y), int(run_id), int(fold)]).to_pylist()
            if not rows:
                return None
            r = rows[0]
            span = (r.pop("hi") - (lo := r.pop("lo")))
            r["score_norm"] = (r["score"] - lo) / span if span > 0 else 0.5
            r.update(run_id=int(run_id), fold=int(fold))
            return r
        if tiling_id is None:
            first = conn.exec_driver_sql("SELECT min(tiling_id) FROM tilings WHERE slide_id = ?", (sid,)).scalar()
            if first is None:
                return None
            tiling_id = int(first)
        rows = query_arrow(conn, f"""
            SELECT tile_id, tiling_id, idx, x, y, size_l0, tissue_fraction FROM tiles
            WHERE slide_id = $1 AND tiling_id = $4 AND {inside} {near}""",
            [sid, float(x), float(y), int(tiling_id)]).to_pylist()
    return rows[0] if rows else None


# ------------------------------------------------------------------------------ runs
def run_settings(store: Store, run_id: int) -> dict:
    """A run's catalog row (settings decoded) with its embedding set and encoder names."""
    from histstore.catalog.runs import require_run

    with store.read() as conn:
        run = require_run(conn, run_id)
        q = conn.exec_driver_sql
        run["embedding_set"] = (q("SELECT name FROM embedding_sets WHERE embedding_set_id = ?",
                                  (run["embedding_set_id"],)).scalar()
                                if run["embedding_set_id"] is not None else None)
        run["encoder"] = (q("SELECT name FROM encoders WHERE encoder_id = ?", (run["encoder_id"],)).scalar()
                          if run["encoder_id"] is not None else None)
        run["children"] = _rows(conn, "SELECT run_id, task, status FROM runs WHERE parent_run_id = ? ORDER BY run_id",
                                [run["run_id"]])
        run["test_slides"] = _rows(conn, """
            SELECT p.fold, p.slide_id, p.label, p.target, p.score, p.predicted,
                   (SELECT count(*) FROM attention a JOIN tiles t ON t.tile_id = a.tile_id
                    WHERE a.run_id = p.run_id AND a.fold = p.fold AND t.slide_id = p.slide_id) AS n_attention
            FROM predictions p WHERE p.run_id = ? AND p.subset = 'test' ORDER BY p.fold, p.slide_id""",
                                   [run["run_id"]])
        run["artifacts"] = _rows(conn, "SELECT artifact_id, kind, slide_id, fold, description FROM artifacts "
                                       "WHERE run_id = ? ORDER BY artifact_id", [run["run_id"]])
    if isinstance(run.get("settings"), str):
        run["settings"] = json.loads(run["settings"])
    return run


def report_key(store: Store, run_id: int) -> tuple:
    """What a run's report depends on: changes whenever a fold finishes or the run ends."""
    with store.read() as conn:
        row = conn.exec_driver_sql(
            "SELECT r.status, r.finished_at, (SELECT count(*) FROM predictions p WHERE p.run_id = r.run_id), "
            "(SELECT count(*) FROM metrics m WHERE m.run_id = r.run_id), "
            "(SELECT count(*) FROM runs c WHERE c.parent_run_id = r.run_id AND c.status = 'finished') "
            "FROM runs r WHERE r.run_id = ?", (int(run_id),)).first()
    if row is None:
        raise NotFound(f"no run {run_id}", hint="see `histstore runs list`")
    return (int(run_id), *[str(v) for v in row])
