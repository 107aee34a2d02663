"""Runs in the catalog: create, finish, fail; write a fold's results; list, show and compare.

No torch here: `histstore runs list/show` and `compare` start fast.
"""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from histstore.catalog.bulk import insert_frame, query_arrow
from histstore.catalog.runs import RunReport, read_run_report, require_run
from histstore.provenance import code_version, host
from histstore.store import Store


def create_run(conn: sa.Connection, *, kind: str, settings: dict, seed: int | None = None,
               cohort: str | None = None, task: str | None = None, model: str | None = None,
               embedding_set_id: int | None = None, encoder_id: int | None = None,
               parent_run_id: int | None = None, name: str | None = None,
               progress_total: int | None = None, progress_unit: str | None = None) -> int:
    """A new run of this process (host, PID, heartbeat now), status running."""
    return conn.exec_driver_sql(
        "INSERT INTO runs (parent_run_id, kind, name, cohort, task, model, embedding_set_id, encoder_id, "
        "settings, seed, code_version, host, pid, updated_at, progress_done, progress_total, progress_unit, "
        "status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp, 0, ?, ?, 'running') "
        "RETURNING run_id",
        (parent_run_id, kind, name, cohort, task, model, embedding_set_id, encoder_id,
         json.dumps(settings, default=str), seed, code_version(), host(), os.getpid(),
         progress_total, progress_unit)).scalar()


def end_run(conn: sa.Connection, run_id: int, status: str, error: str | None = None) -> None:
    conn.exec_driver_sql(
        "UPDATE runs SET status = ?, error = ?, finished_at = current_timestamp WHERE run_id = ?",
        (status, error, run_id))


