"""`histstore verify`: check that the catalog and the files agree (a store's fsck).

Checked, one Problem per thing wrong:
- every registered embedding array exists with its recorded shape and dtype, and (unless
  quick) the checksum of its bytes equals the recorded one;
- orphan arrays (a final-named array no catalog row registers: a crash between moving it into
  place and committing) and leftover partial arrays and files (`.partial`) of dead processes;
- runs marked running whose process is gone (histstore.liveness);
- checkpoints whose sha256 differs from the catalog's (encoders; MIL fold checkpoints) or that
  are missing (quick: existence only);
- tiles, tilings, slides and arrays that disagree: n_tiles vs the tiles rows, tile idx not
  0..n-1, a tile's slide not its tiling's, an array's rows or dim vs its tiling and set, an
  ingested slide without a tiling.

`repair=True` removes orphans and leftovers and marks dead runs interrupted; it never deletes
registered data (a registered array that is missing or corrupt is reported, not touched).
Orphans are listed and removed while holding the catalog (no process can be publishing an
array then: that happens only under the write lock).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from histstore.store import Store

PARTIAL_MIN_AGE_S = 3600  # a .partial file with no PID in its name is garbage after this long
_PID_PARTIAL = re.compile(r"\.(\d+)\.partial$")


@dataclass
class Problem:
    kind: str         # missing-array, bad-shape, bad-checksum, orphan-array, partial-leftover,
                      # dead-run, bad-checkpoint, missing-checkpoint, catalog-mismatch
    message: str
    repairable: bool = False
    repaired: bool = False

    def line(self) -> str:
        return f"{'repaired' if self.repaired else 'problem'}: {self.kind}: {self.message}"


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    n_arrays: int = 0
    n_checkpoints: int = 0
    seconds: float = 0.0

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]

    @property
    def ok(self) -> bool:
        return not self.unrepaired


def verify(store: Store, repair: bool = False, quick: bool = False, show_progress: bool = True,
           on_problem: Callable[[Problem], None] | None = None) -> VerifyReport:
    t0 = time.perf_counter()
    report = VerifyReport()

    def found(p: Problem) -> None:
        report.problems.append(p)
        if on_problem is not None:
            on_problem(p)

    with store.read() as conn:
        arrays_rows = _array_rows(conn)
        checkpoints = _checkpoint_rows(conn)
        for p in _catalog_mismatches(conn):
            found(p)
    _check_arrays(store, arrays_rows, quick, show_progress, found, report)
    _check_checkpoints(store, checkpoints, quick, found, report)
    # orphans, leftovers and dead runs: decided (and repaired) while holding the catalog
    holder = store.write("repair the store") if repair else store.read()
    with holder as conn:
        for p in _orphans_and_leftovers(store, conn, repair):
            found(p)
        for p in _dead_runs(conn, repair):
            found(p)
    report.seconds = time.perf_counter() - t0
    return report


# -- catalog ------------------------------------------------------------------------------------

def _array_rows(conn) -> list[dict]:
    rows = conn.exec_driver_sql(
        "SELECT a.embedding_set_id, e.name AS set_name, e.zarr_path, e.dtype, a.slide_id, a.n_rows, "
        "a.dim, a.checksum FROM embedding_arrays a JOIN embedding_sets e USING (embedding_set_id) "
        "WHERE a.status = 'complete' ORDER BY a.embedding_set_id, a.slide_id").all()
    return [dict(r._mapping) for r in rows]


def _checkpoint_rows(conn) -> list[tuple[str, str, str | None]]:
    """(what, recorded path, sha256) of checkpoints the catalog vouches for."""
    out = [(f"encoder {name}", path, sha) for name, path, sha in conn.exec_driver_sql(
        "SELECT name, checkpoint_path, checkpoint_sha256 FROM encoders WHERE checkpoint_path IS NOT NULL "
        "ORDER BY encoder_id").all()]
    out += [(f"run {run} {'final' if fold is None else f'fold {fold}'} checkpoint", path, sha)
            for run, fold, path, sha in conn.exec_driver_sql(
        "SELECT run_id, fold, path, sha256 FROM artifacts WHERE kind = 'mil-checkpoint' "
        "ORDER BY run_id, fold").all()]
    return out


_MISMATCH_SQL = [
    ("tiling {0} of slide {1} says n_tiles {2} but has {3} tile rows",
     "SELECT t.tiling_id, t.slide_id, t.n_tiles, count(x.tile_id) FROM tilings t "
     "LEFT JOIN tiles x ON x.tiling_id = t.tiling_id GROUP BY ALL HAVING t.n_tiles <> count(x.tile_id) "
     "ORDER BY 1"),
    ("tiling {0} of slide {1}: tile idx are not 0..n-1 (min {2}, max {3}, {4} distinct of {5})",
     "SELECT tiling_id, any_value(slide_id), min(idx), max(idx), count(DISTINCT idx), count(*) FROM tiles "
     "GROUP BY tiling_id HAVING min(idx) <> 0 OR max(idx) <> count(*) - 1 OR count(DISTINCT idx) <> count(*) "
     "ORDER BY 1"),
    ("tiling {0} belongs to slide {1} but {2} of its tiles name slide {3}",
     "SELECT t.tiling_id, t.slide_id, count(*), any_value(x.slide_id) FROM tiles x "
     "JOIN tilings t ON t.tiling_id = x.tiling_id WHERE x.slide_id <> t.slide_id GROUP BY ALL ORDER BY 1"),
    ("array of slide {0} in set {1} has {2} rows but its tiling {3} has {4} tiles",
     "SELECT a.slide_id, e.name, a.n_rows, a.tiling_id, t.n_tiles FROM embedding_arrays a "
     "JOIN embedding_sets e USING (embedding_set_id) JOIN tilings t ON t.tiling_id = a.tiling_id "
     "WHERE a.n_rows <> t.n_tiles ORDER BY 2, 1"),
    ("array of slide {0} in set {1} is registered on tiling {2} of slide {3}",
     "SELECT a.slide_id, e.name, a.tiling_id, t.slide_id FROM embedding_arrays a "
     "JOIN embedding_sets e USING (embedding_set_id) JOIN tilings t ON t.tiling_id = a.tiling_id "
     "WHERE t.slide_id <> a.slide_id ORDER BY 2, 1"),
    ("array of slide {0} in set {1} has dim {2}, the set {3}",
     "SELECT a.slide_id, e.name, a.dim, e.dim FROM embedding_arrays a JOIN embedding_sets e "
     "USING (embedding_set_id) WHERE a.dim <> e.dim ORDER BY 2, 1"),
    ("slide {0} is ingested but has no tiling",
     "SELECT s.slide_id FROM slides s WHERE s.status = 'ingested' AND NOT EXISTS "
     "(SELECT 1 FROM tilings t WHERE t.slide_id = s.slide_id) ORDER BY 1"),
]


def _catalog_mismatches(conn) -> list[Problem]:
    out = []
    for template, sql in _MISMATCH_SQL:
        for row in conn.exec_driver_sql(sql).all():
            out.append(Problem("catalog-mismatch", template.format(*row)))
    return out


# -- files -------------------------------------------------------------------------------------

def _check_arrays(store: Store, rows: list[dict], quick: bool, show_progress: bool, found,
                  report: VerifyReport) -> None:
    import numpy as np

    from histstore.embeddings import arrays
    from histstore.progress import progress_bar

    bar = progress_bar(total=len(rows), desc="verify arrays", unit="array", disable=not show_progress)
    for r in rows:
        set_dir = store.resolve(r["zarr_path"])
        where = f"slide {r['slide_id']} in set {r['set_name']}"
        try:
            info = arrays.stored_info(set_dir, r["slide_id"])
        except Exception as exc:  # unreadable metadata
            found(Problem("bad-shape", f"{where}: unreadable array ({_one_line(exc)})"))
            bar.update(1)
            continue
        if info is None:
            found(Problem("missing-array", f"{where}: registered but {set_dir / arrays.slide_key(r['slide_id'])} "
                                           "is missing"))
        elif info[0] != (r["n_rows"], r["dim"]) or np.dtype(info[1]) != np.dtype(r["dtype"]):
            found(Problem("bad-shape", f"{where}: stored {list(info[0])} {info[1]}, catalog "
                                       f"[{r['n_rows']}, {r['dim']}] {r['dtype']}"))
        elif not quick:
            try:
                got = arrays.stored_checksum(set_dir, r["slide_id"])
            except Exception as exc:  # a missing or corrupt chunk
                found(Problem("bad-checksum", f"{where}: unreadable chunks ({_one_line(exc)})"))
            else:
                if got != r["checksum"]:
                    found(Problem("bad-checksum", f"{where}: checksum {got} differs from the catalog's "
                                                  f"{r['checksum']}"))
        report.n_arrays += 1
        bar.update(1)
    bar.close()


def _check_checkpoints(store: Store, rows, quick: bool, found, report: VerifyReport) -> None:
    for what, recorded, sha in rows:
        path = store.resolve(recorded)
        report.n_checkpoints += 1
        if not path.is_file():
            found(Problem("missing-checkpoint", f"{what}: {path} is missing"))
            continue
        if quick or not sha:
            continue
        from histstore.hashing import sha256_file

        got = sha256_file(path)
        if got != sha:
            found(Problem("bad-checkpoint", f"{what}: sha256 of {path} is {got[:16]}..., the catalog "
                                            f"recorded {sha[:16]}..."))


def _orphans_and_leftovers(store: Store, conn, repair: bool) -> list[Problem]:
    from histstore.embeddings import arrays
    from histstore.fsops import remove_file, remove_tree

    out = []
    sets = conn.exec_driver_sql("SELECT embedding_set_id, name, zarr_path FROM embedding_sets").all()
    registered: dict[int, set[str]] = {}
    for set_id, slide_id in conn.exec_driver_sql(
            "SELECT embedding_set_id, slide_id FROM embedding_arrays").all():
        registered.setdefault(set_id, set()).add(slide_id)
    set_dirs = {}
    for set_id, name, zarr_path in sets:
        set_dirs[store.resolve(zarr_path).resolve()] = (set_id, name)

    def fix(problem: Problem, action) -> Problem:
        if repair:
            try:
                action()
                problem.repaired = True
            except OSError as exc:
                problem.message += f" (could not remove: {_one_line(exc)})"
        return problem

    for set_dir, (set_id, name) in sorted(set_dirs.items()):
        if not set_dir.is_dir():
            continue
        for entry in sorted(set_dir.iterdir()):
            if entry.name == arrays.PARTIAL_DIR:
                for part in sorted(entry.iterdir()):
                    if arrays.partial_is_leftover(part.name):
                        out.append(fix(Problem("partial-leftover",
                                               f"set {name}: {part} (an interrupted array write)", True),
                                       lambda p=part, o=entry: remove_tree(p, o)))
                continue
            slide = arrays.slide_from_key(entry.name)
            if entry.is_dir() and slide not in registered.get(set_id, set()):
                out.append(fix(Problem("orphan-array", f"set {name}: {entry} is registered for no slide", True),
                               lambda p=entry, o=set_dir: remove_tree(p, o)))
    emb = store.embeddings_path
    if emb.is_dir():
        for entry in sorted(emb.iterdir()):
            if entry.is_dir() and entry.resolve() not in set_dirs:
                out.append(fix(Problem("orphan-array", f"{entry} belongs to no embedding set", True),
                               lambda p=entry: remove_tree(p, emb)))
    for folder in (store.artifacts_dir, store.checkpoints_dir):
        if not folder.is_dir():
            continue
        for dirpath, _, files in os.walk(folder):
            for f in files:
                if f.endswith(".partial") and _partial_file_is_leftover(Path(dirpath) / f):
                    path = Path(dirpath) / f
                    out.append(fix(Problem("partial-leftover", f"{path} (an interrupted file write)", True),
                                   lambda p=path, o=Path(dirpath): remove_file(p, o)))
    return out


def _partial_file_is_leftover(path: Path) -> bool:
    from histstore.liveness import pid_alive

    m = _PID_PARTIAL.search(path.name)
    if m:
        return not pid_alive(int(m.group(1)))
    try:
        return time.time() - path.stat().st_mtime > PARTIAL_MIN_AGE_S
    except OSError:
        return False


def _dead_runs(conn, repair: bool) -> list[Problem]:
    from histstore.jobs import interrupt_dead_runs
    from histstore.liveness import progress_text, running_rows, why_interrupted

    out = []
    for r in running_rows(conn):
        if r["state"] == "running":
            continue
        what = " ".join(str(x) for x in (r["kind"], r["task"], r["model"]) if x)
        progress = progress_text(r["progress_done"], r["progress_total"], r["progress_unit"])
        out.append(Problem("dead-run", f"run {r['run_id']} ({what}) says running but "
                                       f"{why_interrupted(r['host'], r['pid'], r['heartbeat_age_s'])}"
                                       + (f"; stopped at {progress}" if progress else ""), True))
    if repair and out:
        interrupt_dead_runs(conn, "marked by histstore verify --repair")
        for p in out:
            p.repaired = True
    return out


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
