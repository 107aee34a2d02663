"""Ingest cost of a large slide: tissue detection + tiling + QC image + catalog insert (one
`histstore ingest` of a 60,000 x 60,000 px synthetic slide at 0.25 um/px; --quick: 20,000 px),
compared side by side with one pass that reads every kept tile's pixels (what any embedding of
the slide must pay at least), and the catalog insert rate compared with SQLAlchemy executemany
of the same tile rows.

    python -m benchmarks.bench_ingest [--quick]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row


def run(quick: bool = False, keep_slide: Path | None = None) -> list[dict]:
    import numpy as np
    import sqlalchemy as sa

    from histstore.catalog.bulk import insert_frame
    from histstore.embeddings.dataset import TileDataset, load_slide_tiles
    from histstore.ingest import ingest
    from histstore.store import Store
    from histstore.wsi.synth import synth_slide
    from histstore.wsi.tiling import TilingSpec

    side = 20_000 if quick else 60_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(keep_slide) if keep_slide and Path(keep_slide).exists() else Path(tmp) / "big.tiff"
        t0 = time.perf_counter()
        if not path.exists():
            synth_slide(path, size=(side, side), mpp=0.25, seed=7, tumor=True)
        synth_s = time.perf_counter() - t0
        store, _ = Store.init(Path(tmp) / "store")
        t0 = time.perf_counter()
        rep = ingest(store, path, TilingSpec(), workers=1, show_progress=False, case_id_mode="slide")
        ingest_s = time.perf_counter() - t0
        n_tiles = rep.n_tiles
        with store.read() as conn:
            tiles = load_slide_tiles(conn, [rep.outcomes[0].slide_id], rep.tiling_key)
        ds = TileDataset(tiles)
        n_read = min(len(ds), 3000 if quick else 10_000)
        order = np.random.default_rng(0).permutation(len(ds))[:n_read]
        t0 = time.perf_counter()
        for i in order:
            ds[int(i)]
        read_s = (time.perf_counter() - t0) * len(ds) / n_read  # extrapolated to every tile
        # catalog insert: bulk Arrow vs executemany, same rows, rolled back
        rows = {"tiling_id": np.ones(n_tiles, np.int64), "slide_id": [rep.outcomes[0].slide_id] * n_tiles,
                "idx": np.arange(n_tiles, dtype=np.int32), "x": np.arange(n_tiles, dtype=np.int64),
                "y": np.zeros(n_tiles, np.int64), "size_l0": np.full(n_tiles, 256, np.int32),
                "tissue_fraction": np.ones(n_tiles, np.float32)}
        with store.write() as conn:
            t0 = time.perf_counter()
            insert_frame(conn, "tiles", rows)
            bulk_rate = n_tiles / (time.perf_counter() - t0)
            sample = min(n_tiles, 5000)
            params = [{"t": 1, "s": rep.outcomes[0].slide_id, "i": int(i), "x": int(i)} for i in range(sample)]
            t0 = time.perf_counter()
            conn.execute(sa.text("INSERT INTO tiles (tiling_id, slide_id, idx, x, y, size_l0) "
                                 "VALUES (:t, :s, :i, :x, 0, 256)"), params)
            many_rate = sample / (time.perf_counter() - t0)
            conn.rollback()
    return [{"side_px": side, "mpp": 0.25, "n_tiles": n_tiles, "synth_seconds": synth_s,
             "ingest_seconds": ingest_s, "read_all_tiles_seconds": read_s, "bulk_insert_rows_per_s": bulk_rate,
             "executemany_rows_per_s": many_rate}]


def rows(results: list[dict]) -> list[Row]:
    r = results[0]
    return [Row("ingest: one large slide",
                f"{r['ingest_seconds']:.1f} s for {r['side_px']:,}^2 px at 0.25 um/px -> {r['n_tiles']:,} tiles "
                f"(tissue + tiling + QC + catalog)",
                f"reading every kept tile once: {r['read_all_tiles_seconds']:.1f} s",
                r["read_all_tiles_seconds"] / r["ingest_seconds"], "tile-read pass / ingest (ingest is cheap)"),
            Row("ingest: catalog insert", f"bulk Arrow insert {r['bulk_insert_rows_per_s']:,.0f} tiles/s",
                f"SQLAlchemy executemany {r['executemany_rows_per_s']:,.0f} tiles/s",
                r["bulk_insert_rows_per_s"] / r["executemany_rows_per_s"], "bulk / executemany")]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--keep-slide", type=Path, help="reuse (or create) the big slide at this path")
    a = p.parse_args()
    res = run(a.quick, a.keep_slide)
    print(json.dumps(res, indent=1))
    for row in rows(res):
        print(row)
