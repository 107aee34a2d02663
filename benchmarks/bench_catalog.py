"""The catalog at paper scale: ~30 million tile rows (HistCode: ~33M tiles) and one run's
attention rows (every tile scored once in 5-fold CV).

Bulk insert: histstore's `insert_frame` (through the store's SQLAlchemy transaction) against
DuckDB's own fast path as a user would write it (`duckdb.connect`, register an Arrow table,
`INSERT ... SELECT`, commit) - the strongest alternative, not executemany, which nobody uses
for millions of rows. Same rows, same chunks, into two stores with the same schema, the two
taken in turn chunk by chunk (ABAB) so load from other processes falls on both alike.

Queries (absolute figures, nothing to compare them with in the same run): list a cohort's bags,
the top-10 attention tiles of every slide, of one slide, and the catalog file size.

    python -m benchmarks.bench_catalog [--quick]
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Row, main


def _store(path: Path, slide_ids: list[str], tiles_per_slide: int):
    from histstore.catalog.bulk import insert_frame
    from histstore.store import Store

    n_slides = len(slide_ids)
    store, _ = Store.init(path)
    with store.write() as conn:
        insert_frame(conn, "cases", {"case_id": [s[:12] for s in slide_ids]})
        insert_frame(conn, "slides", {"slide_id": slide_ids, "case_id": [s[:12] for s in slide_ids],
                                      "status": ["ingested"] * n_slides})
        insert_frame(conn, "cohorts", {"name": ["paper"]})
        insert_frame(conn, "cohort_slides", {"cohort": ["paper"] * n_slides, "slide_id": slide_ids})
        insert_frame(conn, "tilings", {
            "slide_id": slide_ids, "kind": ["grid"] * n_slides, "settings_key": ["k"] * n_slides,
            "settings": ["{}"] * n_slides, "tile_size": np.full(n_slides, 128, np.int32),
            "overlap": np.zeros(n_slides, np.int32), "size_l0": np.full(n_slides, 256, np.int32),
            "n_tiles": np.full(n_slides, tiles_per_slide)})
        conn.exec_driver_sql("INSERT INTO runs (kind, cohort, settings, status) VALUES ('train', 'paper', '{}', 'finished')")
    return store


def _histstore_insert(store, table: str, cols: dict) -> None:
    from histstore.catalog.bulk import insert_frame

    with store.write() as conn:
        insert_frame(conn, table, cols)


def _duckdb_insert(path: Path, table: str, cols: dict) -> None:
    """DuckDB's fast path, as its documentation shows it."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect(str(path))
    try:
        con.begin()
        con.register("frame", pa.table(cols))
        con.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT * FROM frame")
        con.commit()
    finally:
        con.close()


