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
from histstore.ids import check_id, refuse_bad_ids
from histstore.store import Store
from histstore.tabular import read_table, refuse_rows


def _slides_from_file(path: Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"slide list {p} does not exist")
    first = (p.read_text(errors="replace").splitlines() or [""])[0]
    if "," in first or "\t" in first or first.strip() == "slide_id":
        ids = read_table(p, required=["slide_id"], what="slide list")["slide_id"].tolist()
        refuse_bad_ids(p, ids, "slide_id")
        return ids
    lines = p.read_text(errors="replace").splitlines()
    ids = [ln.strip() for ln in lines if ln.strip()]
    if not ids:
        raise InvalidInput(f"slide list {p} is empty")
    for i, ln in enumerate(lines):
        if ln.strip():
            check_id(ln.strip(), "slide_id", f"{p.name} line {i + 1}")
    return ids


def require_one_select(sql: str, what: str) -> None:
    """Refuse anything but exactly one SELECT statement, as DuckDB's own parser reads it."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except Exception as exc:
        msg = " ".join(str(exc).splitlines()[:1])
        raise SQLError(f"{what} does not parse: {msg}") from None
    kinds = [st.type.name for st in statements]
    if kinds != ["SELECT"]:
        found = ", ".join(kinds) if kinds else "nothing"
        raise SQLError(f"{what} must be exactly one SELECT statement; found {found}")


def _select_ids(store: Store, sql: str, what: str) -> list[str]:
    """slide_ids a user's query selects: checked to be one SELECT, run on the sandboxed
    read-only connection (before any write transaction opens)."""
    wrapped = f"SELECT DISTINCT slide_id FROM ({sql.strip().rstrip(';')}) ORDER BY 1"
    require_one_select(wrapped, what)
    with store.read() as conn:
        raw = duckdb_connection(conn)
        try:
            rel = raw.execute(wrapped)
            return [r[0] for r in rel.fetchall()]
        except Exception as exc:
            msg = " ".join(str(exc).splitlines()[:1])
            hint = " (it must return a slide_id column)" if "slide_id" in msg else ""
            raise SQLError(f"{what} failed: {msg}{hint}") from None


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
    # user SQL runs first, alone, on the sandboxed read-only connection; the write
    # transaction below only inserts the snapshot
    if sql is not None:
        require_one_select(sql, "the cohort query (--sql)")
        ids = _select_ids(store, sql, "the cohort query (--sql)")
        definition = f"sql: {sql.strip()}"
    elif from_cohort is not None:
        with store.read() as conn:
            require_cohort(conn, from_cohort)
        if where is not None:
            require_one_select(f"SELECT * FROM slides WHERE ({where})", "the --where condition")
        cond = f" AND ({where})" if where else ""
        ids = _select_ids(store,
            f"SELECT * FROM slides WHERE slide_id IN (SELECT slide_id FROM cohort_slides "
            f"WHERE cohort = '{from_cohort.replace(chr(39), chr(39) * 2)}'){cond}", "the --where condition")
        definition = f"from {from_cohort}" + (f" where {where}" if where else "")
    else:
        ids = _slides_from_file(Path(slides_file))
        definition = f"slides file {Path(slides_file).resolve()}"
    if not ids:
        raise EmptyCohort(f"cohort {name!r} would be empty: the selection matched no slides")
    with store.write(f"create cohort {name}") as conn:
        if cohort_exists(conn, name):
            raise InvalidInput(f"cohort {name!r} already exists",
                               hint="choose another name; cohorts are snapshots and are not redefined")
        known = set(query_numpy(conn, "SELECT slide_id FROM slides")["slide_id"].tolist())
        if slides_file is not None:
            refuse_rows(slides_file, ~pd.Series(ids).isin(known), "name a slide that is not in the catalog")
        gone = [i for i in ids if i not in known]
        if gone:
            raise InvalidInput(f"{len(gone)} selected slides are not in the catalog (e.g. {gone[0]!r})")
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
