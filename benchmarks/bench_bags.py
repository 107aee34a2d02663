"""Reading a cohort's embeddings back, and the zarr codec on real encoder output.

1. Scale (random float16 data; random bits barely compress, so this part says nothing about
   codecs): histstore's zarr arrays read through `load_bags` (catalog lookups included) against
   the same bytes from raw .npy files, 100 slides of 2,000-10,000 tiles x 1024 (quick: 8).
   Best of 3 each.
2. Codecs on real embeddings: the demo's recipe on a synthetic cohort - slides with planted
   tumour, ingest, a short AdCo pretraining of ResNet-18, `histstore embed` with Macenko
   (quick: 12 slides, 64 px tiles at 1 um/px, 30 steps; full: 30 slides, 128 px at 0.5 um/px,
   120 steps, as `histstore demo`) - then the same float16 rows written with histstore's
   codec and the alternatives, chunked as histstore chunks them: size on disk against the
   raw bytes, write and read speed (reads: median of interleaved repeats). The rows of all the
   slides go into one array (a synthetic slide has ~150 tiles, a real one thousands), so the
   figures are the codec's, not a file-open overhead's.

    python -m benchmarks.bench_bags [--quick]
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Row, best_of, interleaved, main, median


def _codecs() -> dict:
    import zarr

    from histstore.embeddings.arrays import COMPRESSOR

    return {"histstore (blosc lz4 bitshuffle)": COMPRESSOR,
            "zstd-3": zarr.codecs.ZstdCodec(level=3),
            "blosc zstd-3 bitshuffle": zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
            "blosc lz4 byteshuffle": zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
            "uncompressed": None}


def _cohort_read(quick: bool) -> dict:
    from histstore.catalog.bulk import insert_frame
    from histstore.embeddings import arrays
    from histstore.embeddings.bags import load_bags
    from histstore.embeddings.sets import get_or_create_set, register_array
    from histstore.store import Store

    n_slides, dim = (8, 1024) if quick else (100, 1024)
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
    return {"part": "cohort read (random data)", "n_slides": n_slides, "n_tiles": int(sizes.sum()), "dim": dim,
            "bytes": n_bytes, "zarr_seconds": zarr_s, "npy_seconds": npy_s, "zarr_mb_on_disk": zarr_mb,
            "npy_mb_on_disk": npy_mb}


def real_embeddings(root: Path, quick: bool) -> tuple[list[np.ndarray], dict]:
    """float16 embeddings of real tile pixels, made the way `histstore demo` makes them
    (full) or with the same architecture at random init, no pretraining (quick)."""
    from histstore.embed import embed
    from histstore.embeddings.bags import load_bags
    from histstore.embeddings.sets import resolve_set
    from histstore.ingest import ingest
    from histstore.pretrain import PretrainSettings, pretrain
    from histstore.store import Store
    from histstore.wsi.synth import synth_cohort
    from histstore.wsi.tiling import TilingSpec

    n_slides, tile, mpp, steps, batch = (12, 64, 1.0, 0, 32) if quick else (30, 128, 0.5, 120, 64)
    cohort = synth_cohort(root / "slides", n_slides=n_slides, seed=0)
    store, _ = Store.init(root / "store")
    ingest(store, cohort.manifest, TilingSpec(target_mpp=mpp, tile_size=tile), cohort="c", show_progress=False)
    if steps:
        encoder = pretrain(store, PretrainSettings(cohort="c", method="adco", arch="resnet18", steps=steps,
                                                   batch_size=batch, lr=0.03, warmup_steps=max(1, steps // 10)),
                           show_progress=False).encoder
        rep = embed(store, encoder, "c", stain_norm="macenko", show_progress=False)
    else:
        rep = embed(store, "resnet18", "c", allow_random=True, stain_norm="macenko", show_progress=False)
    with store.read() as conn:
        info = resolve_set(conn, rep.embedding_set)
        ids = [r[0] for r in conn.exec_driver_sql("SELECT slide_id FROM cohort_slides ORDER BY 1").all()]
        bags = load_bags(store, conn, info, ids, dtype=np.float16)
        encoder = conn.exec_driver_sql("SELECT e.name FROM embedding_sets s JOIN encoders e USING (encoder_id) "
                                       "WHERE s.embedding_set_id = ?", (info.embedding_set_id,)).scalar()
    return [b.features for b in bags], {"n_slides": n_slides, "tile_px": tile, "tile_mpp": mpp,
                                        "pretrain_steps": steps, "encoder": encoder, "dim": info.dim}


def _in_memory(codec):
    """The numcodecs object that zarr's codec runs (same settings), or None for no codec."""
    import numcodecs
    import zarr

    if codec is None:
        return None
    if isinstance(codec, zarr.codecs.BloscCodec):
        shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
                   "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[codec.shuffle.value]
        return numcodecs.Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=shuffle,
                               blocksize=codec.blocksize)
    if isinstance(codec, zarr.codecs.ZstdCodec):
        return numcodecs.Zstd(level=codec.level, checksum=codec.checksum)
    raise TypeError(f"no in-memory equivalent for {codec}")


