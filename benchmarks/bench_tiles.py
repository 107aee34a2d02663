"""Tile reading alone (no model): histstore's readers against a plain OpenSlide `read_region`
loop over the same tiles, taken in turn (ABAB...), medians.

  plain       for each slide: OpenSlide, read_region per tile, RGB numpy array
  thread      tile_batches(workers=0): one background reading thread in this process (what
              `embed` uses on a CPU), batches of 64 handed to the caller
  processes   tile_batches(workers=W): a DataLoader with W reading processes (GPU default: 8)

    python -m benchmarks.bench_tiles [--quick]
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.common import Row, interleaved, main, median


def run(quick: bool = False) -> list[dict]:
    import numpy as np
    import openslide

    from histstore.embeddings.dataset import TileDataset, load_slide_tiles, tile_batches
    from histstore.ingest import ingest
    from histstore.store import Store
    from histstore.wsi.synth import synth_cohort
    from histstore.wsi.tiling import TilingSpec

    n_slides, repeats = (4, 3) if quick else (8, 5)
    workers = max(1, min(4, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        cohort = synth_cohort(Path(tmp) / "slides", n_slides=n_slides, seed=4)
        store, _ = Store.init(Path(tmp) / "store")
        rep = ingest(store, cohort.manifest, TilingSpec(), cohort="bench", workers=1, show_progress=False)
        with store.read() as conn:
            ids = [r[0] for r in conn.exec_driver_sql("SELECT slide_id FROM cohort_slides ORDER BY 1").all()]
            slides = load_slide_tiles(conn, ids, rep.tiling_key)
        n = sum(len(s) for s in slides)

        def plain():
            for s in slides:
                osr = openslide.OpenSlide(s.path)
                size = s.read_spec["read_size"]
                for x, y in zip(s.x.tolist(), s.y.tolist()):
                    np.asarray(osr.read_region((x, y), s.read_spec["read_level"], (size, size)).convert("RGB"))
                osr.close()

        def reader(w):
            def read():
                for _ in tile_batches(TileDataset(slides), 64, w):
                    pass
            return read

        fns = {"plain": plain, "thread": reader(0), "processes": reader(workers)}
        for fn in fns.values():
            fn()  # warm-up: page cache, first fork
        times = interleaved(fns, repeats)
    return [{"n_tiles": n, "workers": workers, "repeats": repeats,
             **{f"{k}_tiles_per_s": n / median(v) for k, v in times.items()}}]


def rows(results: list[dict]) -> list[Row]:
    r = results[0]
    return [Row("tile read", f"background reading thread (embed's CPU default where a core is free for it): {r['thread_tiles_per_s']:.0f} tiles/s "
                f"({r['workers']} reading processes: {r['processes_tiles_per_s']:.0f})",
                f"plain OpenSlide read_region loop {r['plain_tiles_per_s']:.0f} tiles/s ({r['n_tiles']} tiles, "
                f"median of {r['repeats']}, taken in turn)",
                r["thread_tiles_per_s"] / r["plain_tiles_per_s"], "thread / plain loop")]


if __name__ == "__main__":
    main(run, rows)
