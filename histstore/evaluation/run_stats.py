"""The pooled statistics of runs in the catalog: read a run's test predictions and hand them
to `pooled` (what `runs show`, `compare` and reports print). Read-only."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import sqlalchemy as sa

from histstore.catalog.runs import read_test_predictions, require_run, split_signature
from histstore.evaluation import pooled


def _regression(run: dict) -> bool:
    spec = run["settings"].get("task_spec") or {}
    if spec.get("kind"):
        return spec["kind"] == "fc"
    return bool(run["task"]) and str(run["task"]).startswith("fc:")


def _classes(run: dict) -> list[str]:
    return [str(c) for c in (run["settings"].get("classes") or [])]


@dataclass
class RunStatistics:
    intervals: pd.DataFrame                 # pooled.pooled_intervals
    gene_tests: pd.DataFrame | None = None  # pooled.gene_tests (gene run parents)
    notes: list[str] = field(default_factory=list)


def run_statistics(conn: sa.Connection, run: dict) -> RunStatistics:
    """Intervals on a run's pooled test predictions; for a gene-run parent, the per-gene
    permutation tests over its finished children."""
    preds = read_test_predictions(conn, run["run_id"])
    classes = _classes(run)
    regression = _regression(run)
    out = RunStatistics(pooled.pooled_intervals(preds, classes, regression))
    if not preds.empty and not regression and len(classes) > 2:
        out.notes.append(f"{len(classes)} classes: pooled intervals cover binary tasks only")
    if not preds.empty:
        folds = run["settings"].get("folds")
        done = preds["fold"].nunique()
        if folds and done < folds:
            out.notes.append(f"pooled over the {done} finished folds of {folds}")
    children = conn.exec_driver_sql(
        "SELECT run_id FROM runs WHERE parent_run_id = ? AND kind = ? AND status = 'finished' ORDER BY run_id",
        (run["run_id"], run["kind"])).all()
    if children:
        genes = []
        for (cid,) in children:
            child = require_run(conn, cid)
            if _regression(child):
                continue
            genes.append((cid, child["task"], read_test_predictions(conn, cid), _classes(child)))
        if genes:
            out.gene_tests = pooled.gene_tests(genes)
    return out


@dataclass
class Pairing:
    reference: int
    other: int
    tests: list  # [(level, stats.PairedAUCTest)]
    refused: str | None = None


def paired_against_first(conn: sa.Connection, runs: list[dict]) -> list[Pairing]:
    """Each later run against the first on the same splits (same test slides, same labels,
    binary task): DeLong and paired bootstrap of the AUC difference, slide and case level.
    Runs split differently are refused with a one-line reason."""
    if len(runs) < 2:
        return []
    ref = runs[0]
    out = []
    sig = split_signature(conn, ref["run_id"])
    ref_preds = read_test_predictions(conn, ref["run_id"])
    for run in runs[1:]:
        p = Pairing(ref["run_id"], run["run_id"], [])
        classes = _classes(run)
        if split_signature(conn, run["run_id"]) != sig or not sig:
            p.refused = (f"no paired test of runs {ref['run_id']} and {run['run_id']}: their splits differ "
                         "(a paired test needs the same folds of the same slides)")
        elif _regression(run) or _regression(ref) or len(classes) != 2 or classes != _classes(ref):
            p.refused = (f"no paired test of runs {ref['run_id']} and {run['run_id']}: paired AUC tests need "
                         "the same binary task")
        else:
            other = read_test_predictions(conn, run["run_id"])
            try:
                p.tests = pooled.paired_tests(other, ref_preds, classes[-1])  # other - reference
            except ValueError as exc:
                p.refused = f"no paired test of runs {ref['run_id']} and {run['run_id']}: {exc}"
        out.append(p)
    return out
