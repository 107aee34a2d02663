"""Tile reading: histstore's tile dataset through its DataLoader (worker processes, per-worker
slide handles) versus a plain OpenSlide `read_region` loop over the same tiles, same run.

    python -m benchmarks.bench_tiles [--quick]
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row, main


def run(quick: bool = False) -> list[dict]:
    import numpy as np
    import openslide
    from PIL import Image

    from histstore.embeddings.dataset import TileDataset, load_slide_tiles, tile_loader
    from histstore.ingest import ingest
    from histstore.store import Store
    from histstore.wsi.synth import synth_cohort
    from histstore.wsi.tiling import TilingSpec

    n_slides = 4 if quick else 8
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
                    img = osr.read_region((x, y), s.read_spec["read_level"], (size, size))
                    np.asarray(img.convert("RGB"))
                osr.close()

        def dataset(w):
            loader = tile_loader(TileDataset(slides), 64, w)
            for _ in loader:
                pass

        t0 = time.perf_counter(); plain(); plain_s = time.perf_counter() - t0
        t0 = time.perf_counter(); dataset(0); ds0_s = time.perf_counter() - t0
        t0 = time.perf_counter(); dataset(workers); dsw_s = time.perf_counter() - t0
    return [{"n_tiles": n, "workers": workers, "plain_tiles_per_s": n / plain_s,
             "dataset_inline_tiles_per_s": n / ds0_s, "dataset_workers_tiles_per_s": n / dsw_s}]


def rows(results: list[dict]) -> list[Row]:
    r = results[0]
    return [Row("tile read", f"tile dataset, {r['workers']} workers: {r['dataset_workers_tiles_per_s']:.0f} tiles/s "
                f"(in-process: {r['dataset_inline_tiles_per_s']:.0f})",
                f"plain OpenSlide read_region loop {r['plain_tiles_per_s']:.0f} tiles/s ({r['n_tiles']} tiles)",
                r["dataset_workers_tiles_per_s"] / r["plain_tiles_per_s"], "dataset / plain loop")]


if __name__ == "__main__":
    main(run, rows)
