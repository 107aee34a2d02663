"""Planning a features import, before anything is written: which file is which slide (file
names, or a mapping CSV), slide ids as the catalog knows them, and each file's shape and dtype
read from its header (`probe_all`), from which the set's dim and dtype are chosen."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import sqlalchemy as sa

from histstore.errors import InvalidInput
from histstore.ids import check_id, refuse_bad_ids
from histstore.interop import formats
from histstore.interop.formats import FileProblem


@dataclass
class PlannedFile:
    path: Path
    slide_id: str
    case_id: str | None = None         # from the mapping file's case_id column
    case_id_source: str | None = None  # for slides registered without pixels


def plan_files(directory: Path, fmt: str, mapping: Path | None) -> tuple[list[PlannedFile], int]:
    from histstore.tabular import read_table, refuse_rows

    files = formats.list_feature_files(directory, fmt)
    if mapping is None:
        if not files:
            raise InvalidInput(f"no .{fmt} feature files in {directory}")
        planned = [PlannedFile(p, check_id(formats.file_stem(p), "slide id (from the file name)", str(p)))
                   for p in files]
        ignored = 0
    else:
        df = read_table(mapping, required=["file", "slide_id"], what="mapping file")
        by_name = {p.name: p for p in files}
        by_stem = {formats.file_stem(p): p for p in files}

        def find(name: str) -> Path | None:
            if name in by_name:
                return by_name[name]
            if name in by_stem:
                return by_stem[name]
            p = Path(name) if Path(name).is_absolute() else directory / name
            return p if p.is_file() else None

        found = [find(f) for f in df["file"]]
        refuse_rows(mapping, np.array([f is None for f in found]),
                    f"name a file that is not a .{fmt} file in {directory}")
        refuse_rows(mapping, df["slide_id"] == "", "have an empty slide_id")
        refuse_bad_ids(mapping, df["slide_id"], "slide_id")
        if "case_id" in df.columns:
            refuse_bad_ids(mapping, [c or "ok" for c in df["case_id"]], "case_id")
        refuse_rows(mapping, df["slide_id"].duplicated(keep=False).to_numpy(), "repeat a slide_id")
        refuse_rows(mapping, pd.Series([str(f) for f in found]).duplicated(keep=False).to_numpy(),
                    "repeat a file")
        cases = df["case_id"] if "case_id" in df.columns else [""] * len(df)
        planned = [PlannedFile(p, s, c or None) for p, s, c in zip(found, df["slide_id"], cases)]
        ignored = len(set(files) - set(found))
    seen: dict[str, Path] = {}
    for p in planned:
        if p.slide_id in seen:
            raise InvalidInput(f"{seen[p.slide_id].name} and {p.path.name} are both slide {p.slide_id}",
                               hint="give a --mapping CSV (file,slide_id) or remove one")
        seen[p.slide_id] = p.path
    return planned, ignored


def known_slides(conn: sa.Connection) -> dict[str, dict]:
    rows = conn.exec_driver_sql("SELECT slide_id, width, height, path, mpp, status FROM slides").all()
    return {r[0]: {"width": r[1], "height": r[2], "path": r[3], "mpp": r[4], "status": r[5]} for r in rows}


def resolve_ids(planned: list[PlannedFile], known: dict, mapped: bool) -> None:
    """Exported files are named by `arrays.slide_key` (percent-quoting): map such stems back."""
    if mapped:
        return
    for p in planned:
        if p.slide_id not in known and unquote(p.slide_id) in known:
            p.slide_id = unquote(p.slide_id)


def probe_all(planned: list[PlannedFile], fmt: str) -> tuple[dict[str, formats.Probe], dict[str, str]]:
    probes, problems = {}, {}
    for item in planned:
        try:
            pr = formats.probe(item.path, fmt)
            if pr is None:  # pt: read it (memory-mapped when the file allows)
                pr = probe_pt(item.path)
            probes[item.slide_id] = pr
        except FileProblem as exc:
            problems[item.slide_id] = str(exc)
    return probes, problems


def probe_pt(path: Path) -> formats.Probe:
    import torch

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FileProblem(f"unreadable ({formats._one_line(exc)})") from None
    if isinstance(obj, dict):
        obj = obj.get("features")
    if not isinstance(obj, torch.Tensor):
        raise FileProblem("holds no tensor [N, D] (a tensor, or a dict with 'features')")
    shape = formats._squeeze_shape(obj.shape)
    if len(shape) != 2:
        raise FileProblem(f"features must be [N, D], got shape {list(shape)}")
    dtype = "float32" if obj.dtype == torch.bfloat16 else str(obj.dtype).replace("torch.", "")
    return formats.Probe(int(shape[0]), int(shape[1]), dtype)


def choose_dim_dtype(planned, probes: dict[str, formats.Probe], dtype: str) -> tuple[int, str] | None:
    ok = [probes[p.slide_id] for p in planned if p.slide_id in probes]
    if not ok:
        return None
    counts = Counter(pr.dim for pr in ok)
    top = max(counts.values())
    dim = next(pr.dim for pr in ok if counts[pr.dim] == top)  # ties: the first file's
    if dtype == "auto":
        dtype = "float16" if all(pr.dtype == "float16" for pr in ok if pr.dim == dim) else "float32"
    return dim, dtype
