"""Runs in the catalog: create, finish, fail; write a fold's results; list, show and compare.

No torch here: `histstore runs list/show` and `compare` start fast.
"""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
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


def show_run(store: Store, run_id: int | str) -> RunReport:
    from histstore.liveness import (HEARTBEAT_AGE_SQL, age_text, effective_status, progress_text,
                                    why_interrupted)

    with store.read() as conn:
        rep = read_run_report(conn, run_id)
        rid = rep.run["run_id"]
        live = conn.exec_driver_sql(
            f"SELECT r.progress_done, r.progress_total, r.progress_unit, {HEARTBEAT_AGE_SQL} "
            "FROM runs r WHERE r.run_id = ?", (rid,)).one()
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


def compare_runs(store: Store, run_ids: list[int | str], subset: str = "test") -> pa.Table:
    """One row per metric, one column per run ("mean +- sd"), as in the paper's Table 1."""
    with store.read() as conn:
        runs = [require_run(conn, r) for r in run_ids]
        ids = [r["run_id"] for r in runs]
        rows = query_arrow(conn,
            "SELECT run_id, metric, mean, sd FROM run_summary WHERE run_id IN (SELECT unnest($1::BIGINT[])) "
            "AND subset = $2", [ids, subset]).to_pylist()
    metrics = sorted({r["metric"] for r in rows})
    cols: dict[str, list] = {"metric": metrics}
    for run in runs:
        label = f"{run['run_id']}:{run['model'] or run['kind']}"
        if run["task"]:
            label += f" ({run['task']})"
        got = {r["metric"]: r for r in rows if r["run_id"] == run["run_id"]}
        cols[label] = [_fmt(got.get(m)) for m in metrics]
    return pa.table(cols)


def _fmt(r: dict | None) -> str:
    if r is None or r["mean"] is None:
        return ""
    sd = r["sd"]
    return f"{r['mean']:.3f} ± {sd:.3f}" if sd is not None and not math.isnan(sd) else f"{r['mean']:.3f}"
