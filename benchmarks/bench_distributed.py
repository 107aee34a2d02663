"""ingest and embed on Dask distributed (--cluster) against the in-process path, the catalog
writer's ceiling, and a projection to larger clusters.

Measured:
1. Throughput of `ingest` and `embed` (resnet18, 128 px tiles, per-slide Macenko, random
   weights) on a synthetic cohort: `--cluster none` (today's path: ingest's spawn pool of
   min(4, CPUs) processes, embed in this process with all torch threads) against a Dask
   LocalCluster of 1 and of 2 worker processes (cores shared out: torch threads = CPUs /
   workers). The cluster is started once per size and its workers import what the tasks run
   (as on a long job; each worker builds the encoder on its first slide), then each configuration is run
   `repeats` times in turn (ABAB...), median reported. Starting a LocalCluster is timed alone.
2. The catalog writer's ceiling: the real registration code (ingest's `_register_success`
   in `store.commit`, embed's `_register_result`: publish + embedding_arrays + slide_stain +
   progress) for slides of N tiles (N = 10,000 and 30,000; --quick: 10,000), with fake inputs
   (a ProcessedSlide whose grid is replaced by N tiles; arrays created under .partial/ with
   their shape but no data written, as a worker would leave them). Slides registered per
   second = how fast one writer can take results.

Projected (printed as such, computed from the figures above, nothing else): how many slides/s
100 CPU nodes like this machine would hand the writer, and how fast each of 8 GPUs would have
to embed before the one writer, not the GPUs, limits the job.

    python -m benchmarks.bench_distributed [--quick]
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Row, interleaved, main, median

ARCH = "resnet18"
BATCH = 64


def _cluster(n: int):
    """A LocalCluster of n processes as histstore starts one (--cluster local), kept running."""
    import logging

    from distributed import Client, LocalCluster

    from histstore.cluster import _local_env

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR, env=_local_env(n))
    client = Client(cluster)
    return cluster, client, time.perf_counter() - t0


def _warm() -> None:
    """Import what ingest and embed tasks run (imports are not the pipeline's cost: a real job
    runs for hours on workers that imported them once)."""
    import histstore.embeddings.slide_embed  # noqa: F401
    import histstore.embeddings.stain  # noqa: F401
    import histstore.wsi.process  # noqa: F401
    import torchvision  # noqa: F401


def _throughput(tmp: Path, quick: bool, repeats: int) -> dict:
    from histstore.embed import embed
    from histstore.ingest import ingest
    from histstore.store import Store
    from histstore.wsi.synth import synth_cohort
    from histstore.wsi.tiling import TilingSpec

    n_slides = 3 if quick else 12
    cohort = synth_cohort(tmp / "slides", n_slides=n_slides, seed=3)
    base, _ = Store.init(tmp / "base")
    ingest(base, cohort.manifest, TilingSpec(), cohort="bench", workers=1, show_progress=False)
    with base.read() as conn:
        n_tiles = conn.exec_driver_sql("SELECT count(*) FROM tiles").scalar()
    copies = iter(range(10 ** 6))

    def fresh_store(template: Path | None) -> Store:
        root = tmp / f"copy{next(copies)}"
        if template is None:
            return Store.init(root)[0]
        shutil.copytree(template, root)
        return Store.open(root)

    def do_ingest(where):
        def call():
            store = fresh_store(None)
            rep = ingest(store, cohort.manifest, TilingSpec(), cohort="bench", cluster=where, show_progress=False)
            assert rep.count("ingested") == n_slides, rep.outcomes
            shutil.rmtree(store.root)
        return call

    def do_embed(where):
        def call():
            store = fresh_store(base.root)
            rep = embed(store, ARCH, "bench", allow_random=True, batch_size=BATCH, cluster=where,
                        show_progress=False)
            assert rep.n_embedded == n_slides
            shutil.rmtree(store.root)
        return call

    out = {"n_slides": n_slides, "n_tiles": int(n_tiles), "repeats": repeats}
    clusters = {}
    try:
        for n in (1, 2):
            cluster, client, start_s = _cluster(n)
            clusters[n] = (cluster, client)
            out[f"cluster_start_{n}_s"] = start_s
            client.run(_warm)  # workers import what the tasks use, as in a long job
        _warm()
        for job, fn in (("ingest", do_ingest), ("embed", do_embed)):
            calls = {"none": fn("none")}
            calls.update({f"local{n}": fn(clusters[n][1].scheduler.address) for n in clusters})
            times = interleaved(calls, repeats)
            out[job] = {k: median(v) for k, v in times.items()}
    finally:
        for cluster, client in clusters.values():
            client.close()
            cluster.close()
    return out


def _writer_ceiling(tmp: Path, n_tiles: int, n_slides: int) -> dict:
    """Slides/s through the real registration code, for slides of n_tiles tiles."""
    import zarr

    import histstore.embed as embed_mod
    import histstore.ingest as ingest_mod
    from histstore.embeddings import arrays
    from histstore.embeddings.sets import get_or_create_set
    from histstore.embeddings.slide_embed import SlideEmbedResult
    from histstore.embeddings.slide_stain import StainRecord
    from histstore.runs import create_run
    from histstore.sources import SlideSource
    from histstore.store import Store
    from histstore.wsi.process import process_slide
    from histstore.wsi.synth import synth_cohort
    from histstore.wsi.tiling import TilingSpec

    spec = TilingSpec()
    key = ingest_mod.tiling_key(spec)
    cohort = synth_cohort(tmp / f"one{n_tiles}", n_slides=1, seed=5)
    result = process_slide(str(cohort.slides[0].path), spec)
    side = int(np.ceil(np.sqrt(n_tiles)))
    yy, xx = np.divmod(np.arange(n_tiles), side)
    result.grid = dataclasses.replace(
        result.grid, idx=np.arange(n_tiles, dtype=np.int32), x=(xx * result.grid.size_l0).astype(np.int64),
        y=(yy * result.grid.size_l0).astype(np.int64), tissue_fraction=np.ones(n_tiles, np.float32))
    store, _ = Store.init(tmp / f"writer{n_tiles}")
    qc_rel = ingest_mod._write_qc(store, "qc", key, result.qc_png)
    sources = [SlideSource(path=Path(cohort.slides[0].path), slide_id=f"S{i:05d}", case_id=f"C{i:05d}")
               for i in range(n_slides)]
    t0 = time.perf_counter()
    for src in sources:
        with store.commit(f"slide {src.slide_id}") as conn:
            ingest_mod._current(conn, src.slide_id, key)
            ingest_mod._register_success(conn, src, result, spec, key, False, qc_rel)
    ingest_s = time.perf_counter() - t0

    dim = 512
    with store.commit("set") as conn:
        info, _ = get_or_create_set(conn, name="bench", kind="computed", settings={"bench": n_tiles}, dim=dim,
                                    dtype="float16", tiling_key=key)
        run_id = create_run(conn, kind="embed", settings={}, seed=0, embedding_set_id=info.embedding_set_id,
                            progress_total=n_slides, progress_unit="slide")
        tilings = dict(conn.exec_driver_sql("SELECT slide_id, tiling_id FROM tilings").all())
    set_dir = info.directory(store)
    (set_dir / arrays.PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
    results = []
    for src in sources:  # what a worker leaves: the array under .partial/ (no data: not timed)
        tmp_path = set_dir / arrays.PARTIAL_DIR / f"{arrays.slide_key(src.slide_id)}.{arrays.partial_token()}"
        zarr.create_array(store=zarr.storage.LocalStore(str(tmp_path)), shape=(n_tiles, dim),
                          chunks=(arrays.DEFAULT_CHUNK_ROWS, dim), dtype="float16", zarr_format=3)
        stain = StainRecord(src.slide_id, "macenko", [[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]], [1.9, 1.0],
                            128, n_tiles, 0, None)
        results.append(SlideEmbedResult(src.slide_id, str(tmp_path), n_tiles, "0" * 32, stain, 0.0, "bench"))
    warnings: list[str] = []
    t0 = time.perf_counter()
    for k, res in enumerate(results):
        embed_mod._register_result(store, info, res, tilings[res.slide_id], run_id, k + 1, warnings)
    embed_s = time.perf_counter() - t0
    shutil.rmtree(store.root)
    return {"n_tiles": n_tiles, "n_slides": n_slides, "ingest_slides_per_s": n_slides / ingest_s,
            "embed_slides_per_s": n_slides / embed_s}


def run(quick: bool = False, repeats: int | None = None) -> list[dict]:
    repeats = repeats or (1 if quick else 3)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        thr = _throughput(tmp / "thr", quick, repeats)
        writer = [_writer_ceiling(tmp / f"w{n}", n, 3 if quick else 20)
                  for n in ((10_000,) if quick else (10_000, 30_000))]
    return [{"throughput": thr, "writer": writer}]


def _projection(r: dict) -> dict:
    """From the measured figures only: see the module docstring."""
    thr, w10 = r["throughput"], r["writer"][0]
    n, tiles = thr["n_slides"], thr["n_tiles"]
    node_embed_tps = tiles / thr["embed"]["local2"]       # one 2-core node, 2 workers
    node_ingest_sps = n / thr["ingest"]["local2"]
    nodes = 100
    demand_embed = nodes * node_embed_tps / w10["n_tiles"]  # slides/s of 10k tiles
    demand_ingest = nodes * node_ingest_sps
    return {"node_embed_tiles_per_s": node_embed_tps, "nodes": nodes,
            "embed_demand_slides_per_s": demand_embed, "ingest_demand_slides_per_s": demand_ingest,
            "gpu_tiles_per_s_to_saturate_writer": w10["embed_slides_per_s"] * w10["n_tiles"] / 8}


def rows(results: list[dict]) -> list[Row]:
    r = results[0]
    thr = r["throughput"]
    n, tiles = thr["n_slides"], thr["n_tiles"]
    out = []
    for job in ("ingest", "embed"):
        t = thr[job]
        for k in (1, 2):
            out.append(Row(
                f"{job}: Dask LocalCluster, {k} worker{'s' if k > 1 else ''}",
                f"{n / t[f'local{k}']:.2f} slides/s, {tiles / t[f'local{k}']:.0f} tiles/s ({n} slides, {tiles:,} tiles; "
                f"cluster warm)",
                f"--cluster none {n / t['none']:.2f} slides/s, {tiles / t['none']:.0f} tiles/s",
                t["none"] / t[f"local{k}"], "cluster throughput / in-process throughput (measured)"))
    out.append(Row("LocalCluster start", f"1 worker {thr['cluster_start_1_s']:.1f} s, 2 workers "
                   f"{thr['cluster_start_2_s']:.1f} s (before the first task; workers then import torch)",
                   "-", None, "measured, paid once per command with --cluster local"))
    for w in r["writer"]:
        out.append(Row(f"catalog writer ceiling, {w['n_tiles']:,} tiles/slide",
                       f"ingest registration {w['ingest_slides_per_s']:.1f} slides/s; embed registration "
                       f"{w['embed_slides_per_s']:.1f} slides/s ({w['n_slides']} slides, real register code, "
                       "fake inputs)", "-", None, "measured: the most one writer can take"))
    p = _projection(r)
    w10 = r["writer"][0]
    out.append(Row(
        f"projection: {p['nodes']} CPU nodes like this one (2 workers each)",
        f"embed would hand the writer {p['embed_demand_slides_per_s']:.2f} slides/s of 10k tiles (ceiling "
        f"{w10['embed_slides_per_s']:.1f}); ingest {p['ingest_demand_slides_per_s']:.1f} slides/s of this "
        f"cohort's size (ceiling at 10k tiles {w10['ingest_slides_per_s']:.1f})", "-", None,
        "projected from the measured rows above (linear in nodes)"))
    out.append(Row(
        "projection: 8 GPUs",
        f"the writer limits embedding only beyond {p['gpu_tiles_per_s_to_saturate_writer']:,.0f} tiles/s per GPU "
        f"(10k-tile slides: ceiling {w10['embed_slides_per_s']:.1f} slides/s shared by 8 workers)", "-", None,
        "projected from the measured writer ceiling; no GPU rate measured here"))
    return out


if __name__ == "__main__":
    main(run, rows)
