"""A store shared while a job runs: `histstore embed` on a cohort while a user runs
`histstore sql "select count(*) from tiles"` over and over (a subprocess each time, one per
second, as someone watching the store would), in the two catalog modes, side by side:

- shared (the default): the job holds the catalog only while it commits each slide, so the
  reader gets in between commits;
- exclusive (`--exclusive`, the old behaviour): the job holds the catalog for its whole run and
  readers wait until it ends.

Four runs of the same embed on copies of one store:
- A exclusive and B shared, with no reader competing for CPU: the job's own time (what
  `histstore embed` reports) A vs B is the cost of committing per slide (opening the catalog
  per commit, re-checking, the heartbeat). A also has a light reader (below): it waits for
  the whole job, sleeping.
- C shared with a light reader: this process opening `store.read()`, counting tiles and
  closing every 0.5 s - the wait for the catalog itself while the job commits;
- D shared with the user's reader: `histstore sql` in a subprocess once a second; its latency
  (whole command, Python start-up included) against the same command on the idle store.
  Readers cost CPU the job then lacks (on 2 cores a process start is a visible share), so the
  job times of C and D are reported but not used for the ratio.
Issue 13 targets: reader p95 <= 2 s while the job runs; the job <= 5 % slower than exclusive.

    python -m benchmarks.bench_concurrency [--quick]
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Row

READ_SQL = "select count(*) from tiles"
READ_EVERY_S = 1.0
LIGHT_EVERY_S = 0.5


def _histstore(root: Path, *args: str, exclusive: bool = False) -> list[str]:
    return [sys.executable, "-m", "histstore", "--store", str(root), "--wait", "3600",
            *(["--exclusive"] if exclusive else []), *args]


def _env() -> dict:
    return {**os.environ, "HISTSTORE_PROGRESS": "0"}


def _read_once(root: Path) -> tuple[float, bool]:
    t0 = time.perf_counter()
    r = subprocess.run(_histstore(root, "sql", READ_SQL, "--format", "csv"), capture_output=True, text=True,
                       env=_env())
    return time.perf_counter() - t0, r.returncode == 0


def _read_light(root: Path) -> tuple[float, bool]:
    from histstore.errors import StoreLocked
    from histstore.store import Store

    t0 = time.perf_counter()
    try:
        with Store(root, wait=3600).read() as conn:
            conn.exec_driver_sql(READ_SQL).scalar()
    except StoreLocked:
        return time.perf_counter() - t0, False
    return time.perf_counter() - t0, True


def _reader_loop(read, every: float, root: Path, stop: threading.Event, out: list) -> None:
    while not stop.is_set():
        out.append(read(root))
        stop.wait(every)


def _embed_with_readers(root: Path, exclusive: bool, reader: str | None) -> dict:
    """Run embed in a subprocess with a reader loop ('light', 'sql' or None) going; the job's
    reported seconds and the reader's latencies."""
    latencies: list = []
    stop = threading.Event()
    job = subprocess.Popen(_histstore(root, "embed", "--encoder", "resnet18", "--cohort", "bench", "--random-init",
                                      "--stain-norm", "none", exclusive=exclusive),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    time.sleep(0.5)  # let the job open the catalog first (the exclusive case is about that)
    thread = None
    if reader is not None:
        args = (_read_light, LIGHT_EVERY_S) if reader == "light" else (_read_once, READ_EVERY_S)
        thread = threading.Thread(target=_reader_loop, args=(*args, root, stop, latencies))
        thread.start()
    out, err = job.communicate()
    stop.set()
    if thread is not None:
        thread.join()
    if job.returncode != 0:
        raise RuntimeError(f"embed failed: {err.strip().splitlines()[-1] if err.strip() else job.returncode}")
    m = re.search(r"tiles in ([0-9.]+) s", out)
    lat = np.array([t for t, ok in latencies if ok])
    return {"mode": ("exclusive" if exclusive else "shared") + (f"+{reader}" if reader else ""),
            "reader": {"light": "store.read() in this process", "sql": "histstore sql subprocess",
                       None: "none"}[reader],
            "job_s": float(m.group(1)),
            "n_tiles": int(re.search(r"([0-9,]+) tiles in", out).group(1).replace(",", "")),
            "n_reads": len(latencies), "n_read_failures": sum(not ok for _, ok in latencies),
            "read_p50_s": float(np.percentile(lat, 50)) if len(lat) else None,
            "read_p95_s": float(np.percentile(lat, 95)) if len(lat) else None,
            "read_max_s": float(lat.max()) if len(lat) else None}


def run(quick: bool = False) -> list[dict]:
    from histstore.ingest import ingest
    from histstore.store import Store
    from histstore.wsi.synth import synth_cohort
    from histstore.wsi.tiling import TilingSpec

    n_slides = 4 if quick else 16
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cohort = synth_cohort(tmp / "slides", n_slides=n_slides, seed=5)
        template, _ = Store.init(tmp / "template")
        ingest(template, cohort.manifest, TilingSpec(), cohort="bench", workers=1, show_progress=False)
        idle = [_read_once(template.root)[0] for _ in range(5 if quick else 10)]
        light = [_read_light(template.root)[0] for _ in range(20)]
        results.append({"mode": "idle", "read_p50_s": float(np.median(idle)),
                        "read_p95_s": float(np.percentile(idle, 95)), "n_reads": len(idle),
                        "light_p50_s": float(np.median(light))})
        for exclusive, reader in ((True, "light"), (False, None), (False, "light"), (False, "sql")):
            root = tmp / f"{exclusive}-{reader}"
            shutil.copytree(template.root, root)
            results.append(_embed_with_readers(root, exclusive, reader))
    return results


def rows(results: list[dict]) -> list[Row]:
    by = {r["mode"]: r for r in results}
    idle, excl, shared, light, sql = (by[k] for k in ("idle", "exclusive+light", "shared", "shared+light",
                                                       "shared+sql"))
    return [
        Row("shared store: `histstore sql` during embed",
            f"p50 {sql['read_p50_s']:.2f} s, p95 {sql['read_p95_s']:.2f} s over {sql['n_reads']} calls "
            f"({sql['n_read_failures']} failed)",
            f"the same command on the idle store: p50 {idle['read_p50_s']:.2f} s",
            idle["read_p50_s"] / sql["read_p95_s"], "idle p50 / p95 during the job (target: p95 <= 2 s)"),
        Row("shared store: catalog wait during embed",
            f"store.read() p50 {light['read_p50_s'] * 1000:.0f} ms, p95 {light['read_p95_s'] * 1000:.0f} ms "
            f"({light['n_reads']} reads; idle store p50 {idle['light_p50_s'] * 1000:.0f} ms)",
            f"--exclusive job: the first read waited {excl['read_max_s']:.1f} s (the whole job)",
            excl["read_max_s"] / light["read_p95_s"], "exclusive wait / shared p95"),
        Row("shared store: embed job time",
            f"{shared['job_s']:.1f} s for {shared['n_tiles']:,} tiles, a commit per slide (with a light "
            f"reader {light['job_s']:.1f} s, with `histstore sql` processes {sql['job_s']:.1f} s)",
            f"--exclusive (catalog held throughout) {excl['job_s']:.1f} s",
            excl["job_s"] / shared["job_s"], "exclusive / shared time (target >= 0.95)"),
    ]


if __name__ == "__main__":
    from benchmarks.common import main

    main(run, rows)
