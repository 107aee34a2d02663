"""Run rows of the catalog at the connection level: a run by id, and what it reported.

Used by the library API (histstore/runs.py, the jobs) and by the subpackages that read runs
(reports, interop). No torch here."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa
import sqlalchemy as sa

from histstore.catalog.bulk import query_arrow
from histstore.errors import NotFound


def require_run(conn: sa.Connection, run_id: int | str) -> dict:
    try:
        rid = int(run_id)
    except (TypeError, ValueError):
        raise NotFound(f"no run {run_id!r}: runs are numbered", hint="see `histstore runs list`") from None
    row = conn.exec_driver_sql(
        "SELECT run_id, parent_run_id, kind, name, cohort, task, model, embedding_set_id, encoder_id, "
        "settings, seed, code_version, host, pid, status, started_at, finished_at, error FROM runs WHERE run_id = ?",
        (rid,)).first()
    if row is None:
        raise NotFound(f"no run {rid}", hint="see `histstore runs list`")
    d = dict(row._mapping)
    if isinstance(d["settings"], str):
        d["settings"] = json.loads(d["settings"])
    return d


@dataclass
class RunReport:
    run: dict
    summary: pa.Table                  # metric, mean, sd, n_folds, n_undefined, undefined_folds (test)
    per_fold: pa.Table                 # fold x metric (test subset)
    children: pa.Table | None = None   # multi-gene runs: one row per gene
    parent_metrics: dict[str, float] = field(default_factory=dict)
    state: str = ""                    # status to show (histstore.liveness), with progress when running
    statistics: object | None = None   # evaluation.run_stats.RunStatistics, when asked for


def read_run_report(conn: sa.Connection, run_id: int | str) -> RunReport:
    """A run with its test summary, per-fold test metrics and, for a multi-gene parent run,
    one row per child run (on the caller's connection)."""
    run = require_run(conn, run_id)
    rid = run["run_id"]
    summary = query_arrow(conn,
        "SELECT metric, mean, sd, n_folds, n_undefined, array_to_string(undefined_folds, ', ') AS undefined_folds "
        "FROM run_summary "
        "WHERE run_id = $1 AND subset = 'test' ORDER BY metric", [rid])
    # PIVOT takes no parameters; rid is an int from the catalog
    per_fold = query_arrow(conn,
        f"PIVOT (SELECT fold, name, value FROM metrics WHERE run_id = {int(rid)} AND subset = 'test' "
        "AND step IS NULL AND fold IS NOT NULL) ON name USING first(value) ORDER BY fold")
    children = None
    parent_metrics = {}
    # children of the same kind: a gene run's genes; not the evaluate runs that applied a run
    has_children = conn.exec_driver_sql(
        "SELECT count(*) FROM runs WHERE parent_run_id = ? AND kind = ?", (rid, run["kind"])).scalar()
    if has_children:
        children = query_arrow(conn, """
            SELECT r.run_id, r.task, r.status,
                   max(CASE WHEN s.metric = 'auc' THEN s.mean END) AS auc,
                   max(CASE WHEN s.metric = 'auc' THEN s.sd END) AS auc_sd,
                   max(CASE WHEN s.metric = 'auc' THEN s.n_folds END) AS auc_folds,
                   max(CASE WHEN s.metric = 'accuracy' THEN s.mean END) AS accuracy,
                   max(CASE WHEN s.metric = 'pearson' THEN s.mean END) AS pearson,
                   any_value(m.value) FILTER (WHERE m.name = 'mean_abs_log2fc') AS mean_abs_log2fc,
                   any_value(m.value) FILTER (WHERE m.name = 'positive_fraction') AS positive_fraction,
                   any_value(r.error) AS error
            FROM runs r
            LEFT JOIN run_summary s ON s.run_id = r.run_id AND s.subset = 'test'
            LEFT JOIN metrics m ON m.run_id = r.run_id AND m.fold IS NULL AND m.subset = 'cohort'
            WHERE r.parent_run_id = $1 AND r.kind = $2 GROUP BY r.run_id, r.task, r.status ORDER BY auc DESC NULLS LAST, r.task""",
            [rid, run["kind"]])
        parent_metrics = dict(conn.exec_driver_sql(
            "SELECT name, value FROM metrics WHERE run_id = ? AND fold IS NULL", (rid,)).all())
    return RunReport(run, summary, per_fold, children, parent_metrics)


def read_test_predictions(conn: sa.Connection, run_id: int) -> "pd.DataFrame":
    """A run's test predictions with each slide's case: fold, slide_id, case_id, label,
    target, score, predicted (one row per test slide; an evaluate run's slides without a
    target for the task are left out)."""
    import pandas as pd  # noqa: F401  (the return type)

    return query_arrow(conn, """
        SELECT p.fold, p.slide_id, s.case_id, p.label, p.target, p.score, p.predicted
        FROM predictions p JOIN splits s ON s.run_id = p.run_id AND s.fold = p.fold AND s.slide_id = p.slide_id
        WHERE p.run_id = $1 AND p.subset = 'test' AND p.target IS NOT NULL
        ORDER BY p.fold, p.slide_id""", [int(run_id)]).to_pandas()


def split_signature(conn: sa.Connection, run_id: int) -> frozenset:
    """A run's splits as a set of (fold, slide_id, subset): equal sets mean the same splits."""
    return frozenset(conn.exec_driver_sql(
        "SELECT fold, slide_id, subset FROM splits WHERE run_id = ?", (int(run_id),)).all())


def mil_checkpoints(conn: sa.Connection, run_id: int) -> list[dict]:
    """A train run's MIL checkpoints: {"fold" (None: the final model), "path", "sha256"},
    folds in order, the final model last."""
    return [dict(r._mapping) for r in conn.exec_driver_sql(
        "SELECT fold, path, sha256 FROM artifacts WHERE run_id = ? AND kind = 'mil-checkpoint' "
        "ORDER BY fold NULLS LAST", (int(run_id),)).all()]


def has_final_model(conn: sa.Connection, run_id: int) -> bool:
    """Whether the run's final model (`train --final`) was committed."""
    return any(c["fold"] is None for c in mil_checkpoints(conn, run_id))
