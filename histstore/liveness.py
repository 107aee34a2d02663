"""Is a 'running' run still running? The one rule, used by `status`, `runs list` and `verify`.

A run row says 'running' from its start until it ends; a process killed without a chance to
say so (SIGKILL, power cut, OOM) leaves it that way. The row carries the process (runs.host,
runs.pid) and a heartbeat (runs.updated_at, refreshed at every commit and at least every
HEARTBEAT_S seconds). A running row counts as interrupted when its process is gone (same host,
PID not alive) or its heartbeat is older than STALE_AFTER_S (another host, or a PID reused).
No torch, no pandas.
"""
from __future__ import annotations

import os

import sqlalchemy as sa

from histstore.provenance import host as this_host

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0

# heartbeat age in seconds, computed by the catalog (one clock for every row)
HEARTBEAT_AGE_SQL = ("date_diff('second', coalesce(r.updated_at, r.started_at), "
                     "current_timestamp::TIMESTAMP)")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


def effective_status(status: str, host: str | None, pid: int | None,
                     heartbeat_age_s: float | None) -> str:
    """The status to show: a 'running' row whose process is gone is 'interrupted'."""
    if status != "running":
        return status
    if pid is not None and host == this_host() and not pid_alive(pid):
        return "interrupted"
    if heartbeat_age_s is None or heartbeat_age_s > STALE_AFTER_S:
        return "interrupted"
    return "running"


def why_interrupted(host: str | None, pid: int | None, heartbeat_age_s: float | None) -> str:
    if pid is not None and host == this_host() and not pid_alive(pid):
        return f"its process (PID {pid}) is gone"
    if heartbeat_age_s is None:
        return "it has no heartbeat"
    return f"no heartbeat for {heartbeat_age_s / 60:.0f} min (host {host}, PID {pid})"


def running_rows(conn: sa.Connection, where: str = "", params: tuple = ()) -> list[dict]:
    """Runs marked running (and matching `where`, SQL on runs r), each with `state` ('running'
    or 'interrupted': its process is gone), `heartbeat_age_s` and progress columns."""
    rows = conn.exec_driver_sql(
        "SELECT r.run_id, r.kind, r.cohort, r.task, r.model, r.host, r.pid, r.started_at, "
        f"r.progress_done, r.progress_total, r.progress_unit, {HEARTBEAT_AGE_SQL} AS heartbeat_age_s "
        f"FROM runs r WHERE r.status = 'running' {'AND ' + where if where else ''} ORDER BY r.run_id",
        params).all()
    out = []
    for row in rows:
        d = dict(row._mapping)
        d["state"] = effective_status("running", d["host"], d["pid"], d["heartbeat_age_s"])
        out.append(d)
    return out


def progress_text(done, total, unit) -> str:
    if done is None and total is None:
        return ""
    unit = f" {unit}" if unit else ""
    return f"{done or 0}/{total}{unit}" if total is not None else f"{done or 0}{unit}"


def age_text(seconds) -> str:
    if seconds is None:
        return "never"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
