"""TCGA barcodes: the pattern (patient and sample type), and where a slide's case id comes
from (`assign_cases`: given, the TCGA barcode's patient part, or - only when the user says so -
the slide itself; never made up silently)."""
from __future__ import annotations

import re

from histstore.errors import InvalidInput
from histstore.tabular import SHOW_LINES

CASE_ID_MODES = ("slide",)

# TCGA barcode: TCGA-TSS-PPPP-SSV-... ; SS = sample type (01-09 tumour, 10-19 normal, 20-29 control)
TCGA_BARCODE = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})-(\d{2})[A-Z]?", re.IGNORECASE)


def check_case_id_mode(mode: str | None) -> None:
    if mode is not None and mode not in CASE_ID_MODES:
        raise InvalidInput(f"--case-id must be one of {', '.join(CASE_ID_MODES)}, not {mode!r}")


def assign_cases(slide_ids: list[str], given: list[str | None], given_source: str,
                 case_id_mode: str | None, where: str,
                 labels: list[str] | None = None,
                 catalog_cases: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(case_id, case_id_source) per slide: the given case id, else the case the catalog
    already holds for the slide (`catalog_cases`: a slide ingested again, e.g. with another
    tiling), else the TCGA patient barcode, else - only with case_id_mode 'slide' - the slide
    id itself. Refuses (naming the rows: `labels`, e.g. 'line 4') slides left without a case,
    and files that give case ids for some rows but not others."""
    check_case_id_mode(case_id_mode)
    catalog_cases = catalog_cases or {}
    out, missing = [], []
    for i, (sid, case) in enumerate(zip(slide_ids, given)):
        if case:
            out.append((case, given_source))
            continue
        if sid in catalog_cases:
            out.append((catalog_cases[sid], "catalog"))
            continue
        m = TCGA_BARCODE.match(sid)
        if m:
            out.append((m.group(1).upper(), "tcga-barcode"))
            continue
        missing.append(i)
        out.append((sid, "slide"))
    if not missing:
        return out
    names = labels or [repr(s) for s in slide_ids]
    shown = ", ".join(names[i] for i in missing[:SHOW_LINES])
    more = f" and {len(missing) - SHOW_LINES} more" if len(missing) > SHOW_LINES else ""
    if any(given):
        raise InvalidInput(
            f"{where}: {len(missing)} slide(s) have no case id while others have one ({shown}{more}); "
            "nothing was written",
            hint="give every row its patient's case_id: slides of one patient must share it, or "
                 "they can land in train and test of the same fold")
    if case_id_mode != "slide":
        raise InvalidInput(
            f"{where}: {len(missing)} slide(s) have no case id and no TCGA barcode to derive one "
            f"({shown}{more}); nothing was written. Cross-validation groups slides by patient: "
            "with made-up case ids two slides of one patient can land in train and test of the "
            "same fold (patient leakage)",
            hint="give the case ids in a case_id column (CSV manifest path,slide_id,case_id; for "
                 "features import the --mapping file), or pass --case-id slide if every slide "
                 "comes from a different patient")
    return out
