"""Slide and case labels: import from a table, or derive tumour/normal from TCGA barcodes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from histstore.barcodes import TCGA_BARCODE
from histstore.catalog.bulk import insert_frame, query_numpy
from histstore.errors import CohortNotFound, InvalidInput
from histstore.ids import check_id, refuse_bad_ids
from histstore.store import Store
from histstore.tabular import read_table, refuse_rows

@dataclass
class LabelImport:
    task: str
    level: str
    n_rows: int
    class_counts: dict[str, int]
    replaced: int = 0
    unlabelled: list[str] = field(default_factory=list)


def tumor_label_from_barcode(barcode: str) -> str | None:
    """'tumor' for sample types 01-09, 'normal' for 10-19, None otherwise (control, unknown)."""
    m = TCGA_BARCODE.match(barcode)
    if not m:
        return None
    code = int(m.group(2))
    if 1 <= code <= 9:
        return "tumor"
    if 10 <= code <= 19:
        return "normal"
    return None


def tumor_label_from_sample_type(sample_type: str | None) -> str | None:
    """GDC sample sheet 'Sample Type' (e.g. 'Primary Tumor', 'Solid Tissue Normal')."""
    if not sample_type:
        return None
    s = sample_type.lower()
    if "normal" in s:
        return "normal"
    if any(w in s for w in ("tumor", "tumour", "metasta", "cancer", "neoplasm")):
        return "tumor"
    return None


def _check_task_name(task: str) -> None:
    check_id(task, "task name")
    if ":" in task:
        raise InvalidInput(f"bad task name {task!r}: use letters, digits, _ or - (':' is reserved "
                           "for derived gene tasks like de:TP53)")


def _replace_task(conn: sa.Connection, task: str, frame: pd.DataFrame) -> int:
    replaced = conn.exec_driver_sql("SELECT count(*) FROM labels WHERE task = ?", (task,)).scalar()
    conn.exec_driver_sql("DELETE FROM labels WHERE task = ?", (task,))
    insert_frame(conn, "labels", frame)
    return replaced


def import_labels(store: Store, path: Path | str, task: str, level: str = "slide",
                  column: str | None = None, source: str | None = None) -> LabelImport:
    """Replace task's labels with a table's (validated whole before anything is written)."""
    _check_task_name(task)
    if level not in ("slide", "case"):
        raise InvalidInput(f"--level must be slide or case, not {level!r}")
    key = f"{level}_id"
    df = read_table(path, required=[key], what="labels file")
    if column is None:
        others = [c for c in df.columns if c != key]
        if task in df.columns:
            column = task
        elif len(others) == 1:
            column = others[0]
        else:
            raise InvalidInput(f"labels file {path}: which column holds the labels? "
                               f"pass --column (columns: {', '.join(others)})")
    if column not in df.columns:
        raise InvalidInput(f"labels file {path} has no column {column!r} (columns: {', '.join(df.columns)})")
    ids, values = df[key], df[column]
    refuse_rows(path, ids == "", f"have an empty {key}")
    refuse_bad_ids(path, ids, key)
    refuse_rows(path, values.isin(["", "nan", "NaN", "NA", "inf", "-inf"]),
                f"have an empty or non-finite value in {column!r}")
    conflict = df.groupby(key)[column].transform("nunique") > 1
    refuse_rows(path, conflict, f"give conflicting values for the same {key}")
    df = df[[key, column]].drop_duplicates()
    with store.write(f"import labels of task {task}") as conn:
        table = "slides" if level == "slide" else "cases"
        known = set(query_numpy(conn, f"SELECT {key} FROM {table}")[key].tolist())
        refuse_rows(path, ~ids.isin(known), f"name a {key} that is not in the catalog")
        frame = pd.DataFrame({"task": task, "level": level, key: df[key].values,
                              "value": df[column].values, "source": source or Path(path).name})
        replaced = _replace_task(conn, task, frame)
    counts = df[column].value_counts().sort_index()
    return LabelImport(task, level, len(df), {str(k): int(v) for k, v in counts.items()}, replaced)


def labels_from_barcodes(store: Store, task: str = "tumor", cohort: str | None = None) -> LabelImport:
    """Tumour vs normal per slide from the slide's GDC Sample Type (when ingest had a sample
    sheet) or else the sample-type code of its TCGA barcode, as HistCode labelled its slides."""
    _check_task_name(task)
    with store.write() as conn:
        if cohort is not None:
            if not conn.exec_driver_sql("SELECT count(*) FROM cohorts WHERE name = ?", (cohort,)).scalar():
                raise CohortNotFound(f"no cohort {cohort!r}", hint="see `histstore cohort list`")
            rows = query_numpy(conn,
                "SELECT s.slide_id, s.sample_id, s.sample_type FROM slides s JOIN cohort_slides c "
                "ON c.slide_id = s.slide_id WHERE c.cohort = $1 ORDER BY 1", [cohort])
        else:
            rows = query_numpy(conn, "SELECT slide_id, sample_id, sample_type FROM slides ORDER BY 1")
        slide_ids = rows["slide_id"].tolist()
        if not slide_ids:
            raise InvalidInput("no slides to label" + (f" in cohort {cohort}" if cohort else ""),
                               hint="run `histstore ingest` first")
        values, unlabelled = [], []
        for sid, sample_id, sample_type in zip(slide_ids, rows["sample_id"].tolist(),
                                               rows["sample_type"].tolist()):
            v = (tumor_label_from_sample_type(sample_type)
                 or tumor_label_from_barcode(sample_id or "") or tumor_label_from_barcode(sid))
            values.append(v)
            if v is None:
                unlabelled.append(sid)
        keep = [i for i, v in enumerate(values) if v is not None]
        if not keep:
            raise InvalidInput("no slide has a TCGA barcode or GDC sample type to derive labels from")
        frame = pd.DataFrame({"task": task, "level": "slide",
                              "slide_id": [slide_ids[i] for i in keep],
                              "value": [values[i] for i in keep], "source": "barcode"})
        if cohort is not None:
            # only this cohort's slides change; other labels of the task stay
            conn.exec_driver_sql(
                "DELETE FROM labels WHERE task = ? AND slide_id IN "
                "(SELECT slide_id FROM cohort_slides WHERE cohort = ?)", (task, cohort))
            levels = conn.exec_driver_sql(
                "SELECT DISTINCT level FROM labels WHERE task = ?", (task,)).all()
            if any(lv[0] != "slide" for lv in levels):
                raise InvalidInput(f"task {task!r} holds case-level labels; choose another task name")
            insert_frame(conn, "labels", frame)
            replaced = 0
        else:
            replaced = _replace_task(conn, task, frame)
    counts = pd.Series([values[i] for i in keep]).value_counts().sort_index()
    return LabelImport(task, "slide", len(keep), {k: int(v) for k, v in counts.items()},
                       replaced, unlabelled)


def list_tasks(store: Store):
    from histstore.catalog.bulk import query_arrow

    with store.read() as conn:
        return query_arrow(conn,
            "SELECT task, level, value, count(*) AS n FROM labels GROUP BY ALL ORDER BY 1, 3")
