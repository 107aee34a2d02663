"""`histstore verify` finds each kind of damage, one line per problem, and `--repair` fixes the
repairable ones (orphans, leftovers, dead runs) without touching registered data. Also: the
liveness rule behind status / runs list, and the heartbeat thread."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from histstore.embeddings import arrays
from histstore.embeddings.sets import resolve_set
from histstore.verify import verify


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _kinds(store, **kw):
    return sorted(p.kind for p in verify(store, show_progress=False, **kw).unrepaired)


def _set(store):
    with store.read() as conn:
        info = resolve_set(conn, 1)
        sids = [r[0] for r in conn.exec_driver_sql(
            "SELECT slide_id FROM embedding_arrays WHERE embedding_set_id = 1 ORDER BY 1").all()]
    return info, info.directory(store), sids


def _add_run(store, pid, minutes_ago=0.0, status="running"):
    from histstore.provenance import host

    with store.write() as conn:
        return conn.exec_driver_sql(
            "INSERT INTO runs (kind, settings, status, host, pid, updated_at, progress_done, progress_total, "
            "progress_unit) VALUES ('train', '{}', ?, ?, ?, current_timestamp::TIMESTAMP - "
            "to_seconds(?::DOUBLE), 2, 5, 'fold') RETURNING run_id",
            (status, host(), pid, minutes_ago * 60)).scalar()


def test_clean_store_and_array_damage(embedded, cli):
    assert _kinds(embedded) == []
    info, set_dir, sids = _set(embedded)
    good = arrays.read_array(set_dir, sids[0])
    arrays.remove_array(set_dir, sids[0])  # same shape, other values: only the checksum shows it
    arrays.write_array(set_dir, sids[0], good + 1, dtype=info.dtype)
    arrays.remove_array(set_dir, sids[1])  # wrong number of rows
    arrays.write_array(set_dir, sids[1], np.zeros((3, info.dim)), dtype=info.dtype)
    arrays.remove_array(set_dir, sids[2])  # gone
    assert _kinds(embedded) == ["bad-checksum", "bad-shape", "missing-array"]
    assert _kinds(embedded, quick=True) == ["bad-shape", "missing-array"]
    r = cli("verify", "--repair")  # registered data is reported, never deleted or "fixed"
    assert r.exit_code == 1 and r.output.count("problem: ") == 3
    assert sids[2] in r.output and "missing" in r.output
    assert arrays.array_exists(set_dir, sids[0]) and arrays.array_exists(set_dir, sids[1])


def test_orphans_leftovers_and_dead_runs_are_repaired(embedded, cli):
    info, set_dir, sids = _set(embedded)
    arrays.write_array(set_dir, "never-registered", np.zeros((2, info.dim)), dtype=info.dtype)
    (embedded.embeddings_path / "no-such-set").mkdir()
    dead = _dead_pid()
    leftover = set_dir / arrays.PARTIAL_DIR / f"{arrays.slide_key(sids[0])}.p{dead}-{arrays._host_tag()}-abcd1234"
    leftover.mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    live = set_dir / arrays.PARTIAL_DIR / f"{arrays.slide_key(sids[1])}.p{writer.pid}-{arrays._host_tag()}-0000"
    live.mkdir()  # its writer is alive: not a leftover
    (embedded.artifacts_dir / "qc" / f".x.png.{dead}.partial").write_bytes(b"x")
    run = _add_run(embedded, dead)
    try:
        _check_and_repair(embedded, cli, set_dir, sids, leftover, live, run, dead)
    finally:
        writer.kill()
        writer.wait()


def _check_and_repair(embedded, cli, set_dir, sids, leftover, live, run, dead):
    r = cli("verify")
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.startswith("problem: ")]
    assert sorted(ln.split(":")[1].strip() for ln in lines) == [
        "dead-run", "orphan-array", "orphan-array", "partial-leftover", "partial-leftover"], r.output
    assert f"run {run} (train) says running but its process (PID {dead}) is gone; stopped at 2/5 fold" in r.output
    r = cli("verify", "--repair")
    assert r.exit_code == 0 and r.output.count("repaired: ") == 5, r.output
    assert not leftover.exists() and live.exists() and not (set_dir / "never-registered").exists()
    assert all(arrays.array_exists(set_dir, s) for s in sids)
    with embedded.read() as conn:
        status, error = conn.exec_driver_sql("SELECT status, error FROM runs WHERE run_id = ?", (run,)).one()
    assert status == "interrupted" and "verify --repair" in error
    assert _kinds(embedded) == []


def test_checkpoints_and_catalog_mismatches(embedded, tmp_path):
    weights = embedded.checkpoints_dir / "w.pt"
    weights.write_bytes(b"weights")
    with embedded.write() as conn:
        conn.exec_driver_sql("INSERT INTO encoders (name, method, architecture, dim, settings, checkpoint_path, "
                             "checkpoint_sha256) VALUES ('e', 'pretrained', 'resnet18', 512, '{}', ?, ?)",
                             (embedded.relative(weights), "0" * 64))
        conn.exec_driver_sql("INSERT INTO artifacts (kind, path, fold, sha256) VALUES "
                             "('mil-checkpoint', 'checkpoints/runs/9/fold0.pt', 0, 'abc')")
        conn.exec_driver_sql("UPDATE tilings SET n_tiles = n_tiles + 1 WHERE tiling_id = 1")
    kinds = _kinds(embedded)
    assert kinds == ["bad-checkpoint", "catalog-mismatch", "catalog-mismatch", "missing-checkpoint"], kinds
    assert _kinds(embedded, quick=True) == ["catalog-mismatch", "catalog-mismatch", "missing-checkpoint"]


def test_liveness_rule_in_status_and_runs_list(embedded, cli):
    alive = _add_run(embedded, os.getpid())
    gone = _add_run(embedded, _dead_pid())
    stale = _add_run(embedded, os.getpid(), minutes_ago=20)
    r = cli("runs", "list", "--kind", "train", "--format", "json")
    got = {x["run_id"]: x for x in json.loads(r.output)}
    assert got[alive]["status"] == "running" and got[alive]["progress"] == "2/5 fold"
    assert got[alive]["heartbeat"].endswith("s ago")
    assert got[gone]["status"] == "interrupted" and got[stale]["status"] == "interrupted"
    r = cli("status")
    assert f"running: run {alive} train" in r.output and "2/5 fold" in r.output
    assert f"interrupted: run {gone} train" in r.output and f"interrupted: run {stale} train" in r.output
    assert "train:running 1" in r.output and "train:interrupted 2" in r.output
    r = cli("runs", "show", str(gone))
    assert "interrupted (its process" in r.output


def test_heartbeat_thread_beats_and_stops(store):
    from histstore.jobs import Heartbeat

    run = _add_run(store, os.getpid(), minutes_ago=5)

    def age():
        with store.read() as conn:
            return conn.exec_driver_sql(
                "SELECT date_diff('second', updated_at, current_timestamp::TIMESTAMP) FROM runs "
                "WHERE run_id = ?", (run,)).scalar()

    assert age() >= 299
    with Heartbeat(store, run, interval=0.05) as beat:
        deadline = time.monotonic() + 20
        while age() > 60 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert age() < 60 and not beat._thread.is_alive()