def run(quick: bool = False) -> list[dict]:
    n_slides = 1_000 if quick else 10_000
    tiles_per_slide = 3_000  # 10,000 slides x 3,000 = 30M tiles
    n_tiles = n_slides * tiles_per_slide
    out: dict = {"n_slides": n_slides, "n_tiles": n_tiles}
    with tempfile.TemporaryDirectory() as tmp:
        slide_ids = [f"TCGA-XX-{i:04d}-01Z-00-DX1" for i in range(n_slides)]
        store = _store(Path(tmp) / "store", slide_ids, tiles_per_slide)
        twin = _store(Path(tmp) / "twin", slide_ids, tiles_per_slide)  # the raw-DuckDB side
        sides = {"histstore": lambda table, cols: _histstore_insert(store, table, cols),
                 "duckdb": lambda table, cols: _duckdb_insert(twin.catalog_path, table, cols)}
        seconds = {f"{side}_{table}": 0.0 for side in sides for table in ("tiles", "attention")}

        def insert(table: str, cols: dict) -> None:
            for side, fn in sides.items():  # A then B, chunk by chunk
                t0 = time.perf_counter()
                fn(table, cols)
                seconds[f"{side}_{table}"] += time.perf_counter() - t0

        # tiles in chunks of 1,000 slides (as ingest would write them, in bulk)
        grid = np.arange(tiles_per_slide)
        for start in range(0, n_slides, 1000):
            ids = np.arange(start, min(start + 1000, n_slides))
            insert("tiles", {
                "tiling_id": np.repeat(ids + 1, tiles_per_slide),
                "slide_id": np.repeat(np.array(slide_ids, dtype=object)[ids], tiles_per_slide),
                "idx": np.tile(grid, len(ids)).astype(np.int32),
                "x": np.tile((grid % 60) * 256, len(ids)).astype(np.int64),
                "y": np.tile((grid // 60) * 256, len(ids)).astype(np.int64),
                "size_l0": np.full(len(ids) * tiles_per_slide, 256, np.int32),
                "tissue_fraction": np.ones(len(ids) * tiles_per_slide, np.float32)})
        rng = np.random.default_rng(0)
        step = 5_000_000
        for start in range(0, n_tiles, step):
            n = min(step, n_tiles - start)
            insert("attention", {
                "run_id": np.ones(n, np.int64),
                "fold": (np.arange(start, start + n) // tiles_per_slide % 5).astype(np.int32),
                "tile_id": np.arange(start + 1, start + n + 1, dtype=np.int64),
                "score": rng.random(n, dtype=np.float32)})
        out.update({f"{k}_insert_seconds": v for k, v in seconds.items()})
        with store.read() as conn:
            t0 = time.perf_counter()
            bags = conn.exec_driver_sql("""
                SELECT cs.slide_id, s.case_id, t.tiling_id, t.n_tiles
                FROM cohort_slides cs JOIN slides s USING (slide_id) JOIN tilings t USING (slide_id)
                WHERE cs.cohort = 'paper' ORDER BY 1""").all()
            out["list_bags_seconds"] = time.perf_counter() - t0
            out["n_bags"] = len(bags)
            t0 = time.perf_counter()
            top = conn.exec_driver_sql("""
                SELECT slide_id, tile_id, x, y, score FROM (
                    SELECT t.slide_id, a.tile_id, t.x, t.y, a.score,
                           row_number() OVER (PARTITION BY t.slide_id ORDER BY a.score DESC) AS r
                    FROM attention a JOIN tiles t USING (tile_id) WHERE a.run_id = 1)
                WHERE r <= 10""").all()
            out["top10_all_slides_seconds"] = time.perf_counter() - t0
            out["top10_rows"] = len(top)
            t0 = time.perf_counter()
            conn.exec_driver_sql(
                "SELECT tile_id, score FROM tile_attention WHERE run_id = 1 AND slide_id = ? "
                "AND rank_in_slide <= 10", (slide_ids[n_slides // 2],)).all()
            out["top10_one_slide_seconds"] = time.perf_counter() - t0
        out["catalog_mb"] = store.catalog_path.stat().st_size / 1e6
    return [out]


def rows(results: list[dict]) -> list[Row]:
    r = results[0]
    n = r["n_tiles"]

    def rate(side, table):
        return n / r[f"{side}_{table}_insert_seconds"]

    return [
        Row("catalog: bulk insert, attention rows",
            f"{n:,} rows at {rate('histstore', 'attention'):,.0f} rows/s",
            f"DuckDB's own Arrow INSERT ... SELECT {rate('duckdb', 'attention'):,.0f} rows/s",
            rate("histstore", "attention") / rate("duckdb", "attention"), "histstore rate / DuckDB rate"),
        Row("catalog: bulk insert, tile rows",
            f"{n:,} rows at {rate('histstore', 'tiles'):,.0f} rows/s",
            f"DuckDB's own Arrow INSERT ... SELECT {rate('duckdb', 'tiles'):,.0f} rows/s",
            rate("histstore", "tiles") / rate("duckdb", "tiles"), "histstore rate / DuckDB rate"),
        Row("catalog: queries at paper scale",
            f"list {r['n_bags']:,} bags {r['list_bags_seconds']:.2f} s; top-10 attention of every slide "
            f"{r['top10_all_slides_seconds']:.1f} s; of one slide {r['top10_one_slide_seconds']:.3f} s",
            f"(absolute figures) catalog file {r['catalog_mb']:,.0f} MB for {n:,} tiles + as many attention rows",
            None, "-"),
    ]


if __name__ == "__main__":
    main(run, rows)
