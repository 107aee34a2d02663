"""Reading a cohort's embeddings: histstore's zarr arrays (via load_bags, catalog lookups
included) versus the same bytes from raw .npy files, in the same run.

    python -m benchmarks.bench_bags [--quick]
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import Row, main, best_of


def run(quick: bool = False) -> list[dict]:
    from histstore.catalog.bulk import insert_frame
    from histstore.embeddings import arrays
    from histstore.embeddings.bags import load_bags
    from histstore.embeddings.sets import get_or_create_set, register_array
    from histstore.store import Store

    n_slides, dim = (20, 1024) if quick else (100, 1024)
    rng = np.random.default_rng(0)
    sizes = rng.integers(2000, 10000, n_slides)
    with tempfile.TemporaryDirectory() as tmp:
        store, _ = Store.init(Path(tmp) / "store")
        npy_dir = Path(tmp) / "npy"
        npy_dir.mkdir()
        slide_ids = [f"S{i:04d}" for i in range(n_slides)]
        with store.write() as conn:
            insert_frame(conn, "cases", {"case_id": slide_ids})
            insert_frame(conn, "slides", {"slide_id": slide_ids, "case_id": slide_ids,
                                          "status": ["registered"] * n_slides})
            info, _ = get_or_create_set(conn, name="bench", kind="imported", settings={"b": 1}, dim=dim)
            for sid, n in zip(slide_ids, sizes):
                tiling_id = conn.exec_driver_sql(
                    "INSERT INTO tilings (slide_id, kind, settings_key, settings, tile_size, overlap, size_l0, n_tiles) "
                    "VALUES (?, 'imported', 'k', '{}', 128, 0, 128, ?) RETURNING tiling_id", (sid, int(n))).scalar()
                insert_frame(conn, "tiles", {"tiling_id": np.full(n, tiling_id), "slide_id": [sid] * n,
                                             "idx": np.arange(n, dtype=np.int32), "x": np.arange(n) * 128,
                                             "y": np.zeros(n, np.int64), "size_l0": np.full(n, 128, np.int32)})
                data = rng.standard_normal((n, dim)).astype(np.float16)
                checksum = arrays.write_array(info.directory(store), sid, data)
                np.save(npy_dir / f"{sid}.npy", data)
                register_array(conn, info, sid, tiling_id, int(n), checksum)
        n_bytes = int(sizes.sum()) * dim * 2

        def zarr_read():
            with store.read() as conn:
                load_bags(store, conn, info, slide_ids, dtype=np.float16)

        def npy_read():
            for sid in slide_ids:
                np.load(npy_dir / f"{sid}.npy")

        zarr_s, npy_s = best_of(zarr_read), best_of(npy_read)
        zarr_mb = sum(f.stat().st_size for f in info.directory(store).rglob("*") if f.is_file()) / 1e6
        npy_mb = sum(f.stat().st_size for f in npy_dir.iterdir()) / 1e6
    return [{"n_slides": n_slides, "n_tiles": int(sizes.sum()), "dim": dim, "bytes": n_bytes,
             "zarr_seconds": zarr_s, "npy_seconds": npy_s, "zarr_mb_on_disk": zarr_mb, "npy_mb_on_disk": npy_mb}]


def rows(results: list[dict]) -> list[Row]:
    r = results[0]
    gb = r["bytes"] / 1e9
    return [Row("bags: read a cohort",
                f"zarr + catalog {r['zarr_seconds']:.2f} s ({gb / r['zarr_seconds']:.2f} GB/s), "
                f"{r['n_slides']} slides, {r['n_tiles']:,} x {r['dim']} f16",
                f"raw .npy {r['npy_seconds']:.2f} s ({gb / r['npy_seconds']:.2f} GB/s)",
                r["npy_seconds"] / r["zarr_seconds"], "npy time / zarr time (1 = as fast as raw files)"),
            Row("bags: size on disk", f"zarr {r['zarr_mb_on_disk']:.0f} MB", f".npy {r['npy_mb_on_disk']:.0f} MB",
                r["npy_mb_on_disk"] / r["zarr_mb_on_disk"], "npy size / zarr size (random data barely compresses)")]


if __name__ == "__main__":
    main(run, rows)
