"""Where slides come from: a folder, a CSV manifest, or a GDC sample sheet.

Parsing is validated whole before ingest writes anything: a malformed manifest (no `path`
column, duplicate slide_ids, bad ids, ...) is refused with the offending lines.

Case ids decide how cross-validation groups slides, so they are never made up silently: a
slide's case is the manifest's case_id column ('manifest'), the sample sheet's Case ID ('gdc'),
or the patient part of a TCGA barcode ('tcga-barcode'); a slide with none of these is refused
unless the user says `--case-id slide` (each such slide is its own patient: 'slide').
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from histstore.barcodes import assign_cases, check_case_id_mode
from histstore.errors import InvalidInput
from histstore.ids import check_id, refuse_bad_ids
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
    case_id_source: str | None = None  # manifest | gdc | tcga-barcode | slide


def default_slide_id(path: Path) -> str:
    """The file stem; for GDC's TCGA names (`<barcode>.<uuid>.svs`) the barcode alone."""
    m = _TCGA_FILE.match(path.name)
    return m.group(1) if m else path.stem


def _scan_folder(folder: Path, case_id_mode: str | None, catalog_cases: dict[str, str] | None = None) -> list[SlideSource]:
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
            sid = check_id(default_slide_id(p), "slide_id (from the file name)", str(p))
            found.append(SlideSource(p, sid, ""))
    if not found:
        raise InvalidInput(f"no slide files found in {folder}")
    return _with_cases(found, [None] * len(found), "folder", case_id_mode, str(folder),
                       [s.path.name for s in found], catalog_cases)


def _with_cases(sources: list[SlideSource], given: list[str | None], given_source: str,
                case_id_mode: str | None, where: str, labels: list[str],
                catalog_cases: dict[str, str] | None = None) -> list[SlideSource]:
    from dataclasses import replace

    cases = assign_cases([s.slide_id for s in sources], given, given_source, case_id_mode, where, labels,
                         catalog_cases)
    return [replace(s, case_id=c, case_id_source=src) for s, (c, src) in zip(sources, cases)]


def _from_manifest(path: Path, case_id_mode: str | None, catalog_cases: dict[str, str] | None = None) -> list[SlideSource]:
    df = read_table(path, required=["path"], what="manifest")
    refuse_rows(path, df["path"] == "", "have an empty path")
    refuse_rows(path, df["path"].str.contains("\x00", regex=False), "have a NUL character in the path")
    paths = [Path(p) if Path(p).is_absolute() else (path.parent / p) for p in df["path"]]
    sids = df["slide_id"] if "slide_id" in df.columns else pd.Series([""] * len(df))
    sids = pd.Series([s or default_slide_id(p) for s, p in zip(sids, paths)])
    refuse_bad_ids(path, sids, "slide_id")
    cids = df["case_id"] if "case_id" in df.columns else pd.Series([""] * len(df))
    refuse_bad_ids(path, [c if c else "ok" for c in cids], "case_id")
    refuse_rows(path, sids.duplicated(keep=False), "repeat a slide_id")
    sources = [SlideSource(p.absolute(), s, "", line=i + 2) for i, (p, s) in enumerate(zip(paths, sids))]
    return _with_cases(sources, [c or None for c in cids], "manifest", case_id_mode, path.name,
                       [f"line {s.line}" for s in sources], catalog_cases)


def _from_gdc_sheet(path: Path, case_id_mode: str | None, catalog_cases: dict[str, str] | None = None) -> list[SlideSource]:
    df = read_table(path, required=list(GDC_COLUMNS), what="GDC sample sheet")
    refuse_rows(path, df["File Name"] == "", "have an empty File Name")
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
        sources.append(SlideSource(p.absolute(), sid, "", row["Sample ID"].split(",")[0].strip() or None,
                                   row["Sample Type"].split(",")[0].strip() or None,
                                   row.get("Project ID") or None, line=i + 2))
    refuse_bad_ids(path, [s.slide_id for s in sources], "slide id (from File Name)")
    given = [row.split(",")[0].strip() or None for row in df["Case ID"]]
    refuse_bad_ids(path, [c or "ok" for c in given], "Case ID")
    refuse_rows(path, pd.Series([s.slide_id for s in sources]).duplicated(keep=False),
                "repeat a slide (same file name)")
    return _with_cases(sources, given, "gdc", case_id_mode, path.name, [f"line {s.line}" for s in sources],
                       catalog_cases)


def read_source(source: Path | str, case_id_mode: str | None = None,
                catalog_cases: dict[str, str] | None = None) -> list[SlideSource]:
    """The slides of a folder, manifest, sample sheet or single slide file, with checked ids
    and a case for each (see `assign_cases`; case_id_mode 'slide' = --case-id slide;
    catalog_cases: slide id -> case id of slides already in the catalog)."""
    check_case_id_mode(case_id_mode)
    source = Path(source)
    if source.is_dir():
        return _scan_folder(source, case_id_mode, catalog_cases)
    if not source.is_file():
        raise InvalidInput(f"{source} does not exist")
    if source.suffix.lower() in SLIDE_SUFFIXES:
        sid = check_id(default_slide_id(source), "slide_id (from the file name)", str(source))
        return _with_cases([SlideSource(source.absolute(), sid, "")], [None], "file", case_id_mode,
                           str(source), [source.name], catalog_cases)
    head = source.read_text(errors="replace").splitlines()[:1]
    if head and all(c in head[0] for c in GDC_COLUMNS):
        return _from_gdc_sheet(source, case_id_mode, catalog_cases)
    return _from_manifest(source, case_id_mode, catalog_cases)