@contextmanager
def run_outcome(store: Store, run_id: int, resume_hint: str):
    """Mark the run `interrupted` (Ctrl-C; with how to continue) or `failed` (any error, with
    its message) if the block raises, then re-raise. Success is the caller's to record."""
    try:
        yield
    except KeyboardInterrupt:
        with store.commit(f"the end of run {run_id}") as conn:
            end_run(conn, run_id, "interrupted", f"interrupted; {resume_hint}")
        raise
    except Exception as exc:
        with store.commit(f"the end of run {run_id}") as conn:
            end_run(conn, run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise


def refuse_if_alive(store: Store, run_id: int) -> None:
    """Resuming a run that another process is still running would write its results twice."""
    from histstore.errors import InvalidInput
    from histstore.liveness import HEARTBEAT_AGE_SQL, age_text, effective_status

    with store.read() as conn:
        row = conn.exec_driver_sql(
            f"SELECT r.status, r.host, r.pid, {HEARTBEAT_AGE_SQL} FROM runs r WHERE r.run_id = ?",
            (int(run_id),)).first()
    if row is not None and effective_status(*row) == "running":
        raise InvalidInput(f"run {run_id} is still running (PID {row[2]} on {row[1]}, heartbeat "
                           f"{age_text(row[3])})", hint="wait for it to end, or stop that process first")


def write_metrics(conn: sa.Connection, run_id: int, rows: list[dict]) -> None:
    """rows: {"fold", "subset", "name", "value", "step"} (missing keys -> NULL)."""
    if not rows:
        return
    frame = pd.DataFrame(rows).reindex(columns=["fold", "subset", "name", "step", "value"])
    frame.insert(0, "run_id", run_id)
    frame["value"] = frame["value"].astype(float)
    frame["fold"] = frame["fold"].astype("Int32")
    frame["step"] = frame["step"].astype("Int64")
    insert_frame(conn, "metrics", frame)


def list_runs(store: Store, kind: str | None = None, cohort: str | None = None) -> pa.Table:
    """All runs; a 'running' run whose process is gone shows as interrupted (liveness rule),
    with its progress (done/total unit) and the age of its heartbeat."""
    from histstore.liveness import HEARTBEAT_AGE_SQL, age_text, effective_status, progress_text

    where, params = [], []
    if kind:
        where.append(f"r.kind = ${len(params) + 1}")
        params.append(kind)
    if cohort:
        where.append(f"r.cohort = ${len(params) + 1}")
        params.append(cohort)
    cond = ("WHERE " + " AND ".join(where)) if where else ""
    with store.read() as conn:
        table = query_arrow(conn, f"""
            SELECT r.run_id, r.parent_run_id AS parent, r.kind, r.cohort, r.task, r.model, r.status,
                   r.progress_done, r.progress_total, r.progress_unit, r.host, r.pid,
                   {HEARTBEAT_AGE_SQL} AS heartbeat_age_s,
                   (SELECT mean FROM run_summary s WHERE s.run_id = r.run_id AND s.subset = 'test'
                    AND s.metric = CASE WHEN r.task LIKE 'fc:%' THEN 'pearson' ELSE 'auc' END) AS test_metric,
                   r.started_at, date_diff('second', r.started_at, r.finished_at) AS seconds
            FROM runs r {cond} ORDER BY r.run_id""", params or None)
    rows = table.to_pylist()
    status, progress, heartbeat = [], [], []
    for r in rows:
        status.append(effective_status(r["status"], r["host"], r["pid"], r["heartbeat_age_s"]))
        progress.append(progress_text(r["progress_done"], r["progress_total"], r["progress_unit"]))
        heartbeat.append(age_text(r["heartbeat_age_s"]) if r["status"] == "running" else "")
    keep = ["run_id", "parent", "kind", "cohort", "task", "model"]
    cols = {c: table.column(c) for c in keep}
    cols["status"] = pa.array(status, pa.string())
    cols["progress"] = pa.array(progress, pa.string())
    cols["heartbeat"] = pa.array(heartbeat, pa.string())
    for c in ("test_metric", "started_at", "seconds"):
        cols[c] = table.column(c)
    return pa.table(cols)


def show_run(store: Store, run_id: int | str, statistics: bool = True) -> RunReport:
    """A run's report with its state (histstore.liveness: a dead process shows as interrupted);
    with statistics, also the intervals on its pooled test predictions and, for a gene run,
    the per-gene permutation tests (computed now, not stored)."""
    from histstore.evaluation.run_stats import run_statistics
    from histstore.liveness import (HEARTBEAT_AGE_SQL, age_text, effective_status, progress_text,
                                    why_interrupted)

    with store.read() as conn:
        rep = read_run_report(conn, run_id)
        rid = rep.run["run_id"]
        live = conn.exec_driver_sql(
            f"SELECT r.progress_done, r.progress_total, r.progress_unit, {HEARTBEAT_AGE_SQL} "
            "FROM runs r WHERE r.run_id = ?", (rid,)).one()
        if statistics and rep.run["kind"] in ("train", "evaluate"):
            rep.statistics = run_statistics(conn, rep.run)
    run = rep.run
    state = effective_status(run["status"], run["host"], run.get("pid"), live[3])
    progress = progress_text(*live[:3])
    if run["status"] == "running" and state == "running":
        state = f"running ({progress + ', ' if progress else ''}heartbeat {age_text(live[3])})"
    elif run["status"] == "running":
        state = f"interrupted ({why_interrupted(run['host'], run.get('pid'), live[3])}" + \
                (f", at {progress})" if progress else ")")
    rep.state = state
    return rep


@dataclass
class Comparison:
    table: pa.Table          # one row per metric, one column per run
    notes: list[str]         # e.g. why a pair of runs got no paired test


def compare(store: Store, run_ids: list[int | str], subset: str = "test") -> Comparison:
    """One row per metric, one column per run: mean ± sd over folds with the number of folds
    it rests on (and the folds where it was undefined), as in the paper's Table 1; then, for
    the test subset, pooled-prediction estimates with 95 % bootstrap intervals, and paired
    tests of each run's AUC against the first run's when they share its splits."""
    from histstore.evaluation.run_stats import paired_against_first, run_statistics

    notes: list[str] = []
    with store.read() as conn:
        runs = [require_run(conn, r) for r in run_ids]
        ids = [r["run_id"] for r in runs]
        rows = query_arrow(conn,
            "SELECT run_id, metric, mean, sd, n_folds, n_undefined, undefined_folds FROM run_summary "
            "WHERE run_id IN (SELECT unnest($1::BIGINT[])) AND subset = $2", [ids, subset]).to_pylist()
        pooled = {}
        pairings = []
        if subset == "test":
            pooled = {r["run_id"]: run_statistics(conn, r).intervals for r in runs
                      if r["kind"] in ("train", "evaluate")}
            pairings = paired_against_first(conn, runs) if len(runs) > 1 else []
    metrics = sorted({r["metric"] for r in rows})
    labels = [_label(run) for run in runs]
    cols: dict[str, list] = {"metric": list(metrics)}
    for run, label in zip(runs, labels):
        got = {r["metric"]: r for r in rows if r["run_id"] == run["run_id"]}
        cols[label] = [_fmt(got.get(m)) for m in metrics]
    # pooled test predictions, 95 % case-bootstrap intervals
    keys = []
    for frame in pooled.values():
        keys += [(lv, m) for lv, m in zip(frame["level"], frame["metric"]) if (lv, m) not in keys]
    for level, metric in keys:
        cols["metric"].append(f"{'case_' if level == 'case' else ''}{metric}, pooled [95% CI]")
        for run, label in zip(runs, labels):
            f = pooled.get(run["run_id"])
            hit = f[(f["level"] == level) & (f["metric"] == metric)] if f is not None else None
            cols[label].append(_fmt_interval(hit.iloc[0]) if hit is not None and len(hit) else "")
    for pr in pairings:
        if pr.refused:
            notes.append(pr.refused)
            continue
        for level, t in pr.tests:
            name = "DeLong" if t.method == "DeLong" else "paired bootstrap"
            cols["metric"].append(f"{'case_' if level == 'case' else ''}auc difference vs run {pr.reference} ({name})")
            for run, label in zip(runs, labels):
                cols[label].append(
                    "reference" if run["run_id"] == pr.reference else
                    f"{t.diff:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}], p = {_fmt_p(t.p)}"
                    if run["run_id"] == pr.other else "")
    return Comparison(pa.table(cols), notes)


def compare_runs(store: Store, run_ids: list[int | str], subset: str = "test") -> pa.Table:
    """The table of `compare` (its notes dropped)."""
    return compare(store, run_ids, subset).table


def _label(run: dict) -> str:
    label = f"{run['run_id']}:{run['model'] or run['kind']}"
    if run["task"]:
        label += f" ({run['task']})"
    return label


def _fmt(r: dict | None) -> str:
    """mean ± sd, n=folds it rests on; folds where it was undefined are named."""
    if r is None:
        return ""
    undefined = list(r.get("undefined_folds") or [])
    flag = f" (undefined in fold{'s' if len(undefined) > 1 else ''} {', '.join(map(str, undefined))})" if undefined else ""
    if r["mean"] is None:
        return f"undefined{flag}"
    sd = r["sd"]
    core = f"{r['mean']:.3f} ± {sd:.3f}" if sd is not None and not math.isnan(sd) else f"{r['mean']:.3f}"
    return f"{core}, n={r['n_folds']}{flag}"


def _fmt_interval(row) -> str:
    est, lo, hi = row["estimate"], row["ci_low"], row["ci_high"]
    if est is None or math.isnan(est):
        return "undefined"
    if lo is None or math.isnan(lo):
        return f"{est:.3f}"
    return f"{est:.3f} [{lo:.3f}, {hi:.3f}]"


def _fmt_p(p: float) -> str:
    return "nan" if p is None or math.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")
