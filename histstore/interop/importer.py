"""`histstore features import`: tile features made elsewhere -> an embedding set of kind
`imported`, with tiles matched to the slide's existing tiling or a new `imported` tiling.

Per file (one slide): read and check the arrays (pure, `formats` + `checks`), work out the
tile size in level-0 pixels, align rows to a tiling, write the zarr array under a temporary
name and move it into place, then register - slide (with --register-slides), tiling + tiles
(when new), the array row and cohort membership - in ONE transaction. A bad file is reported
in one line and the others are imported; nothing is left half-registered. Re-running skips
slides whose array is already registered in the set. The catalog is held only for those short
commits (and a short read at the start); each commit re-checks that no other process
registered the slide in the set meanwhile.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from histstore.barcodes import assign_cases, check_case_id_mode
from histstore.catalog.cohorts import add_to_cohort, check_cohort_name
from histstore.cluster import ClusterSpec, DaskRunner, Task, check_shared_store, parse_cluster, remove_token
from histstore.embeddings import arrays
from histstore.embeddings.sets import (EmbeddingSetInfo, finished_slides, get_or_create_set,
                                       register_array, resolve_set, set_status)
from histstore.errors import InvalidInput
from histstore.faults import fault_point
from histstore.ids import check_id
from histstore.interop import checks, formats
from histstore.interop.feature_writer import write_features
from histstore.interop.formats import FileProblem
from histstore.interop.import_plan import (PlannedFile, choose_dim_dtype, known_slides, plan_files, probe_all,
                                           resolve_ids)
from histstore.interop.tile_matching import (insert_imported_tiling, level_downsamples, match_candidates,
                                             register_slide_without_pixels, tiling_candidates)
from histstore.progress import TileRate, progress_bar
from histstore.store import Store

DTYPES = ("auto", "float16", "float32")


@dataclass
class FileOutcome:
    file: str
    slide_id: str
    status: str                      # imported | skipped | failed
    n_rows: int = 0
    tiling_id: int | None = None
    tiling: str | None = None        # 'matched <kind> tiling' | 'new imported tiling'
    message: str | None = None       # the problem (failed) or a note (imported)

    def line(self) -> str:
        if self.status == "failed":
            return f"{self.file}: {self.message}"
        if self.status == "skipped":
            return f"{self.file}: {self.slide_id} already in the set, skipped"
        text = f"{self.file}: {self.slide_id} {self.n_rows} rows -> {self.tiling} {self.tiling_id}"
        return text + (f" ({self.message})" if self.message else "")


@dataclass
class ImportReport:
    embedding_set: str | None
    embedding_set_id: int | None
    created: bool
    source_format: str
    dim: int | None
    dtype: str | None
    cohort: str
    outcomes: list[FileOutcome] = field(default_factory=list)
    registered_slides: list[str] = field(default_factory=list)
    ignored_files: int = 0           # files in the folder that the mapping does not name

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failures(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def n_rows(self) -> int:
        return sum(o.n_rows for o in self.outcomes if o.status == "imported")

    def summary(self) -> str:
        text = (f"embedding set {self.embedding_set} ({'created' if self.created else 'reused'}, "
                f"{self.source_format}, dim {self.dim}, {self.dtype}): {self.count('imported')} files imported "
                f"({self.n_rows:,} rows), {self.count('skipped')} already there, {self.count('failed')} failed")
        if self.registered_slides:
            text += f"; {len(self.registered_slides)} slides registered without pixels"
        return text


@dataclass
class PreparedFile:
    """A file read, checked, matched to a tiling and written under .partial/ (prepare_file):
    what the writer registers. features are dropped (they are in the array)."""
    slide_id: str
    partial: str
    checksum: str
    n_rows: int
    tiling_id: int | None
    kind: str | None
    xy: np.ndarray | None        # corners, for a new imported tiling
    geom: checks.PatchGeometry
    ff: formats.FeatureFile
    notes: list[str]


def prepare_file(store_root: str, set_dir: str, path: Path, sid: str, slide: dict | None, fmt: str,
                 coords_dir: Path | None, patch_size: int | None, patch_level: int | None, dim: int,
                 dtype: str, candidates: list[tuple] | None, lease: str | None = None):
    """Per file, anywhere (this process or a Dask worker): (PreparedFile, None), or (None, the
    file's problem in one line). candidates: the slide's tilings (tiling_candidates), None for
    a slide not in the catalog. Only the array under .partial/ is written."""
    import os

    if lease is not None and not os.path.exists(lease):
        raise FileNotFoundError(f"this worker cannot see the store {store_root} (or its writer has stopped)")
    try:
        ff = formats.read_feature_file(path, fmt, coords_dir)
        width = slide["width"] if slide else None
        height = slide["height"] if slide else None
        xy = checks.check_arrays(ff.features, ff.coords, dim, width, height)
        geom = checks.patch_geometry(ff.attrs, patch_size, patch_level, None)
        if not geom.exact:
            ds = level_downsamples(Store(store_root), slide)
            if ds is not None:
                geom = checks.patch_geometry(ff.attrs, patch_size, patch_level, ds)
        tiling_id, kind, order, note = (None, None, None, None)
        if candidates is not None:
            tiling_id, kind, order, note = match_candidates(candidates, xy, geom.size_l0)
        data = np.asarray(ff.features if order is None else ff.features[order])
        if np.dtype(dtype) != data.dtype:
            with np.errstate(over="ignore", invalid="ignore"):
                cast = data.astype(dtype)
            if cast.dtype.kind == "f" and not np.isfinite(cast).all():
                raise FileProblem(f"values do not fit {dtype} (|x| > {np.finfo(dtype).max:g}); "
                                  "import into a float32 set (--dtype float32)")
            data = cast
    except FileProblem as exc:
        return None, str(exc)
    notes = [n for n in (note, None if geom.exact else f"tile size in level-0 pixels unknown: "
                         f"{geom.source}, size_l0 = {geom.size_l0}") if n]
    writer = write_features(Path(set_dir), sid, data, dtype)
    if lease is not None and not os.path.exists(lease):
        writer.discard()
        raise FileNotFoundError("the writer has stopped: array discarded")
    ff.features = None  # in the array now; not sent back
    return PreparedFile(sid, str(writer.tmp), writer.finish(), int(data.shape[0]), tiling_id, kind,
                        None if tiling_id is not None else xy, geom, ff, notes), None


def _import_one(store: Store, info: EmbeddingSetInfo, item: PlannedFile,
                slide: dict | None, fmt: str, coords_dir: Path | None, patch_size: int | None,
                patch_level: int | None, cohort: str, report: ImportReport) -> tuple[FileOutcome, dict]:
    """One file in this process: prepare, then register."""
    candidates = None
    if slide is not None:
        with store.read() as conn:
            candidates = tiling_candidates(conn, item.slide_id)
    prepared, problem = prepare_file(str(store.root), str(info.directory(store)), item.path, item.slide_id,
                                     slide, fmt, coords_dir, patch_size, patch_level, info.dim, info.dtype,
                                     candidates)
    if problem is not None:
        raise FileProblem(problem)
    return register_prepared(store, info, item, prepared, slide, cohort, report), prepared.ff.attrs


def register_prepared(store: Store, info: EmbeddingSetInfo, item: PlannedFile, prep: PreparedFile,
                      slide: dict | None, cohort: str, report: ImportReport) -> FileOutcome:
    """The writer's part: publish the array and register slide (without pixels), tiling (when
    new), the array row and cohort membership in one commit."""
    name, sid = item.path.name, item.slide_id
    set_dir = info.directory(store)
    fault_point("import.after_array_write")
    tiling_id = prep.tiling_id
    try:
        with store.commit(f"slide {sid}") as conn:
            if sid in _registered(conn, info.embedding_set_id, [sid]):
                arrays.ArrayWriter.discard_path(prep.partial, set_dir)  # another import registered it meanwhile
                return FileOutcome(name, sid, "skipped")
            registered_now = conn.exec_driver_sql(
                "SELECT count(*) FROM slides WHERE slide_id = ?", (sid,)).scalar()
            if slide is None and not registered_now:
                register_slide_without_pixels(conn, sid, item.case_id, item.case_id_source)
            if tiling_id is None:
                tiling_id = insert_imported_tiling(conn, sid, prep.xy, prep.geom, report.source_format, prep.ff, slide["mpp"] if slide else None)
                what = "new imported tiling"
            else:
                what = f"matched {prep.kind} tiling"
            arrays.publish_partial(set_dir, prep.partial, arrays.slide_key(sid))
            try:
                fault_point("import.mid_commit")
                register_array(conn, info, sid, tiling_id, prep.n_rows, prep.checksum)
                add_to_cohort(conn, cohort, [sid])
            except BaseException:
                arrays.remove_array(set_dir, sid)  # still holding the lock: it is ours
                raise
    except BaseException:
        arrays.ArrayWriter.discard_path(prep.partial, set_dir)  # the catalog never saw it
        raise
    if slide is None and not registered_now:
        report.registered_slides.append(sid)
    return FileOutcome(name, sid, "imported", prep.n_rows, int(tiling_id), what, "; ".join(prep.notes) or None)


def _import_distributed(store: Store, info: EmbeddingSetInfo, todo: list[PlannedFile], known: dict, fmt: str,
                        coords_dir: Path | None, patch_size: int | None, patch_level: int | None, cohort: str,
                        report: ImportReport, where: ClusterSpec, bar) -> dict | None:
    """One Dask task per file (largest first), registered here as each completes; a file whose
    workers died too often is a failed file like any other. Returns the first file's attrs."""
    set_dir = info.directory(store)
    by_id = {p.slide_id: p for p in todo}
    with store.read() as conn:  # the tilings files may match, read once
        candidates = {p.slide_id: tiling_candidates(conn, p.slide_id) for p in todo
                      if known.get(p.slide_id) is not None}
    first_attrs = None
    rate = TileRate()
    abandon = lambda v: v[0] is not None and arrays.ArrayWriter.discard_path(v[0].partial, set_dir)  # noqa: E731
    with DaskRunner(where, abandon=abandon) as runner:
        token = check_shared_store(runner, store.root)
        try:
            tasks = [Task(p.slide_id, prepare_file,
                          (str(store.root), str(set_dir), p.path, p.slide_id, known.get(p.slide_id), fmt, coords_dir,
                           patch_size, patch_level, info.dim, info.dtype, candidates.get(p.slide_id), str(token)),
                          _size(p.path)) for p in todo]
            for done in runner.run(tasks):
                item = by_id[done.task.key]
                prepared, problem = done.value if done.error is None else (None, done.error)
                if prepared is None:
                    outcome = FileOutcome(item.path.name, item.slide_id, "failed", message=problem)
                else:
                    try:
                        outcome = register_prepared(store, info, item, prepared, known.get(item.slide_id), cohort,
                                                    report)
                    except FileProblem as exc:
                        outcome = FileOutcome(item.path.name, item.slide_id, "failed", message=str(exc))
                    if first_attrs is None:
                        first_attrs = prepared.ff.attrs
                report.outcomes.append(outcome)
                bar.update(1)
                bar.set_postfix(tiles_s=rate.add(outcome.n_rows), refresh=False)
        finally:
            remove_token(token)
    arrays.clear_partials(set_dir)  # arrays of workers that died (this host)
    return first_attrs


