"""`histstore ingest`: slide files -> catalogued slides, tilings and tiles.

Each slide is processed by `histstore.wsi.process.process_slide`, a pure function run in worker
processes; only this (parent) process writes the catalog. A slide is registered - case, slide
row, tiling, tiles, cohort membership - in ONE short commit after its work is done (the
catalog is free between commits), so an interrupted ingest leaves no half-registered slide
and a re-run continues where it stopped. Each commit re-reads what another process may have
changed meanwhile (the same slide registered by a concurrent ingest: skipped).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from histstore.catalog.bulk import insert_frame, query_numpy
from histstore.catalog.cohorts import add_to_cohort, check_cohort_name
from histstore.cluster import (ClusterSpec, Task, check_shared_store, default_workers, guarded, open_runner,
                               parse_cluster, remove_token)
from histstore.errors import HiststoreError, InvalidInput
from histstore.faults import fault_point
from histstore.ids import path_component
from histstore.keys import settings_key
from histstore.progress import TileRate, progress_bar
from histstore.sources import SlideSource, read_source
from histstore.store import Store
from histstore.wsi.tiling import TilingSpec

QC_DIR = "artifacts/qc"


@dataclass
class SlideOutcome:
    slide_id: str
    status: str  # ingested | skipped | failed | changed
    n_tiles: int = 0
    message: str | None = None


@dataclass
class IngestReport:
    tiling_key: str
    spec: TilingSpec
    outcomes: list[SlideOutcome] = field(default_factory=list)
    cohort: str | None = None

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def n_tiles(self) -> int:
        return sum(o.n_tiles for o in self.outcomes if o.status == "ingested")

    @property
    def ok(self) -> bool:
        return not any(o.status in ("failed", "changed") for o in self.outcomes)


def tiling_settings(spec: TilingSpec) -> dict:
    return spec.to_dict()


def tiling_key(spec: TilingSpec) -> str:
    return settings_key(tiling_settings(spec))


def _process(src_path: str, spec_dict: dict, assume_mpp: float | None):
    """Worker entry point: picklable in, picklable out; errors returned, not raised."""
    from histstore.wsi.process import process_slide

    fault_point(f"ingest.worker_slide/{os.path.basename(src_path)}")
    try:
        return process_slide(src_path, TilingSpec.from_dict(spec_dict), assume_mpp), None
    except HiststoreError as exc:
        return None, str(exc)
    except Exception as exc:  # a corrupt file can make any library raise anything
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} ({src_path})"


def _catalog_state(conn: sa.Connection, key: str):
    slides = query_numpy(conn, "SELECT slide_id, fingerprint, status FROM slides")
    known = {s: (f, st) for s, f, st in zip(slides["slide_id"].tolist(), slides["fingerprint"].tolist(),
                                            slides["status"].tolist())}
    tiled = set(query_numpy(conn, "SELECT slide_id FROM tilings WHERE settings_key = $1",
                            [key])["slide_id"].tolist())
    return known, tiled


def _plan(sources: list[SlideSource], known, tiled, key: str):
    """Split sources into (to_process, skipped outcomes, changed outcomes)."""
    from histstore.wsi.fingerprint import slide_fingerprint

    todo, done = [], []
    for src in sources:
        if src.slide_id not in known:
            todo.append(src)
            continue
        fp_old, status = known[src.slide_id]
        if status == "failed" or fp_old is None:
            todo.append(src)
            continue
        try:
            fp_new = slide_fingerprint(src.path)
        except HiststoreError as exc:
            done.append(SlideOutcome(src.slide_id, "failed", message=str(exc)))
            continue
        if fp_new != fp_old:
            done.append(SlideOutcome(src.slide_id, "changed", message=(
                f"{src.path} differs from the file ingested as {src.slide_id} (fingerprint changed); "
                "left as it was - give the new scan another slide_id")))
        elif src.slide_id in tiled:
            done.append(SlideOutcome(src.slide_id, "skipped"))
        else:
            todo.append(src)  # known slide, new tiling settings
    return todo, done


def _ensure_case(conn: sa.Connection, src: SlideSource) -> None:
    conn.exec_driver_sql("INSERT INTO cases (case_id, project) VALUES (?, ?) ON CONFLICT DO NOTHING",
                         (src.case_id, src.project))


def _current(conn: sa.Connection, slide_id: str, key: str):
    """(fingerprint, status) of the slide now (None if unknown) and whether it has this tiling:
    read inside the commit, since another process may have registered it meanwhile."""
    row = conn.exec_driver_sql("SELECT fingerprint, status FROM slides WHERE slide_id = ?", (slide_id,)).first()
    tiled = bool(conn.exec_driver_sql("SELECT count(*) FROM tilings WHERE slide_id = ? AND settings_key = ?",
                                      (slide_id, key)).scalar())
    return (tuple(row) if row is not None else None), tiled


def qc_relpath(slide_id: str, key: str) -> str:
    return f"{QC_DIR}/{path_component(slide_id)}__{key}.png"


def _write_qc(store: Store, slide_id: str, key: str, png: bytes) -> str:
    """The QC thumbnail, written before the commit (a crash leaves at most a stray PNG that
    the next ingest of the slide replaces)."""
    qc_rel = qc_relpath(slide_id, key)
    qc_path = store.resolve(qc_rel)
    qc_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = qc_path.with_name(f".{qc_path.name}.{os.getpid()}.partial")
    tmp.write_bytes(png)
    os.replace(tmp, qc_path)
    return qc_rel


def _register_success(conn: sa.Connection, src: SlideSource, result, spec: TilingSpec,
                      key: str, existing: bool, qc_rel: str) -> None:
    props = result.slide_properties()
    _ensure_case(conn, src)
    cols = dict(path=str(src.path), fingerprint=props["fingerprint"], file_size=props["file_size"],
                vendor=props["vendor"], width=props["width"], height=props["height"],
                level_count=props["level_count"], mpp=props["mpp"], mpp_source=props["mpp_source"],
                objective_power=props["objective_power"], sample_id=src.sample_id,
                sample_type=src.sample_type)
    if existing:
        sets = ", ".join(f"{k} = ?" for k in cols)
        conn.exec_driver_sql(
            f"UPDATE slides SET {sets}, status = 'ingested', error = NULL, updated_at = current_timestamp "
            "WHERE slide_id = ?", (*cols.values(), src.slide_id))
    else:
        insert_frame(conn, "slides", pd.DataFrame([{**cols, "slide_id": src.slide_id,
                                                    "case_id": src.case_id, "status": "ingested",
                                                    "case_id_source": src.case_id_source}]))
    fault_point("ingest.mid_commit")
    grid = result.grid
    settings = {**tiling_settings(spec), "read": grid.spec}
    import json

    tiling_id = conn.exec_driver_sql(
        "INSERT INTO tilings (slide_id, kind, settings_key, settings, target_mpp, tile_size, overlap, "
        "min_tissue, tissue_method, read_level, read_size, size_l0, n_tiles, tissue_area_mm2, qc_path) "
        "VALUES (?, 'grid', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING tiling_id",
        (src.slide_id, key, json.dumps(settings), spec.target_mpp, spec.tile_size, spec.overlap,
         spec.min_tissue, spec.tissue_method, grid.read_level, grid.read_size, grid.size_l0,
         len(grid), result.tissue_area_mm2, qc_rel)).scalar()
    insert_frame(conn, "tiles", {
        "tiling_id": pd.Series(tiling_id, index=range(len(grid)), dtype="int64").to_numpy(),
        "slide_id": [src.slide_id] * len(grid), "idx": grid.idx.astype("int32"),
        "x": grid.x.astype("int64"), "y": grid.y.astype("int64"),
        "size_l0": pd.Series(grid.size_l0, index=range(len(grid)), dtype="int32").to_numpy(),
        "tissue_fraction": grid.tissue_fraction.astype("float32")})


def _register_failure(conn: sa.Connection, src: SlideSource, message: str, existing: bool) -> None:
    if existing:
        # keep an ingested slide's state; only a slide that never succeeded records the error
        conn.exec_driver_sql(
            "UPDATE slides SET error = ?, updated_at = current_timestamp WHERE slide_id = ? AND status = 'failed'",
            (message, src.slide_id))
        return
    _ensure_case(conn, src)
    insert_frame(conn, "slides", pd.DataFrame([{
        "slide_id": src.slide_id, "case_id": src.case_id, "path": str(src.path), "status": "failed",
        "error": message, "sample_id": src.sample_id, "sample_type": src.sample_type,
        "case_id_source": src.case_id_source}]))


def _file_size(path) -> float:
    try:
        return float(os.path.getsize(path))
    except OSError:
        return 0.0


def ingest(store: Store, source: Path | str, spec: TilingSpec, cohort: str | None = None,
           assume_mpp: float | None = None, workers: int | None = None,
           show_progress: bool = True, case_id_mode: str | None = None,
           cluster: ClusterSpec | str | None = None) -> IngestReport:
    """Ingest every slide of `source`; returns per-slide outcomes (failures do not raise).
    cluster: where the per-slide work runs (histstore.cluster; default `none`: this machine's
    spawn pool of `workers`); this process registers every slide either way.
    case_id_mode 'slide' (--case-id slide): a slide with no case id and no TCGA barcode is
    its own case; without it such slides are refused (see sources.assign_cases)."""
    if cohort is not None:
        check_cohort_name(cohort)
    where = cluster if isinstance(cluster, ClusterSpec) else parse_cluster(
        cluster, max(1, workers) if workers is not None else None)
    if assume_mpp is not None and not assume_mpp > 0:
        raise InvalidInput(f"--assume-mpp must be > 0, got {assume_mpp}")
    key = tiling_key(spec)
    with store.read() as conn:  # one connection for what the plan needs (each costs ~50 ms)
        # a slide ingested again (another tiling) keeps its case
        catalog_cases = dict(conn.exec_driver_sql(
            "SELECT slide_id, case_id FROM slides WHERE case_id IS NOT NULL").all())
        known, tiled = _catalog_state(conn, key)  # re-checked per slide in its commit (_current)
    sources = read_source(source, case_id_mode, catalog_cases)  # validated whole before anything is written
    report = IngestReport(key, spec, cohort=cohort)
    with store.session():
        todo, report.outcomes = _plan(sources, known, tiled, key)
        by_id = {s.slide_id: s for s in todo}
        workers = default_workers() if workers is None else max(1, workers)
        bar = progress_bar(total=len(sources), desc="ingest", unit="slide", disable=not show_progress)
        bar.update(len(report.outcomes))
        rate = TileRate()

        def handle(src: SlideSource, result, error: str | None) -> None:
            qc_rel = _write_qc(store, src.slide_id, key, result.qc_png) if result is not None else None
            fault_point("ingest.before_commit")
            with store.commit(f"slide {src.slide_id}") as conn:
                now, now_tiled = _current(conn, src.slide_id, key)
                if result is not None and now is not None and now_tiled and now[1] != "failed":
                    # registered by another process since we looked: keep theirs
                    outcome = SlideOutcome(src.slide_id, "skipped")
                    if cohort:
                        add_to_cohort(conn, cohort, [src.slide_id])
                elif result is not None and now is not None and now[0] is not None and now[1] != "failed" \
                        and now[0] != result.fingerprint:
                    outcome = SlideOutcome(src.slide_id, "changed", message=(
                        f"{src.path} differs from the file ingested as {src.slide_id} (fingerprint "
                        "changed); left as it was - give the new scan another slide_id"))
                elif result is not None:
                    _register_success(conn, src, result, spec, key, now is not None, qc_rel)
                    if cohort:
                        add_to_cohort(conn, cohort, [src.slide_id])
                    outcome = SlideOutcome(src.slide_id, "ingested", result.n_tiles)
                else:
                    _register_failure(conn, src, error, now is not None)
                    outcome = SlideOutcome(src.slide_id, "failed", message=error)
            fault_point("ingest.after_commit")
            report.outcomes.append(outcome)
            bar.update(1)
            bar.set_postfix(tiles=report.n_tiles, tiles_s=rate.add(outcome.n_tiles),
                            failed=report.count("failed"), refresh=False)

        spec_dict = spec.to_dict()
        tasks = [Task(s.slide_id, _process, (str(s.path), spec_dict, assume_mpp), _file_size(s.path))
                 for s in todo]
        if not todo:  # nothing to run: no cluster to start
            where = parse_cluster("none")
        with open_runner(where, 1 if len(todo) <= 1 else workers) as runner:
            token = None
            try:
                if where.distributed:
                    token = check_shared_store(runner, store.root)
                    tasks = [Task(t.key, guarded, (str(token), t.fn, *t.args), t.size) for t in tasks]
                for done in runner.run(tasks):
                    if done.error is not None:  # its worker died too often (Dask)
                        handle(by_id[done.task.key], None, done.error)
                    else:
                        handle(by_id[done.task.key], *done.value)
            finally:
                remove_token(token)
        bar.close()
        # slides already in the catalog (skipped) join the cohort too
        skipped = [o.slide_id for o in report.outcomes if o.status == "skipped"]
        if cohort and skipped:
            with store.commit(f"cohort {cohort}") as conn:
                add_to_cohort(conn, cohort, skipped)
    return report
