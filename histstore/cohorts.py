"""Cohorts: named, stored sets of slides. Membership is a snapshot (rows in cohort_slides),
never a live query, so a run's cohort is exactly reproducible later; its definition (the
file, SQL or filter it came from) is kept beside it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from histstore.catalog.bulk import duckdb_connection, query_arrow, query_numpy
from histstore.catalog.cohorts import add_to_cohort, check_cohort_name, cohort_exists, require_cohort
from histstore.errors import EmptyCohort, InvalidInput, SQLError
from histstore.store import Store
from histstore.tabular import read_table, refuse_rows

def _slides_from_file(path: Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"slide list {p} does not exist")
    first = (p.read_text(errors="replace").splitlines() or [""])[0]
    if "," in first or "\t" in first or first.strip() == "slide_id":
        return read_table(p, required=["slide_id"], what="slide list")["slide_id"].tolist()
    ids = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    if not ids:
        raise InvalidInput(f"slide list {p} is empty")
    return ids


def _select_ids(conn: sa.Connection, sql: str) -> list[str]:
    raw = duckdb_connection(conn)
    try:
        # wrapping makes it a query: a write statement cannot run from here
        rel = raw.execute(f"SELECT DISTINCT slide_id FROM ({sql.strip().rstrip(';')}) ORDER BY 1")
        return [r[0] for r in rel.fetchall()]
    except Exception as exc:
        msg = " ".join(str(exc).splitlines()[:1])
        raise SQLError(f"cohort query failed: {msg} (it must return a slide_id column)") from None


@dataclass
class CohortCreated:
    name: str
    n_slides: int
    n_cases: int


def create_cohort(store: Store, name: str, slides_file: Path | None = None, sql: str | None = None,
                  from_cohort: str | None = None, where: str | None = None,
                  description: str | None = None) -> CohortCreated:
    check_cohort_name(name)
    given = [x is not None for x in (slides_file, sql, from_cohort)]
    if sum(given) != 1:
        raise InvalidInput("give exactly one of --slides FILE, --sql QUERY, --from COHORT")
    if where is not None and from_cohort is None:
        raise InvalidInput("--where goes with --from COHORT")
    with store.write() as conn:
        if cohort_exists(conn, name):
            raise InvalidInput(f"cohort {name!r} already exists",
                               hint="choose another name; cohorts are snapshots and are not redefined")
        if slides_file is not None:
            ids = _slides_from_file(Path(slides_file))
            definition = f"slides file {Path(slides_file).resolve()}"
            known = set(query_numpy(conn, "SELECT slide_id FROM slides")["slide_id"].tolist())
            series = pd.Series(ids)
            refuse_rows(slides_file, ~series.isin(known), "name a slide that is not in the catalog")
        elif sql is not None:
            ids = _select_ids(conn, sql)
            definition = f"sql: {sql.strip()}"
        else:
            require_cohort(conn, from_cohort)
            cond = f" AND ({where})" if where else ""
            ids = _select_ids(conn,
                f"SELECT * FROM slides WHERE slide_id IN (SELECT slide_id FROM cohort_slides "
                f"WHERE cohort = '{from_cohort.replace(chr(39), chr(39) * 2)}'){cond}")
            definition = f"from {from_cohort}" + (f" where {where}" if where else "")
        if not ids:
            raise EmptyCohort(f"cohort {name!r} would be empty: the selection matched no slides")
        add_to_cohort(conn, name, ids, description, definition)
        n_cases = conn.exec_driver_sql(
            "SELECT count(DISTINCT case_id) FROM slides WHERE slide_id IN "
            "(SELECT slide_id FROM cohort_slides WHERE cohort = ?)", (name,)).scalar()
    return CohortCreated(name, len(set(ids)), n_cases)


def list_cohorts(store: Store) -> pa.Table:
    with store.read() as conn:
        return query_arrow(conn,
            "SELECT o.cohort, o.n_slides, o.n_cases, o.n_failed, c.description, c.created_at "
            "FROM cohort_overview o JOIN cohorts c ON c.name = o.cohort ORDER BY 1")


@dataclass
class CohortReport:
    name: str
    description: str | None
    definition: str | None
    n_slides: int
    n_cases: int
    slides_by_status: dict[str, int]
    n_tiles: pa.Table  # per tiling settings
    label_balance: pa.Table  # task, value, n_slides, n_cases
    embeddings: pa.Table  # embedding set, n slides with arrays
    warnings: list[str] = field(default_factory=list)


def show_cohort(store: Store, name: str) -> CohortReport:
    with store.read() as conn:
        require_cohort(conn, name)
        desc, definition = conn.exec_driver_sql(
            "SELECT description, definition FROM cohorts WHERE name = ?", (name,)).one()
        members = "(SELECT slide_id FROM cohort_slides WHERE cohort = $1)"
        status = dict(conn.exec_driver_sql(
            "SELECT s.status, count(*) FROM slides s WHERE s.slide_id IN "
            "(SELECT slide_id FROM cohort_slides WHERE cohort = ?) GROUP BY 1 ORDER BY 1", (name,)).all())
        n_cases = conn.exec_driver_sql(
            "SELECT count(DISTINCT case_id) FROM slides WHERE slide_id IN "
            "(SELECT slide_id FROM cohort_slides WHERE cohort = ?)", (name,)).scalar()
        tiles = query_arrow(conn,
            f"SELECT t.settings_key AS tiling, any_value(t.tile_size) AS tile_size, "
            f"any_value(t.target_mpp) AS mpp, count(*) AS n_slides, sum(t.n_tiles) AS n_tiles "
            f"FROM tilings t WHERE t.slide_id IN {members} GROUP BY 1 ORDER BY 1", [name])
        balance = query_arrow(conn,
            f"SELECT task, value, count(*) AS n_slides, count(DISTINCT case_id) AS n_cases "
            f"FROM slide_labels WHERE slide_id IN {members} GROUP BY ALL ORDER BY 1, 2", [name])
        emb = query_arrow(conn,
            f"SELECT e.name AS embedding_set, e.kind, e.dim, count(a.slide_id) AS n_slides "
            f"FROM embedding_sets e JOIN embedding_arrays a ON a.embedding_set_id = e.embedding_set_id "
            f"WHERE a.slide_id IN {members} GROUP BY ALL ORDER BY 1", [name])
    n_slides = sum(status.values())
    warnings = []
    per_task: dict[str, list[str]] = {}
    for row in balance.to_pylist():
        per_task.setdefault(row["task"], []).append(row["value"])
    for task, values in per_task.items():
        if len(values) == 1:
            warnings.append(f"task {task!r} has a single class ({values[0]}) in this cohort: "
                            "it cannot be trained or evaluated here")
    if status.get("failed"):
        warnings.append(f"{status['failed']} slide(s) failed ingest (see `histstore sql \"SELECT "
                        f"slide_id, error FROM slides WHERE status = 'failed'\"`)")
    return CohortReport(name, desc, definition, n_slides, n_cases, status, tiles, balance, emb, warnings)