def _codec_table(data: np.ndarray, root: Path, repeats: int) -> list[dict]:
    """Write `data` as one array per codec (histstore's chunking); size, write and read speed."""
    import zarr

    from histstore.embeddings.arrays import DEFAULT_CHUNK_ROWS

    out, dirs = [], {}
    for name, codec in _codecs().items():
        d = dirs[name] = root / f"codec{len(dirs)}"
        t0 = time.perf_counter()
        arr = zarr.create_array(store=zarr.storage.LocalStore(str(d)), shape=data.shape,
                                chunks=(min(DEFAULT_CHUNK_ROWS, data.shape[0]), data.shape[1]),
                                dtype=data.dtype, compressors=codec, fill_value=0, zarr_format=3)
        arr[...] = data
        write_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and f.name != "zarr.json")
        out.append({"codec": name, "size_fraction": size / data.nbytes,
                    "write_mb_per_s": data.nbytes / 1e6 / write_s})

    # decode speed of the codec alone, in memory, chunk by chunk (no file system, no zarr)
    rows_per_chunk = min(DEFAULT_CHUNK_ROWS, data.shape[0])
    chunks = [np.ascontiguousarray(data[i:i + rows_per_chunk]) for i in range(0, len(data), rows_per_chunk)]
    decoders = {}
    for name, codec in _codecs().items():
        nc = _in_memory(codec)
        if nc is None:
            decoders[name] = lambda: [c.copy() for c in chunks]
        else:
            encoded = [nc.encode(c) for c in chunks]
            decoders[name] = lambda nc=nc, encoded=encoded: [nc.decode(e) for e in encoded]

    def reader(d):
        def read():
            got = zarr.open_array(store=zarr.storage.LocalStore(str(d)), mode="r")[...]
            assert np.array_equal(got, data)
        return read

    fns = {name: reader(d) for name, d in dirs.items()}
    for fn in fns.values():
        fn()  # warm-up: page cache, imports
    times = interleaved(fns, repeats)
    for fn in decoders.values():
        fn()
    decode = interleaved(decoders, repeats)
    for r in out:
        r["read_gb_per_s"] = data.nbytes / 1e9 / median(times[r["codec"]])
        r["decode_gb_per_s"] = data.nbytes / 1e9 / median(decode[r["codec"]])
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)
    return out


def run(quick: bool = False) -> list[dict]:
    results = [_cohort_read(quick)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data, about = real_embeddings(Path(tmp), quick)
        make_s = time.perf_counter() - t0
        # the synthetic slides hold ~150 tiles each, a real one thousands: one array of all the
        # rows, chunked as histstore chunks, measures the codec rather than per-file overhead
        codecs = _codec_table(np.concatenate(data), Path(tmp), repeats=5 if quick else 11)
    from histstore.embeddings.arrays import DEFAULT_CHUNK_ROWS

    results.append({"part": "codecs (real embeddings)", **about, "chunk_rows": DEFAULT_CHUNK_ROWS,
                    "n_tiles": int(sum(len(a) for a in data)), "raw_bytes": int(sum(a.nbytes for a in data)),
                    "make_seconds": make_s, "codecs": codecs})
    return results


def rows(results: list[dict]) -> list[Row]:
    r, c = results
    gb = r["bytes"] / 1e9
    by = {x["codec"]: x for x in c["codecs"]}
    ours, zstd = by["histstore (blosc lz4 bitshuffle)"], by["zstd-3"]
    what = f"{c['n_tiles']:,} x {c['dim']} f16 from {c['encoder']} on {c['n_slides']} synthetic slides"
    return [Row("bags: read a cohort (random data)",
                f"zarr + catalog {r['zarr_seconds']:.2f} s ({gb / r['zarr_seconds']:.2f} GB/s), "
                f"{r['n_slides']} slides, {r['n_tiles']:,} x {r['dim']} f16",
                f"raw .npy {r['npy_seconds']:.2f} s ({gb / r['npy_seconds']:.2f} GB/s)",
                r["npy_seconds"] / r["zarr_seconds"], "npy time / zarr time (1 = as fast as raw files)"),
            Row("bags: size on disk (random data)", f"zarr {r['zarr_mb_on_disk']:.0f} MB", f".npy {r['npy_mb_on_disk']:.0f} MB",
                r["npy_mb_on_disk"] / r["zarr_mb_on_disk"], "npy size / zarr size (random bits barely compress)"),
            Row("bags: codec size, real embeddings",
                f"blosc lz4 + bitshuffle: {ours['size_fraction']:.2f} of raw ({what})",
                f"zstd level 3: {zstd['size_fraction']:.2f} of raw",
                zstd["size_fraction"] / ours["size_fraction"], "zstd size / histstore size"),
            Row("bags: codec decode speed, real embeddings",
                f"blosc lz4 + bitshuffle: {ours['decode_gb_per_s']:.2f} GB/s (in memory)",
                f"zstd level 3: {zstd['decode_gb_per_s']:.2f} GB/s",
                ours["decode_gb_per_s"] / zstd["decode_gb_per_s"], "histstore decode speed / zstd decode speed")]


def details(results: list[dict]) -> list[str]:
    c = results[1]
    out = [f"Codecs on real embeddings ({c['n_tiles']:,} tiles x {c['dim']}, float16, "
           f"{c['raw_bytes'] / 1e6:.1f} MB raw, one array in chunks of {c['chunk_rows']:,} rows, encoder "
           f"{c['encoder']}). Read: the whole array through zarr, file open included; decode: the codec "
           "alone on the chunks in memory; both medians of interleaved repeats.", "",
           "| codec | size / raw | write MB/s | read GB/s | decode GB/s |", "|---|---|---|---|---|"]
    out += [f"| {x['codec']} | {x['size_fraction']:.3f} | {x['write_mb_per_s']:.0f} | {x['read_gb_per_s']:.2f} "
            f"| {x['decode_gb_per_s']:.2f} |" for x in c["codecs"]]
    return out


if __name__ == "__main__":
    main(run, rows)
