"""Runs in the catalog: create, finish, fail; write a fold's results; list, show and compare.

No torch here: `histstore runs list/show` and `compare` start fast.
"""
from __future__ import annotations

import json
import math
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
               parent_run_id: int | None = None, name: str | None = None) -> int:
    return conn.exec_driver_sql(
        "INSERT INTO runs (parent_run_id, kind, name, cohort, task, model, embedding_set_id, encoder_id, "
        "settings, seed, code_version, host, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running') "
        "RETURNING run_id",
        (parent_run_id, kind, name, cohort, task, model, embedding_set_id, encoder_id,
         json.dumps(settings, default=str), seed, code_version(), host())).scalar()


def end_run(conn: sa.Connection, run_id: int, status: str, error: str | None = None) -> None:
    conn.exec_driver_sql(
        "UPDATE runs SET status = ?, error = ?, finished_at = current_timestamp WHERE run_id = ?",
        (status, error, run_id))


@contextmanager
def run_outcome(conn: sa.Connection, run_id: int, resume_hint: str):
    """Mark the run `interrupted` (Ctrl-C; with how to continue) or `failed` (any error, with
    its message) if the block raises, then re-raise. Success is the caller's to record."""
    from histstore.store import transaction

    try:
        yield
    except KeyboardInterrupt:
        with transaction(conn):
            end_run(conn, run_id, "interrupted", f"interrupted; {resume_hint}")
        raise
    except Exception as exc:
        with transaction(conn):
            end_run(conn, run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise


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
    where, params = [], []
    if kind:
        where.append(f"r.kind = ${len(params) + 1}")
        params.append(kind)
    if cohort:
        where.append(f"r.cohort = ${len(params) + 1}")
        params.append(cohort)
    cond = ("WHERE " + " AND ".join(where)) if where else ""
    with store.read() as conn:
        return query_arrow(conn, f"""
            SELECT r.run_id, r.parent_run_id AS parent, r.kind, r.cohort, r.task, r.model, r.status,
                   (SELECT mean FROM run_summary s WHERE s.run_id = r.run_id AND s.subset = 'test'
                    AND s.metric = CASE WHEN r.task LIKE 'fc:%' THEN 'pearson' ELSE 'auc' END) AS test_metric,
                   r.started_at, date_diff('second', r.started_at, r.finished_at) AS seconds
            FROM runs r {cond} ORDER BY r.run_id""", params or None)


def show_run(store: Store, run_id: int | str) -> RunReport:
    with store.read() as conn:
        return read_run_report(conn, run_id)


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
