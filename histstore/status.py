"""`histstore status`: what a store holds, at a glance, and which jobs are running."""
from __future__ import annotations

from dataclasses import dataclass, field

from histstore.store import Store


@dataclass
class StoreStatus:
    root: str
    schema_revision: str
    counts: dict[str, int] = field(default_factory=dict)
    slides_by_status: dict[str, int] = field(default_factory=dict)
    runs_by_status: dict[str, int] = field(default_factory=dict)
    size_bytes: int = 0
    # runs marked running: run_id, kind, cohort, task, model, host, pid, progress_*,
    # heartbeat_age_s, state ('running' or 'interrupted': the process is gone)
    running: list[dict] = field(default_factory=list)


_COUNTED = ["cohorts", "cases", "slides", "tilings", "tiles", "encoders", "embedding_sets",
            "embedding_arrays", "runs"]


def store_status(store: Store) -> StoreStatus:
    from histstore.catalog.migrate import current_revision
    from histstore.liveness import running_rows

    with store.read() as conn:
        counts = {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar() for t in _COUNTED}
        slides = dict(conn.exec_driver_sql(
            "SELECT status, count(*) FROM slides GROUP BY status ORDER BY status").all())
        runs = dict(conn.exec_driver_sql(
            "SELECT kind || ':' || status, count(*) FROM runs GROUP BY ALL ORDER BY 1").all())
        running = running_rows(conn)
        revision = current_revision(conn)
    for r in running:  # a run whose process died counts as interrupted
        if r["state"] != "running":
            runs[f"{r['kind']}:running"] -= 1
            runs[f"{r['kind']}:interrupted"] = runs.get(f"{r['kind']}:interrupted", 0) + 1
    runs = {k: v for k, v in sorted(runs.items()) if v}
    return StoreStatus(str(store.root), revision, counts, slides, runs, store.size_bytes(), running)
