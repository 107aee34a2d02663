"""Attention storage at paper scale: one train run writes a row per test tile (every tile of the
cohort once over its folds). How much does the catalog grow per run at 20M tiles, how long does
the write take, and how fast is the per-slide `tile_attention` query (the README / catalog.md
recipe and what heatmaps read) - against the same scores kept as raw arrays (tile id int64 +
score float32 = 12 bytes a tile, the smallest plain layout).

    python -m benchmarks.bench_attention_scale [--quick]

Full: 2,000 slides x 10,000 tiles = 20M tiles, two runs (the second one's growth is what a
run costs in a catalog that already holds one). Quick: 200 slides x 2,000 tiles (0.4M).
Rows are written the way `histstore train` writes them (one Arrow insert per fold, the test
slides' tiles in slide order), into a real store's catalog.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Row, main


def _catalog_bytes(store) -> int:
    return sum(p.stat().st_size for p in store.root.glob("catalog.duckdb*"))


def run(quick: bool = False) -> list[dict]:
    from histstore.catalog.bulk import insert_frame
    from histstore.store import Store

    n_slides, n_tiles, folds = (200, 2_000, 5) if quick else (2_000, 10_000, 5)
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="att-scale-"))
    try:
        store, _ = Store.init(tmp / "store")
        slide_ids = [f"TCGA-AT-{i:04d}-01Z-00-DX1" for i in range(n_slides)]
        with store.write() as conn:
            insert_frame(conn, "cases", {"case_id": [s[:12] for s in slide_ids]})
            insert_frame(conn, "slides", {"slide_id": slide_ids, "case_id": [s[:12] for s in slide_ids],
                                          "status": ["registered"] * n_slides})
        first_tile = {}
        for lo in range(0, n_slides, 100):  # tilings and tiles, 100 slides per transaction
            with store.write() as conn:
                for sid in slide_ids[lo:lo + 100]:
                    tiling_id = conn.exec_driver_sql(
                        "INSERT INTO tilings (slide_id, kind, settings_key, settings, tile_size, overlap, "
                        "size_l0, n_tiles) VALUES (?, 'imported', 'k', '{}', 256, 0, 256, ?) RETURNING tiling_id",
                        (sid, n_tiles)).scalar()
                    insert_frame(conn, "tiles", {"tiling_id": np.full(n_tiles, tiling_id),
                                                 "slide_id": [sid] * n_tiles,
                                                 "idx": np.arange(n_tiles, dtype=np.int32),
                                                 "x": (np.arange(n_tiles) % 100) * 256,
                                                 "y": (np.arange(n_tiles) // 100) * 256,
                                                 "size_l0": np.full(n_tiles, 256, np.int32)})
                    first_tile[sid] = conn.exec_driver_sql(
                        "SELECT min(tile_id) FROM tiles WHERE tiling_id = ?", (tiling_id,)).scalar()
        fold_of = np.arange(n_slides) % folds
        runs = []
        for r in range(2):
            with store.write() as conn:
                run_id = conn.exec_driver_sql(
                    "INSERT INTO runs (kind, status, settings, seed, code_version) VALUES "
                    "('train', 'finished', '{}', 0, 'bench') RETURNING run_id").scalar()
            before = _catalog_bytes(store)
            t = time.perf_counter()
            for fold in range(folds):
                test = [s for s, f in zip(slide_ids, fold_of) if f == fold]
                tile_ids = np.concatenate([first_tile[s] + np.arange(n_tiles, dtype=np.int64) for s in test])
                scores = rng.dirichlet(np.ones(n_tiles), len(test)).astype(np.float32).reshape(-1)
                with store.write() as conn:
                    insert_frame(conn, "attention", {"run_id": np.full(len(tile_ids), run_id, np.int64),
                                                     "fold": np.full(len(tile_ids), fold, np.int32),
                                                     "tile_id": tile_ids, "score": scores})
            write_s = time.perf_counter() - t
            with store.write() as conn:
                conn.exec_driver_sql("CHECKPOINT")
            runs.append({"run_id": run_id, "write_s": write_s, "growth": _catalog_bytes(store) - before})
        # per-slide queries through the view, on the last run: the catalog.md recipe (top 10)
        # and the whole slide (what a heatmap reads)
        probe = [slide_ids[i] for i in rng.choice(n_slides, 5, replace=False)]
        top10, whole = [], []
        with store.read() as conn:
            for sid in probe:
                for sink, sql in ((top10, "SELECT tile_id, x, y, score FROM tile_attention WHERE run_id = ? "
                                          "AND slide_id = ? AND rank_in_slide <= 10 ORDER BY rank_in_slide"),
                                  (whole, "SELECT tile_id, x, y, score FROM tile_attention WHERE run_id = ? "
                                          "AND slide_id = ?")):
                    t = time.perf_counter()
                    rows = conn.exec_driver_sql(sql, (runs[-1]["run_id"], sid)).all()
                    sink.append(time.perf_counter() - t)
                    assert len(rows) == (10 if sink is top10 else n_tiles), (sid, len(rows))
        # the plain alternative: the same rows as raw arrays (tile id int64 + score float32)
        raw = np.empty(n_slides * n_tiles, dtype=[("tile_id", "<i8"), ("score", "<f4")])
        np.save(tmp / "raw.npy", raw)
        raw_bytes = (tmp / "raw.npy").stat().st_size
        return [{"n_slides": n_slides, "n_tiles": n_tiles, "rows_per_run": n_slides * n_tiles,
                 "runs": runs, "raw_bytes": raw_bytes, "top10_s": top10, "whole_slide_s": whole,
                 "catalog_bytes": _catalog_bytes(store)}]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def rows(results: list[dict]) -> list[Row]:
    r = results[0]
    grow = r["runs"][-1]["growth"]
    n = r["rows_per_run"]
    return [
        Row("attention: catalog growth per run", f"{grow / 1e6:.0f} MB for {n / 1e6:.1f}M tiles "
            f"({grow / n:.1f} B/row; written in {r['runs'][-1]['write_s']:.1f} s)",
            f"raw tile id + float32 arrays {r['raw_bytes'] / 1e6:.0f} MB ({r['raw_bytes'] / n:.1f} B/row)",
            r["raw_bytes"] / grow, "raw bytes / catalog growth"),
        Row("attention: per-slide query", f"top 10 of a slide {np.median(r['top10_s']) * 1e3:.0f} ms, "
            f"whole slide ({r['n_tiles']:,} tiles) {np.median(r['whole_slide_s']) * 1e3:.0f} ms (median of 5; "
            f"slowest {max(max(r['top10_s']), max(r['whole_slide_s'])) * 1e3:.0f} ms)",
            f"target: under 1 s per slide, {n / 1e6:.1f}M rows per run", None, "figures only"),
    ]


if __name__ == "__main__":
    main(run, rows)
