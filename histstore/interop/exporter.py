"""Exports for other tools: an embedding set as CLAM/TRIDENT-style h5 files, and a run's
predictions or attention as Parquet/CSV.

h5 layout (one file per slide, `<slide_id>.h5`, names made filesystem-safe by
`arrays.slide_key`): `features` [N, D] in the set's stored dtype (row i = tile idx i),
`coords` [N, 2] int64 level-0 top-left corners. `coords` attributes follow CLAM
(`patch_size`, `patch_level`, `downsample`, `name`) and TRIDENT (`patch_size_level0`): the
patch is described at level 0 (patch_level 0, patch_size = size_l0), which is exact for any
tiling; the tiling's own resolution is kept in `histstore_*` attributes on the file. Reading
the files back with `histstore features import` gives identical arrays on the same tiles.

Predictions and attention are streamed from the catalog in Arrow record batches (the read
connection is sandboxed: DuckDB itself may not write files) to a temporary name moved into
place when complete. No export replaces an existing file unless asked (--force).
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from histstore.catalog.bulk import duckdb_connection, query_numpy
from histstore.catalog.runs import require_run
from histstore.embeddings import arrays
from histstore.embeddings.sets import resolve_set
from histstore.errors import InvalidInput, MissingStep
from histstore.fsops import remove_file
from histstore.progress import progress_bar
from histstore.provenance import code_version
from histstore.store import Store

TABLE_FORMATS = ("parquet", "csv")
FEATURE_FORMATS = ("h5",)

PREDICTION_COLUMNS = ("run", "task", "fold", "subset", "slide_id", "case_id", "label", "target",
                      "score", "predicted")
ATTENTION_COLUMNS = ("run", "task", "fold", "slide_id", "case_id", "tile_id", "idx", "x", "y",
                     "size_l0", "score", "score_norm", "rank_in_slide")


@dataclass
class FeatureExport:
    embedding_set: str
    directory: Path
    files: list[Path] = field(default_factory=list)
    n_rows: int = 0


@dataclass
class TableExport:
    path: Path
    fmt: str
    n_rows: int


# -- features ---------------------------------------------------------------------------------

def _slides_of_set(conn: sa.Connection, set_id: int, cohort: str | None):
    sql = ("SELECT a.slide_id, s.case_id, a.tiling_id, a.n_rows, a.checksum, t.kind, t.settings_key, "
           "t.size_l0, t.target_mpp, t.tile_size, t.read_level, t.read_size "
           "FROM embedding_arrays a JOIN slides s USING (slide_id) JOIN tilings t USING (tiling_id) "
           "WHERE a.embedding_set_id = $1 AND a.status = 'complete'")
    params: list = [set_id]
    if cohort is not None:
        from histstore.catalog.cohorts import require_cohort

        require_cohort(conn, cohort)
        sql += " AND a.slide_id IN (SELECT slide_id FROM cohort_slides WHERE cohort = $2)"
        params.append(cohort)
    rows = conn.exec_driver_sql(sql.replace("$1", "?").replace("$2", "?") + " ORDER BY a.slide_id",
                                tuple(params)).all()
    return [dict(r._mapping) for r in rows]


def _write_h5(path: Path, features: np.ndarray, xy: np.ndarray, coords_attrs: dict, file_attrs: dict,
              features_attrs: dict) -> None:
    import h5py

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with h5py.File(tmp, "w") as f:
            d = f.create_dataset("features", data=features)
            c = f.create_dataset("coords", data=xy.astype(np.int64))
            for k, v in coords_attrs.items():
                c.attrs[k] = v
            for k, v in features_attrs.items():
                d.attrs[k] = v
            for k, v in file_attrs.items():
                f.attrs[k] = v
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            remove_file(tmp, path.parent)


def export_features(store: Store, set_ref: str | int, directory: Path | str, fmt: str = "h5",
                    cohort: str | None = None, overwrite: bool = False,
                    show_progress: bool = True) -> FeatureExport:
    """Write one h5 file per slide of the set (optionally only a cohort's slides)."""
    if fmt not in FEATURE_FORMATS:
        raise InvalidInput(f"--format must be one of {', '.join(FEATURE_FORMATS)}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InvalidInput(f"{directory} exists and is not a folder")
    with store.read() as conn:
        info = resolve_set(conn, set_ref)
        slides = _slides_of_set(conn, info.embedding_set_id, cohort)
        if not slides:
            raise MissingStep(f"embedding set {info.name!r} has no arrays"
                              + (f" for cohort {cohort!r}" if cohort else ""))
        encoder = None
        if info.encoder_id is not None:
            encoder = conn.exec_driver_sql("SELECT name FROM encoders WHERE encoder_id = ?",
                                           (info.encoder_id,)).scalar()
    targets = {s["slide_id"]: directory / f"{arrays.slide_key(s['slide_id'])}.h5" for s in slides}
    clash = [p.name for p in targets.values() if p.exists()]
    if clash and not overwrite:
        shown = ", ".join(clash[:5]) + (f" and {len(clash) - 5} more" if len(clash) > 5 else "")
        raise InvalidInput(f"{len(clash)} files exist in {directory}: {shown}",
                           hint="pass --force or choose an empty folder")
    # the catalog is read per slide (short reads), never held while files are written
    directory.mkdir(parents=True, exist_ok=True)
    set_dir = info.directory(store)
    report = FeatureExport(info.name, directory)
    version = code_version()
    bar = progress_bar(total=len(slides), desc="export", unit="slide", disable=not show_progress)
    for s in slides:
        sid = s["slide_id"]
        with store.read() as conn:
            tiles = query_numpy(conn, "SELECT idx, x, y FROM tiles WHERE tiling_id = $1 ORDER BY idx",
                                [s["tiling_id"]])
        feats = arrays.read_array(set_dir, sid)
        if feats.shape[0] != len(tiles["idx"]) or not np.array_equal(tiles["idx"], np.arange(len(tiles["idx"]))):
            raise InvalidInput(f"array of {sid} has {feats.shape[0]} rows but its tiling has "
                               f"{len(tiles['idx'])} tiles: the store is inconsistent")
        xy = np.stack([tiles["x"], tiles["y"]], axis=1).astype(np.int64)
        size_l0 = int(s["size_l0"])
        coords_attrs = {"patch_size": size_l0, "patch_level": 0, "downsample": np.array([1.0, 1.0]),
                        "patch_size_level0": size_l0, "name": sid}
        file_attrs = {k: v for k, v in {
            "histstore_version": version, "histstore_embedding_set": info.name,
            "histstore_embedding_set_id": int(info.embedding_set_id),
            "histstore_set_kind": info.kind, "histstore_encoder": encoder,
            "histstore_slide_id": sid, "histstore_case_id": s["case_id"],
            "histstore_tiling_id": int(s["tiling_id"]), "histstore_tiling_kind": s["kind"],
            "histstore_tiling_key": s["settings_key"], "histstore_size_l0": size_l0,
            "histstore_tile_size": s["tile_size"], "histstore_target_mpp": s["target_mpp"],
            "histstore_read_level": s["read_level"], "histstore_read_size": s["read_size"],
            "histstore_checksum": s["checksum"], "histstore_dtype": info.dtype,
        }.items() if v is not None}
        _write_h5(targets[sid], feats, xy, coords_attrs, file_attrs,
                  {"name": sid, "encoder": encoder or info.name})
        report.files.append(targets[sid])
        report.n_rows += feats.shape[0]
        bar.update(1)
    bar.close()
    return report


# -- predictions and attention ----------------------------------------------------------------

def table_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in TABLE_FORMATS:
            raise InvalidInput(f"--format must be one of {', '.join(TABLE_FORMATS)}")
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise InvalidInput(f"cannot tell the format of {path.name} from its suffix",
                       hint="name it .parquet or .csv, or pass --format parquet|csv")


def _run_ids(run: dict) -> str:
    """The run and, for a multi-gene parent run, its children of its own kind (ints and a
    kind from the catalog, safe to inline)."""
    rid = int(run["run_id"])
    kind = {"train": "train", "evaluate": "evaluate"}.get(run["kind"], "")
    return f"(SELECT run_id FROM runs WHERE run_id = {rid} OR (parent_run_id = {rid} AND kind = '{kind}'))"


def predictions_sql(run_set: str) -> str:
    return f"""
        SELECT p.run_id AS run, r.task, p.fold, p.subset, p.slide_id, s.case_id, p.label, p.target,
               p.score, p.predicted
        FROM predictions p JOIN runs r ON r.run_id = p.run_id JOIN slides s ON s.slide_id = p.slide_id
        WHERE p.run_id IN {run_set}
        ORDER BY p.run_id, p.fold, p.subset, p.slide_id"""


def attention_sql(run_set: str) -> str:
    # score_norm: min-max within (run, fold, slide), 1.0 where a slide's scores are all equal
    return f"""
        SELECT a.run_id AS run, r.task, a.fold, t.slide_id, s.case_id, a.tile_id, t.idx, t.x, t.y,
               t.size_l0, a.score,
               CASE WHEN max(a.score) OVER w = min(a.score) OVER w THEN 1.0
                    ELSE (a.score - min(a.score) OVER w) / (max(a.score) OVER w - min(a.score) OVER w)
               END::DOUBLE AS score_norm,
               rank() OVER (PARTITION BY a.run_id, a.fold, t.slide_id ORDER BY a.score DESC) AS rank_in_slide
        FROM attention a JOIN tiles t ON t.tile_id = a.tile_id JOIN slides s ON s.slide_id = t.slide_id
             JOIN runs r ON r.run_id = a.run_id
        WHERE a.run_id IN {run_set}
        WINDOW w AS (PARTITION BY a.run_id, a.fold, t.slide_id)
        ORDER BY a.run_id, a.fold, t.slide_id, t.idx"""


def _copy(conn: sa.Connection, sql: str, path: Path, fmt: str) -> int:
    """Stream the query's rows into `path` in Arrow record batches, via a temporary file
    renamed into place."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    raw = duckdb_connection(conn)
    n_rows = 0
    try:
        import warnings

        with warnings.catch_warnings():  # DuckDB notes the DB-API path copies once more
            warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")
            reader = raw.execute(sql).to_arrow_reader(65536)
        writer = (pq.ParquetWriter(tmp, reader.schema, compression="zstd") if fmt == "parquet"
                  else pacsv.CSVWriter(tmp, reader.schema))
        try:
            for batch in reader:
                writer.write_batch(batch)
                n_rows += batch.num_rows
        finally:
            writer.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            remove_file(tmp, path.parent)
    return n_rows


def _export_run_table(store: Store, run_ref, path: Path | str, fmt: str | None, what: str,
                      overwrite: bool = False) -> TableExport:
    path = Path(path)
    fmt = table_format(path, fmt)
    if path.exists() and not overwrite:
        raise InvalidInput(f"{path} exists; not overwritten", hint="pass --force to replace it")
    with store.read() as conn:
        run = require_run(conn, run_ref)
        run_set = _run_ids(run)
        table = "predictions" if what == "predictions" else "attention"
        n = conn.exec_driver_sql(f"SELECT count(*) FROM {table} WHERE run_id IN {run_set}").scalar()
        if not n:
            why = f" (status {run['status']})" if run["status"] != "finished" else ""
            raise MissingStep(f"run {run['run_id']} has no {what}{why}",
                              hint="see `histstore runs show " + str(run["run_id"]) + "`")
        sql = predictions_sql(run_set) if what == "predictions" else attention_sql(run_set)
        n_rows = _copy(conn, sql, path, fmt)
    return TableExport(path, fmt, n_rows)


def export_predictions(store: Store, run: int | str, path: Path | str, fmt: str | None = None,
                       overwrite: bool = False) -> TableExport:
    """A run's slide predictions (every fold, val and test) as Parquet or CSV; columns
    PREDICTION_COLUMNS. A multi-gene parent run exports its gene runs (column `task`)."""
    return _export_run_table(store, run, path, fmt, "predictions", overwrite)


def export_attention(store: Store, run: int | str, path: Path | str, fmt: str | None = None,
                     overwrite: bool = False) -> TableExport:
    """A run's test-tile attention with tile coordinates (level-0 pixels) as Parquet or CSV;
    columns ATTENTION_COLUMNS (`score_norm` = min-max within the slide, `rank_in_slide` 1 = top)."""
    return _export_run_table(store, run, path, fmt, "attention", overwrite)

