"""Reading a cohort's embeddings back, and the zarr layout and codec, on real encoder output.

The embeddings: the demo's recipe on a synthetic cohort - slides with planted tumour, ingest, a
short AdCo pretraining of ResNet-18, `histstore embed` with Macenko (quick: 12 slides, 64 px
tiles at 1 um/px, no pretraining; full: 30 slides, 128 px at 0.5 um/px, 120 steps, as
`histstore demo`): float16 rows of 512 features.

1. Cohort read at scale: 100 slides of 10,000-30,000 tiles (quick: 8), each slide's rows a run
   of consecutive rows of those real embeddings (from a random start, wrapping around: a
   synthetic slide has ~150 tiles, a real one thousands), written in each candidate layout
   (chunk rows as histstore's writer picks them, `arrays.chunk_rows_for`) and as raw .npy
   files. Each layout is read back whole, one `BagIndex.read` (a shape-checked `read_array`:
   histstore's direct chunk reader) per slide, as training's bag sources read; histstore's
   layout and the layout before the direct reader (blosc lz4 bitshuffle, 4,096-row chunks) also
   through zarr's own read path (`read_array_via_zarr`: how histstore read before), and the
   latter with its chunks decoded on 2 threads. Warm (the page cache holds the files: median
   of interleaved repeats) and cold (every file dropped from the page cache with posix_fadvise
   before the read), against `np.load` of the .npy files, warm and cold alike; every reader
   drops each bag before the next (as streamed training does). Size on disk (every file,
   metadata included) against the raw bytes.
2. Codecs on the same real embeddings, one array of all the rows chunked as histstore chunks:
   size against the raw bytes, write speed, read speed through `read_array`, and decode speed
   of the codec alone in memory.

    python -m benchmarks.bench_bags [--quick]
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Row, interleaved, main, median

PREVIOUS = "blosc lz4 bitshuffle"  # histstore's codec before the direct reader
PREVIOUS_CHUNK_ROWS = 4096          # and its chunk rows
BEFORE = f"{PREVIOUS}, {PREVIOUS_CHUNK_ROWS:,}-row chunks (before)"


def codec_candidates() -> dict:
    """The codecs compared, by name (tests/embeddings/test_chunk_reader.py reads each)."""
    import zarr

    blosc = zarr.codecs.BloscCodec
    return {"blosc lz4 bitshuffle": blosc(cname="lz4", clevel=5, shuffle="bitshuffle"),
            "blosc lz4-1 bitshuffle": blosc(cname="lz4", clevel=1, shuffle="bitshuffle"),
            "blosc zstd-3 bitshuffle": blosc(cname="zstd", clevel=3, shuffle="bitshuffle"),
            "zstd-3": zarr.codecs.ZstdCodec(level=3),
            "blosc lz4 byteshuffle": blosc(cname="lz4", clevel=5, shuffle="shuffle"),
            "blosc lz4 noshuffle": blosc(cname="lz4", clevel=5, shuffle="noshuffle"),
            "uncompressed": None}


def histstore_codec() -> str:
    """The candidate's name that histstore writes new arrays with (arrays.COMPRESSOR)."""
    from histstore.embeddings.arrays import COMPRESSOR

    def spec(codec):
        return None if codec is None else codec.to_dict()

    names = [k for k, c in codec_candidates().items() if spec(c) == spec(COMPRESSOR)]
    if not names:
        raise ValueError(f"arrays.COMPRESSOR {COMPRESSOR} is not among bench_bags' candidates")
    return names[0]


def _layouts() -> dict:
    """Candidate layouts of a slide's array: (codec, max chunk rows)."""
    from histstore.embeddings.arrays import DEFAULT_CHUNK_ROWS

    codecs = codec_candidates()
    ours = histstore_codec()
    out = {"histstore": (codecs[ours], DEFAULT_CHUNK_ROWS)}
    for name in (PREVIOUS, "blosc zstd-3 bitshuffle", "uncompressed"):
        if name != ours:
            out[name] = (codecs[name], DEFAULT_CHUNK_ROWS)
    out[f"uncompressed, {PREVIOUS_CHUNK_ROWS:,}-row chunks"] = (None, PREVIOUS_CHUNK_ROWS)
    out[BEFORE] = (codecs[PREVIOUS], PREVIOUS_CHUNK_ROWS)
    return out