def _size(path: Path) -> float:
    try:
        return float(path.stat().st_size)
    except OSError:
        return 0.0


def _registered(conn: sa.Connection, embedding_set_id: int, slide_ids: list[str]) -> set[str]:
    rows = conn.exec_driver_sql(
        "SELECT slide_id FROM embedding_arrays WHERE embedding_set_id = ? AND slide_id IN "
        "(SELECT unnest(?::VARCHAR[]))", (embedding_set_id, slide_ids)).all()
    return {r[0] for r in rows}


def _existing_set(conn: sa.Connection, name: str) -> EmbeddingSetInfo | None:
    n = conn.exec_driver_sql("SELECT count(*) FROM embedding_sets WHERE name = ?", (name,)).scalar()
    return resolve_set(conn, name) if n else None


def import_features(store: Store, directory: Path | str, *, name: str, cohort: str,
                    fmt: str | None = None, patch_size: int | None = None,
                    patch_level: int | None = None, mapping: Path | str | None = None,
                    register_slides: bool = False, coords_dir: Path | str | None = None,
                    dtype: str = "auto", show_progress: bool = True,
                    case_id_mode: str | None = None, cluster: ClusterSpec | str | None = None,
                    workers: int | None = None) -> ImportReport:
    """Import one feature file per slide from `directory` into embedding set `name`.

    Bad files are reported in `ImportReport.outcomes` (status 'failed', one-line message) and
    do not stop the others. Raises InvalidInput for problems of the whole command (no files,
    a bad mapping, slides not in the catalog without `register_slides`, a set name taken by a
    set of other settings). Slides registered without pixels get their case from the
    mapping's case_id column or their TCGA barcode; others need case_id_mode 'slide'.
    """
    where = cluster if isinstance(cluster, ClusterSpec) else parse_cluster(cluster, workers)
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInput(f"{directory} is not a folder")
    if not name or not name.strip():
        raise InvalidInput("--name must not be empty")
    check_id(name, "embedding set name (--name)")
    check_cohort_name(cohort)
    check_case_id_mode(case_id_mode)
    if patch_size is not None and patch_size < 1:
        raise InvalidInput(f"--patch-size must be >= 1, got {patch_size}")
    if patch_level is not None and patch_level < 0:
        raise InvalidInput(f"--patch-level must be >= 0, got {patch_level}")
    if dtype not in DTYPES:
        raise InvalidInput(f"--dtype must be one of {', '.join(DTYPES)}")
    coords_dir = Path(coords_dir) if coords_dir is not None else None
    if coords_dir is not None and not coords_dir.is_dir():
        raise InvalidInput(f"--coords-dir {coords_dir} is not a folder")
    if fmt is None:
        fmt = formats.detect_format(directory)
        if fmt is None:
            raise InvalidInput(f"no feature files (.h5, .pt, .npy) in {directory}")
        if fmt == "ambiguous":
            raise InvalidInput(f"{directory} holds both .pt and .npy files", hint="pass --format pt or --format npy")
    elif fmt not in formats.FORMATS:
        raise InvalidInput(f"--format must be one of {', '.join(formats.FORMATS)}")
    planned, ignored = plan_files(directory, fmt, Path(mapping) if mapping else None)

    with store.session():
        with store.read() as conn:
            known = known_slides(conn)
            resolve_ids(planned, known, mapping is not None)
            unknown = [p for p in planned if p.slide_id not in known]
            if unknown and not register_slides:
                shown = ", ".join(p.slide_id for p in unknown[:10]) + (
                    f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
                raise InvalidInput(f"{len(unknown)} of {len(planned)} files name slides that are not in the "
                                   f"catalog: {shown}",
                                   hint="ingest them first, give a --mapping CSV, or pass --register-slides "
                                        "to register them as slides without pixels")
            existing = _existing_set(conn, name)
            if existing is not None and existing.kind != "imported":
                raise InvalidInput(f"embedding set {name!r} exists and is {existing.kind}, not imported",
                                   hint="choose another --name")
            if existing is not None and (existing.settings or {}).get("source_format") != fmt:
                raise InvalidInput(f"embedding set {name!r} was imported from "
                                   f"{(existing.settings or {}).get('source_format')} files, not {fmt}",
                                   hint="choose another --name")
            if existing is not None and dtype != "auto" and dtype != existing.dtype:
                raise InvalidInput(f"embedding set {name!r} holds {existing.dtype}, not {dtype}",
                                   hint="drop --dtype or choose another --name")
            done = finished_slides(conn, existing.embedding_set_id) if existing else set()
        if unknown:  # slides to register without pixels: each needs its patient's case id
            cases = assign_cases([p.slide_id for p in unknown], [p.case_id for p in unknown], "manifest",
                                 case_id_mode, Path(mapping).name if mapping else str(directory),
                                 [p.path.name for p in unknown])
            for p, (case, source) in zip(unknown, cases):
                p.case_id, p.case_id_source = case, source
        report = ImportReport(None, None, False, fmt, None, None, cohort, ignored_files=ignored)
        pending = [p for p in planned if p.slide_id not in done]
        skipped = [p for p in planned if p.slide_id in done]
        report.outcomes += [FileOutcome(p.path.name, p.slide_id, "skipped") for p in skipped]

        probes, problems = probe_all(pending, fmt)
        if existing is not None:
            dim, set_dtype = existing.dim, existing.dtype
        else:
            chosen = choose_dim_dtype(pending, probes, dtype)
            dim, set_dtype = chosen if chosen else (None, None)
        todo = []
        for p in pending:
            if p.slide_id in problems:
                report.outcomes.append(FileOutcome(p.path.name, p.slide_id, "failed", message=problems[p.slide_id]))
            elif probes[p.slide_id].dim != dim:
                report.outcomes.append(FileOutcome(
                    p.path.name, p.slide_id, "failed",
                    message=f"feature dim {probes[p.slide_id].dim} differs from the set's dim {dim}"
                            + ("" if existing else " (that of most files)")))
            else:
                todo.append(p)

        info, created = existing, False
        if todo:
            attributes = {"source_dir": str(directory.resolve()), "source_format": fmt,
                          "patch_size_option": patch_size, "patch_level_option": patch_level,
                          "mapping": str(Path(mapping).resolve()) if mapping else None,
                          "coords_dir": str(coords_dir.resolve()) if coords_dir else None}
            with store.commit(f"embedding set {name}") as conn:
                info, created = get_or_create_set(
                    conn, name=name, kind="imported", dim=dim, dtype=set_dtype,
                    settings={"kind": "imported", "name": name, "source_format": fmt},
                    source_format=fmt, attributes=attributes)
            info.directory(store).mkdir(parents=True, exist_ok=True)
        if info is not None:
            report.embedding_set, report.embedding_set_id = info.name, info.embedding_set_id
            report.dim, report.dtype = info.dim, info.dtype
        report.created = created

        bar = progress_bar(total=len(todo), desc="import", unit="file", disable=not show_progress)
        first_attrs = None
        if where.distributed and todo:
            first_attrs = _import_distributed(store, info, todo, known, fmt, coords_dir, patch_size, patch_level,
                                              cohort, report, where, bar)
            todo = []
        for item in todo:
            try:
                outcome, attrs = _import_one(store, info, item, known.get(item.slide_id), fmt,
                                             coords_dir, patch_size, patch_level, cohort, report)
                if first_attrs is None:
                    first_attrs = attrs
            except FileProblem as exc:
                outcome = FileOutcome(item.path.name, item.slide_id, "failed", message=str(exc))
            report.outcomes.append(outcome)
            bar.update(1)
        bar.close()
        report.outcomes.sort(key=lambda o: o.file)

        with store.commit(f"the end of the import into {name}") as conn:
            if skipped:
                add_to_cohort(conn, cohort, [p.slide_id for p in skipped])
            if info is not None:
                n_arrays = len(finished_slides(conn, info.embedding_set_id))
                if created and n_arrays == 0:  # every file failed: leave no empty set behind
                    conn.exec_driver_sql("DELETE FROM embedding_sets WHERE embedding_set_id = ?",
                                         (info.embedding_set_id,))
                    _remove_empty_dir(info.directory(store), store.embeddings_path)
                    report.embedding_set = report.embedding_set_id = None
                else:
                    set_status(conn, info.embedding_set_id, "complete" if report.ok else "partial")
                    if created and first_attrs is not None:
                        conn.exec_driver_sql(
                            "UPDATE embedding_sets SET attributes = ? WHERE embedding_set_id = ?",
                            (json.dumps({**attributes, "file_attributes": first_attrs}, default=str),
                             info.embedding_set_id))
    return report


def _remove_empty_dir(path: Path, owner: Path) -> None:
    """Remove a set's folder that holds nothing but an empty .partial/ (another import into the
    same set may be writing there: then it is not empty and stays)."""
    from histstore.fsops import remove_tree

    try:
        entries = list(path.iterdir())
        partial = path / arrays.PARTIAL_DIR
        if any(p != partial for p in entries) or (partial.is_dir() and any(partial.iterdir())):
            return
        remove_tree(path, owner)
    except OSError:
        return
