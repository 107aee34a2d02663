"""Where slides come from: a folder, a CSV manifest, or a GDC sample sheet.

Parsing is validated whole before ingest writes anything: a malformed manifest (no `path`
column, duplicate slide_ids, ...) is refused with the offending lines.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from histstore.barcodes import default_case_id
from histstore.errors import InvalidInput
from histstore.tabular import read_table, refuse_rows

# Files OpenSlide may open; a folder scan asks OpenSlide about each candidate.
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
                  ".bif", ".dcm", ".czi"}
GDC_COLUMNS = ("File Name", "Case ID", "Sample ID", "Sample Type")
_TCGA_FILE = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-\d{2}[A-Z]?-[^.]+)\.", re.IGNORECASE)


@dataclass(frozen=True)
class SlideSource:
    path: Path
    slide_id: str
    case_id: str
    sample_id: str | None = None
    sample_type: str | None = None
    project: str | None = None
    line: int | None = None  # manifest line, for messages


def default_slide_id(path: Path) -> str:
    """The file stem; for GDC's TCGA names (`<barcode>.<uuid>.svs`) the barcode alone."""
    m = _TCGA_FILE.match(path.name)
    return m.group(1) if m else path.stem


def _scan_folder(folder: Path) -> list[SlideSource]:
    import openslide

    found = []
    for dirpath, dirnames, files in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(files):
            p = Path(dirpath) / name
            if p.suffix.lower() not in SLIDE_SUFFIXES:
                continue
            try:
                if openslide.OpenSlide.detect_format(str(p)) is None:
                    continue
            except Exception:  # unreadable file: let ingest report it per slide
                pass
            sid = default_slide_id(p)
            found.append(SlideSource(p, sid, default_case_id(sid)))
    if not found:
        raise InvalidInput(f"no slide files found in {folder}")
    return found


def _from_manifest(path: Path) -> list[SlideSource]:
    df = read_table(path, required=["path"], what="manifest")
    refuse_rows(path, df["path"] == "", "have an empty path")
    paths = [Path(p) if Path(p).is_absolute() else (path.parent / p) for p in df["path"]]
    sids = df["slide_id"] if "slide_id" in df.columns else pd.Series([""] * len(df))
    sids = pd.Series([s or default_slide_id(p) for s, p in zip(sids, paths)])
    cids = df["case_id"] if "case_id" in df.columns else pd.Series([""] * len(df))
    cids = pd.Series([c or default_case_id(s) for c, s in zip(cids, sids)])
    refuse_rows(path, sids.duplicated(keep=False), "repeat a slide_id")
    return [SlideSource(p.absolute(), s, c, line=i + 2) for i, (p, s, c) in enumerate(zip(paths, sids, cids))]


def _from_gdc_sheet(path: Path) -> list[SlideSource]:
    df = read_table(path, required=list(GDC_COLUMNS), what="GDC sample sheet")
    base = path.parent
    index: dict[str, Path] | None = None
    sources = []
    for i, row in df.iterrows():
        name = row["File Name"]
        candidates = [base / row.get("File ID", "") / name, base / name]
        p = next((c for c in candidates if c.is_file()), None)
        if p is None:
            if index is None:  # files may sit anywhere below the sheet's folder
                index = {f.name: f for f in base.rglob("*") if f.is_file()}
            p = index.get(name, base / name)
        sid = default_slide_id(Path(name))
        case = row["Case ID"].split(",")[0].strip() or default_case_id(sid)
        sources.append(SlideSource(p.absolute(), sid, case, row["Sample ID"].split(",")[0].strip() or None,
                                   row["Sample Type"].split(",")[0].strip() or None,
                                   row.get("Project ID") or None, line=i + 2))
    refuse_rows(path, pd.Series([s.slide_id for s in sources]).duplicated(keep=False),
                "repeat a slide (same file name)")
    return sources


def read_source(source: Path | str) -> list[SlideSource]:
    source = Path(source)
    if source.is_dir():
        return _scan_folder(source)
    if not source.is_file():
        raise InvalidInput(f"{source} does not exist")
    if source.suffix.lower() in SLIDE_SUFFIXES:
        sid = default_slide_id(source)
        return [SlideSource(source.absolute(), sid, default_case_id(sid))]
    head = source.read_text(errors="replace").splitlines()[:1]
    if head and all(c in head[0] for c in GDC_COLUMNS):
        return _from_gdc_sheet(source)
    return _from_manifest(source)
