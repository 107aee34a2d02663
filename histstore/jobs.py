"""A long job's bookkeeping on its runs row: progress at every commit, and a heartbeat in
between (histstore.liveness reads both).

    with Heartbeat(store, run_id) as beat:
        for unit in work:
            result = compute(unit)                       # holds nothing
            with store.commit(f"fold {k}") as conn:     # short
                write(conn, result)
                record_progress(conn, run_id, done=k + 1)
                beat.touch()
"""
from __future__ import annotations

import os
import threading
import time

import sqlalchemy as sa

from histstore.liveness import HEARTBEAT_S
from histstore.provenance import host


def record_progress(conn: sa.Connection, run_id: int, done: int | None = None,
                    total: int | None = None, unit: str | None = None) -> None:
    """Inside the commit of a unit of work: units done (and total), and a heartbeat."""
    conn.exec_driver_sql(
        "UPDATE runs SET progress_done = coalesce(?, progress_done), "
        "progress_total = coalesce(?, progress_total), progress_unit = coalesce(?, progress_unit), "
        "updated_at = current_timestamp WHERE run_id = ?",
        (None if done is None else int(done), None if total is None else int(total), unit, int(run_id)))


def mark_running(conn: sa.Connection, run_id: int) -> None:
    """A run (re)started by this process: status running, this host and PID, fresh heartbeat."""
    conn.exec_driver_sql(
        "UPDATE runs SET status = 'running', error = NULL, finished_at = NULL, host = ?, pid = ?, "
        "updated_at = current_timestamp WHERE run_id = ?", (host(), os.getpid(), int(run_id)))


def interrupt_dead_runs(conn: sa.Connection, note: str, where: str = "", params: tuple = ()) -> list[int]:
    """Mark runs that say 'running' but whose process is gone (histstore.liveness) as
    interrupted, with `note`; returns their ids."""
    from histstore.liveness import running_rows, why_interrupted

    dead = [r for r in running_rows(conn, where, params) if r["state"] != "running"]
    for r in dead:
        conn.exec_driver_sql(
            "UPDATE runs SET status = 'interrupted', finished_at = current_timestamp, error = ? "
            "WHERE run_id = ? AND status = 'running'",
            (f"interrupted: {why_interrupted(r['host'], r['pid'], r['heartbeat_age_s'])}; {note}",
             r["run_id"]))
    return [r["run_id"] for r in dead]


class Heartbeat:
    """A daemon thread that refreshes runs.updated_at every `interval` seconds when no commit
    did so meanwhile. Best effort: it skips a beat rather than wait for a busy catalog, never
    holds it longer than one tiny UPDATE, and stops when the block ends."""

    def __init__(self, store, run_id: int, interval: float = HEARTBEAT_S, start_later: bool = False,
                 children: bool = False):
        """start_later: the thread starts at `start()` - after a job has forked its tile-reading
        workers, so that they are not forked from a process with a second thread. children:
        also beat for the run's running child runs (a joint gene run's genes)."""
        self.store, self.run_id, self.interval = store, int(run_id), float(interval)
        self.children = bool(children)
        self._stop = threading.Event()
        self._last = time.monotonic()
        self._start_later = start_later
        self._thread = threading.Thread(target=self._loop, name=f"histstore-heartbeat-{run_id}",
                                        daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def touch(self) -> None:
        """A commit just refreshed the heartbeat."""
        self._last = time.monotonic()

    def beat(self) -> bool:
        try:
            with self.store.try_write(wait=1.0) as conn:
                if conn is None:
                    return False
                conn.exec_driver_sql("UPDATE runs SET updated_at = current_timestamp "
                                     "WHERE (run_id = ? OR (? AND parent_run_id = ?)) AND status = 'running'",
                                     (self.run_id, self.children, self.run_id))
        except Exception:  # bookkeeping never fails the job
            return False
        self.touch()
        return True

    def _loop(self) -> None:
        while not self._stop.wait(min(self.interval, 5.0)):
            if time.monotonic() - self._last >= self.interval:
                self.beat()

    def __enter__(self) -> "Heartbeat":
        if not self._start_later:
            self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return False
