"""Prediction tasks: what a task name means and how each slide gets its target.

A task name is one of
- a label task imported with `histstore labels import` / `from-barcodes` (e.g. `tumor`):
  categorical values from the `slide_labels` view (case-level labels apply to every slide of
  the case);
- a derived gene task, computed from `fold_changes` for the case of each slide:
    de:GENE    "de" if |log2FC| >= threshold (default 1.0) [and p_adj <= p_cut when a p_cut
               is given; a row without p_adj then counts as not DE], else "not_de"
    up:GENE    "up" if log2FC >= threshold [and p_adj <= p_cut], else "not_up"
    down:GENE  "down" if log2FC <= -threshold [and p_adj <= p_cut], else "not_down"
    fc:GENE    regression target: log2FC itself (HistCode's code regresses log10(FC + 1);
               log2FC is the same information on the scale RNA-seq tools report)
  Cases with no fold change for the gene get no label (and are reported as such).

For binary classification the positive class is the first of POSITIVE_CLASSES present,
else the alphabetically last class; `--positive` overrides it.

Which slides a gene task uses (`gene_task_slides`): fold changes are measured per case on the
tumour sample, so by default only the case's tumour slides carry it - the slides whose
`tumor` label is tumour, when the cohort's slides have that label. `all` gives every slide
of the case its case's value (the behaviour before this choice existed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from histstore.catalog.bulk import query_numpy
from histstore.errors import InvalidInput, NotFound

GENE_TASK_KINDS = ("de", "up", "down", "fc")
GENE_SLIDES = ("tumour", "all")
TUMOUR_TASK = "tumor"                 # the label task that says tumour vs normal
TUMOUR_VALUES = ("tumor", "tumour")
POSITIVE_CLASSES = ("tumor", "tumour", "de", "up", "down", "positive", "pos", "yes", "true", "1")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "label" or one of GENE_TASK_KINDS
    gene: str | None = None
    threshold: float = 1.0
    p_cut: float | None = None
    source: str | None = None

    @property
    def is_regression(self) -> bool:
        return self.kind == "fc"

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "gene": self.gene,
                "threshold": self.threshold, "p_cut": self.p_cut, "source": self.source}


def parse_task(name: str, threshold: float = 1.0, p_cut: float | None = None,
               source: str | None = None) -> TaskSpec:
    if not name or not name.strip():
        raise InvalidInput("empty task name")
    name = name.strip()
    if ":" in name:
        kind, gene = name.split(":", 1)
        if kind not in GENE_TASK_KINDS or not gene:
            raise InvalidInput(f"unknown task {name!r}: gene tasks are "
                               + ", ".join(f"{k}:GENE" for k in GENE_TASK_KINDS))
        if threshold <= 0:
            raise InvalidInput("the fold-change threshold must be > 0")
        if p_cut is not None and not 0 < p_cut <= 1:
            raise InvalidInput("the p_adj cut must be in (0, 1]")
        return TaskSpec(name, kind, gene.strip(), threshold, p_cut, source)
    return TaskSpec(name, "label")


@dataclass
class TaskTargets:
    """Per-slide targets of a task: values (str for classification, float for regression)."""
    spec: TaskSpec
    slide_ids: np.ndarray
    case_ids: np.ndarray
    values: np.ndarray
    missing: list[str]  # slides asked for that have no target

    def classes(self) -> list[str]:
        return sorted(set(self.values.tolist())) if not self.spec.is_regression else []


def positive_class(classes: list[str], override: str | None = None) -> str:
    if override is not None:
        if override not in classes:
            raise InvalidInput(f"--positive {override!r} is not a class of this task ({', '.join(classes)})")
        return override
    for c in POSITIVE_CLASSES:
        if c in classes:
            return c
    return sorted(classes)[-1]


def _fold_change_source(conn: sa.Connection, gene: str, source: str | None) -> str:
    sources = [r[0] for r in conn.exec_driver_sql(
        "SELECT DISTINCT source FROM fold_changes WHERE gene = ? ORDER BY 1", (gene,)).all()]
    if not sources:
        known = conn.exec_driver_sql("SELECT count(*) FROM genes WHERE symbol = ?", (gene,)).scalar()
        raise NotFound(f"no fold changes for gene {gene}" + ("" if known else " (unknown gene)"),
                       hint="run `histstore foldchanges import FILE --source NAME`")
    if source is None:
        if len(sources) > 1:
            raise InvalidInput(f"gene {gene} has fold changes from several sources "
                               f"({', '.join(sources)}): choose one with --fc-source")
        return sources[0]
    if source not in sources:
        raise NotFound(f"no fold changes for {gene} from source {source!r} (have: {', '.join(sources)})")
    return source


def task_targets(conn: sa.Connection, spec: TaskSpec, slide_ids: list[str]) -> TaskTargets:
    """Targets for the given slides (those without one are listed in `missing`)."""
    wanted = list(dict.fromkeys(slide_ids))
    if spec.kind == "label":
        exists = conn.exec_driver_sql(
            "SELECT count(*) FROM labels WHERE task = ?", (spec.name,)).scalar()
        if not exists:
            tasks = [r[0] for r in conn.exec_driver_sql(
                "SELECT DISTINCT task FROM labels ORDER BY 1").all()]
            raise NotFound(f"unknown task {spec.name!r}" +
                           (f" (label tasks: {', '.join(tasks)}; gene tasks: de:/up:/down:/fc:GENE)"
                            if tasks else " (no labels imported yet)"),
                           hint="run `histstore labels import FILE --task NAME`")
        rows = query_numpy(conn,
            "SELECT slide_id, case_id, value FROM slide_labels WHERE task = $1 "
            "AND slide_id IN (SELECT unnest($2::VARCHAR[]))", [spec.name, wanted])
        values = rows["value"].astype(object)
    else:
        source = _fold_change_source(conn, spec.gene, spec.source)
        rows = query_numpy(conn,
            "SELECT s.slide_id, s.case_id, f.log2_fold_change AS lfc, f.p_adj "
            "FROM slides s JOIN fold_changes f ON f.case_id = s.case_id "
            "WHERE f.gene = $1 AND f.source = $2 AND s.slide_id IN (SELECT unnest($3::VARCHAR[]))",
            [spec.gene, source, wanted])
        lfc = np.asarray(rows["lfc"], dtype=float)
        if spec.p_cut is not None:
            p = np.ma.filled(np.ma.asarray(rows["p_adj"]).astype(float), np.nan)
            significant = np.nan_to_num(p, nan=np.inf) <= spec.p_cut
        else:
            significant = np.ones(len(lfc), dtype=bool)
        if spec.kind == "fc":
            values = lfc
        elif spec.kind == "de":
            values = np.where((np.abs(lfc) >= spec.threshold) & significant, "de", "not_de").astype(object)
        elif spec.kind == "up":
            values = np.where((lfc >= spec.threshold) & significant, "up", "not_up").astype(object)
        else:
            values = np.where((lfc <= -spec.threshold) & significant, "down", "not_down").astype(object)
    got = np.asarray(rows["slide_id"]).astype(object)
    order = np.argsort(got, kind="stable")
    got_set = set(got.tolist())
    missing = [s for s in wanted if s not in got_set]
    return TaskTargets(spec, got[order], np.asarray(rows["case_id"]).astype(object)[order],
                       np.asarray(values)[order], missing)


@dataclass
class GeneSlides:
    """The slides a gene task trains on. keep: the chosen slide ids, in input order.
    left_out: slides dropped (normal or without a tumour label); labelled: whether the
    cohort's slides had tumour labels at all."""
    keep: list[str]
    left_out: list[str]
    labelled: bool


def gene_task_slides(conn: sa.Connection, slide_ids: list[str], which: str = "tumour") -> GeneSlides:
    """Filter a gene task's slides: "tumour" keeps the slides labelled tumour (task
    `tumor`) when any of the slides has that label, else all; "all" keeps every slide."""
    if which not in GENE_SLIDES:
        raise InvalidInput(f"gene slides must be one of {', '.join(GENE_SLIDES)}, got {which!r}")
    rows = query_numpy(conn, "SELECT slide_id, value FROM slide_labels WHERE task = $1 "
                             "AND slide_id IN (SELECT unnest($2::VARCHAR[]))", [TUMOUR_TASK, list(slide_ids)])
    label = dict(zip(rows["slide_id"].tolist(), rows["value"].tolist()))
    if which == "all" or not label:
        return GeneSlides(list(slide_ids), [], bool(label))
    keep = [s for s in slide_ids if str(label.get(s, "")).lower() in TUMOUR_VALUES]
    return GeneSlides(keep, [s for s in slide_ids if s not in set(keep)], True)