def _reads() -> dict:
    """Rows of the layout table: name -> (layout, how it is read: "histstore" (read_array),
    "zarr" (zarr's read path) or "2 threads" (histstore's reader, chunks decoded on 2 threads))."""
    out = {name: (name, "histstore") for name in _layouts()}
    out["histstore, through zarr"] = ("histstore", "zarr")
    out[f"{BEFORE}, through zarr"] = (BEFORE, "zarr")
    out[f"{BEFORE}, 2 decode threads"] = (BEFORE, "2 threads")
    return out


def _slide_rows(rows: np.ndarray, n: int, rng) -> np.ndarray:
    """n consecutive rows of the real embeddings from a random start, wrapping around."""
    start = int(rng.integers(len(rows)))
    return rows[(start + np.arange(n)) % len(rows)]


def _drop_cache(paths) -> None:
    """Evict files from the page cache (their pages are clean: written and synced before)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _files(d: Path) -> list[Path]:
    return [f for f in d.rglob("*") if f.is_file()]


def _cohort_read(rows: np.ndarray, quick: bool, repeats: int) -> dict:
    """The cohort in each layout and as .npy: size, warm and cold read seconds."""
    import zarr

    from histstore.embeddings import arrays, chunk_reader
    from histstore.embeddings.bags import BagIndex

    n_slides = 8 if quick else 100
    rng = np.random.default_rng(0)
    sizes = rng.integers(10_000, 30_000, n_slides)  # a TCGA slide's tiles at 128 px, 0.5 um/px
    slide_ids = [f"S{i:04d}" for i in range(n_slides)]
    dim = rows.shape[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npy_dir = tmp / "npy"
        npy_dir.mkdir()
        layouts = _layouts()
        dirs = {name: tmp / f"layout{i}" for i, name in enumerate(layouts)}
        for sid, n in zip(slide_ids, sizes):
            data = _slide_rows(rows, int(n), rng)
            np.save(npy_dir / f"{sid}.npy", data)
            for name, (codec, chunk) in layouts.items():
                path = dirs[name] / arrays.slide_key(sid)
                chunk_rows = len(data) if chunk is None else arrays.chunk_rows_for(len(data), chunk)
                arr = zarr.create_array(store=zarr.storage.LocalStore(str(path)), shape=data.shape,
                                        chunks=(chunk_rows, dim), dtype="float16", compressors=codec,
                                        fill_value=0, zarr_format=3)
                arr[...] = data
        os.sync()  # clean pages, so that posix_fadvise can drop them
        index = BagIndex(slide_ids, [None] * n_slides, np.asarray(sizes, dtype=np.int64), dim, "float16",
                         "", "bench")

        # every reader drops each bag before reading the next (as streamed training does): a
        # reader that kept them would pay fresh page faults that the others' reused memory skips
        def reader(d, how):
            if how == "histstore":  # what training's bag sources call per bag: shape-checked read_array
                one = lambda i: index.read(d, i)  # noqa: E731
            elif how == "zarr":
                one = lambda i: arrays.read_array_via_zarr(d, slide_ids[i])  # noqa: E731
            else:
                def one(i):
                    p = d / arrays.slide_key(slide_ids[i])
                    chunk_reader.read_whole(p, chunk_reader.layout(p), threads=2)

            def read():
                for i in range(n_slides):
                    one(i)
            return read

        def npy_read():
            for sid in slide_ids:
                np.load(npy_dir / f"{sid}.npy")

        reads = _reads()
        fns = {name: reader(dirs[layout], how) for name, (layout, how) in reads.items()} | {"npy": npy_read}
        for fn in fns.values():
            fn()  # warm-up: page cache, imports
        warm = interleaved(fns, repeats)
        where = {name: _files(dirs[layout]) for name, (layout, _) in reads.items()} | {"npy": _files(npy_dir)}
        cold: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(max(1, repeats // 2)):
            for name, fn in fns.items():
                _drop_cache(where[name])
                t0 = time.perf_counter()
                fn()
                cold[name].append(time.perf_counter() - t0)
        sizes_on_disk = {name: sum(f.stat().st_size for f in files) for name, files in where.items()}
    raw = int(sizes.sum()) * dim * 2
    return {"part": "cohort read (real embeddings)", "n_slides": n_slides, "n_tiles": int(sizes.sum()),
            "dim": dim, "bytes": raw, "repeats": repeats, "histstore_codec": histstore_codec(),
            "histstore_chunk_rows": arrays.DEFAULT_CHUNK_ROWS, "before": f"{BEFORE}, through zarr",
            "reads": {name: {"layout": layout, "reader": how} for name, (layout, how) in reads.items()},
            "layouts": {name: {"size_fraction": sizes_on_disk[name] / raw, "warm_s": median(warm[name]),
                               "cold_s": median(cold[name])} for name in fns}}


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

    from histstore.embeddings import arrays

    out, dirs = [], {}
    chunk_rows = arrays.chunk_rows_for(len(data))
    for name, codec in codec_candidates().items():
        d = dirs[name] = root / f"codec{len(dirs)}"
        t0 = time.perf_counter()
        arr = zarr.create_array(store=zarr.storage.LocalStore(str(d)), shape=data.shape,
                                chunks=(chunk_rows, data.shape[1]), dtype=data.dtype, compressors=codec,
                                fill_value=0, zarr_format=3)
        arr[...] = data
        write_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and f.name != "zarr.json")
        out.append({"codec": name, "size_fraction": size / data.nbytes,
                    "write_mb_per_s": data.nbytes / 1e6 / write_s})

    # decode speed of the codec alone, in memory, chunk by chunk (no file system, no zarr)
    chunks = [np.ascontiguousarray(data[i:i + chunk_rows]) for i in range(0, len(data), chunk_rows)]
    decoders = {}
    for name, codec in codec_candidates().items():
        nc = _in_memory(codec)
        if nc is None:
            decoders[name] = lambda: [c.copy() for c in chunks]
        else:
            encoded = [nc.encode(c) for c in chunks]
            decoders[name] = lambda nc=nc, encoded=encoded: [nc.decode(e) for e in encoded]

    fns = {name: (lambda d=d: arrays.read_array(d.parent, d.name)) for name, d in dirs.items()}
    for fn in fns.values():
        assert np.array_equal(fn(), data)  # and a warm-up: page cache, imports
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
    from histstore.embeddings.arrays import chunk_rows_for

    repeats = 5 if quick else 7
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data, about = real_embeddings(Path(tmp), quick)
        make_s = time.perf_counter() - t0
        rows_ = np.concatenate(data)
        cohort = _cohort_read(rows_, quick, repeats)
        cohort.update({"encoder": about["encoder"], "real_rows": int(len(rows_))})
        # one array of all the rows, chunked as histstore chunks: the codec, not per-file overhead
        codecs = _codec_table(rows_, Path(tmp), repeats=5 if quick else 11)
    return [cohort, {"part": "codecs (real embeddings)", **about, "chunk_rows": chunk_rows_for(len(rows_)),
                     "n_tiles": int(len(rows_)), "raw_bytes": int(rows_.nbytes), "make_seconds": make_s,
                     "codecs": codecs}]


def rows(results: list[dict]) -> list[Row]:
    r, c = results
    gb = r["bytes"] / 1e9
    lay = r["layouts"]
    ours, npy, via_zarr = lay["histstore"], lay["npy"], lay["histstore, through zarr"]
    by = {x["codec"]: x for x in c["codecs"]}
    lz4, zstd = by[PREVIOUS], by["zstd-3"]
    what = (f"{r['n_slides']} slides, {r['n_tiles']:,} x {r['dim']} f16 from {r['encoder']}'s rows "
            f"(each slide a run of {r['real_rows']:,} real rows)")
    return [Row("bags: read a cohort, warm cache",
                f"histstore ({r['histstore_codec']}, read_array) {ours['warm_s']:.3f} s "
                f"({gb / ours['warm_s']:.2f} GB/s), {what}",
                f"raw .npy {npy['warm_s']:.3f} s ({gb / npy['warm_s']:.2f} GB/s)",
                npy["warm_s"] / ours["warm_s"], "npy time / histstore time (target >= 0.5)"),
            Row("bags: read a cohort, cold cache",
                f"histstore {ours['cold_s']:.3f} s ({gb / ours['cold_s']:.2f} GB/s)",
                f"raw .npy {npy['cold_s']:.3f} s ({gb / npy['cold_s']:.2f} GB/s)",
                npy["cold_s"] / ours["cold_s"], "npy time / histstore time"),
            Row("bags: size on disk", f"histstore {ours['size_fraction']:.3f} of the raw bytes",
                f".npy {npy['size_fraction']:.3f}", npy["size_fraction"] / ours["size_fraction"],
                "npy size / histstore size (target >= 1)"),
            Row("bags: read a cohort, warm cache, against histstore before",
                f"histstore {ours['warm_s']:.3f} s", f"{r['before']} {lay[r['before']]['warm_s']:.3f} s",
                lay[r["before"]]["warm_s"] / ours["warm_s"], "time before / histstore time"),
            Row("bags: histstore's chunk reader against zarr's read path, warm",
                f"read_array {ours['warm_s']:.3f} s", f"the same files through zarr {via_zarr['warm_s']:.3f} s",
                via_zarr["warm_s"] / ours["warm_s"], "zarr time / histstore reader time"),
            Row("bags: codec decode speed, real embeddings",
                f"blosc lz4 + bitshuffle: {lz4['decode_gb_per_s']:.2f} GB/s in memory, "
                f"{lz4['size_fraction']:.3f} of raw",
                f"zstd level 3: {zstd['decode_gb_per_s']:.2f} GB/s, {zstd['size_fraction']:.3f} of raw",
                lz4["decode_gb_per_s"] / zstd["decode_gb_per_s"], "lz4 bitshuffle decode speed / zstd's")]


def details(results: list[dict]) -> list[str]:
    r, c = results
    gb = r["bytes"] / 1e9
    out = [f"Cohort read by layout ({r['n_slides']} slides, {r['n_tiles']:,} x {r['dim']} f16, "
           f"{gb:.2f} GB raw; warm: median of {r['repeats']} interleaved reads; cold: every file dropped "
           "from the page cache first; one read per slide, as training reads; histstore writes "
           f"{r['histstore_codec']} in chunks of at most {r['histstore_chunk_rows']:,} rows; reader: "
           "read_array = histstore's direct chunk reader, zarr = zarr's read path, as histstore read "
           "before):", "",
           "| layout | reader | size / raw | warm s | warm GB/s | cold s | cold GB/s | npy warm time / this |",
           "|---|---|---|---|---|---|---|---|"]
    npy_warm = r["layouts"]["npy"]["warm_s"]
    how = {k: {"histstore": "read_array", "zarr": "zarr", "2 threads": "read_array, 2 threads"}[v["reader"]]
           for k, v in r["reads"].items()} | {"npy": "np.load"}
    out += [f"| {k} | {how[k]} | {v['size_fraction']:.3f} | {v['warm_s']:.3f} | {gb / v['warm_s']:.2f} "
            f"| {v['cold_s']:.3f} | {gb / v['cold_s']:.2f} | {npy_warm / v['warm_s']:.2f} |"
            for k, v in r["layouts"].items()]
    out += ["", f"Codecs on real embeddings ({c['n_tiles']:,} tiles x {c['dim']}, float16, "
            f"{c['raw_bytes'] / 1e6:.1f} MB raw, one array in chunks of {c['chunk_rows']:,} rows, encoder "
            f"{c['encoder']}). Read: the whole array through read_array, file open included; decode: the "
            "codec alone on the chunks in memory; both medians of interleaved repeats.", "",
            "| codec | size / raw | write MB/s | read GB/s | decode GB/s |", "|---|---|---|---|---|"]
    out += [f"| {x['codec']} | {x['size_fraction']:.3f} | {x['write_mb_per_s']:.0f} | {x['read_gb_per_s']:.2f} "
            f"| {x['decode_gb_per_s']:.2f} |" for x in c["codecs"]]
    return out


if __name__ == "__main__":
    main(run, rows)
