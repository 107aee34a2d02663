"""Cohort rows of the catalog at the connection level: name checks, existence, membership.

Used inside the caller's transaction by the library API (histstore/cohorts.py and the jobs)
and by the subpackages that add slides to cohorts (interop)."""
from __future__ import annotations

import re

import pandas as pd
import sqlalchemy as sa

from histstore.catalog.bulk import insert_frame, query_numpy
from histstore.errors import CohortNotFound, InvalidInput
from histstore.ids import check_id

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-.]*$")


def check_cohort_name(name: str) -> None:
    check_id(name, "cohort name")
    if not _NAME.match(name):
        raise InvalidInput(f"bad cohort name {name!r}: start with a letter; use letters, digits, _ - .")


def cohort_exists(conn: sa.Connection, name: str) -> bool:
    return bool(conn.exec_driver_sql("SELECT count(*) FROM cohorts WHERE name = ?", (name,)).scalar())


def require_cohort(conn: sa.Connection, name: str) -> None:
    if not cohort_exists(conn, name):
        names = [r[0] for r in conn.exec_driver_sql("SELECT name FROM cohorts ORDER BY 1").all()]
        raise CohortNotFound(f"no cohort {name!r}" + (f" (cohorts: {', '.join(names)})" if names else ""),
                             hint="create one with `histstore cohort create` or `histstore ingest --cohort`")


def cohort_slide_ids(conn: sa.Connection, name: str) -> list[str]:
    require_cohort(conn, name)
    return query_numpy(conn, "SELECT slide_id FROM cohort_slides WHERE cohort = $1 ORDER BY 1",
                       [name])["slide_id"].tolist()


def add_to_cohort(conn: sa.Connection, name: str, slide_ids: list[str], description: str | None = None,
                  definition: str | None = None) -> int:
    """Create the cohort if needed and add slides not yet in it (inside the caller's transaction)."""
    check_cohort_name(name)
    if not cohort_exists(conn, name):
        conn.exec_driver_sql("INSERT INTO cohorts (name, description, definition) VALUES (?, ?, ?)",
                             (name, description, definition))
    present = set(query_numpy(conn, "SELECT slide_id FROM cohort_slides WHERE cohort = $1",
                              [name])["slide_id"].tolist())
    new = [s for s in dict.fromkeys(slide_ids) if s not in present]
    insert_frame(conn, "cohort_slides", pd.DataFrame({"cohort": name, "slide_id": new}))
    return len(new)
