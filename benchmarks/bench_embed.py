"""Embedding throughput: `histstore embed` end to end against the encoder's forward pass alone
and against the loop a user would write, with a profile of where the time goes.

Setup (not timed): a synthetic cohort ingested at 128 px, 0.5 um/px, of slides large enough that
per-slide costs (the stain fit's sample of up to 128 tiles, array creation, catalog rows) weigh
what they weigh on real slides: full: 4 slides of 8192 x 8192 px (~2,300 tissue tiles each; a
TCGA diagnostic slide has 10,000-30,000 at these settings, so this still overstates them), quick:
2 slides of 4096 x 4096 px (~550 each). The 2048 px slides used before (~160 tiles) made the
stain fit read nearly every tile twice.
Candidates, all on the same tiles, batch 64, the same precision (bf16 autocast where the CPU
has it) and torch threads, taken in turn (ABAB...) `repeats` times; medians reported:

  forward        the encoder's forward pass alone on a ready, preprocessed batch, as many
                 tiles (the ceiling): embed's own inference model (BatchNorm folded into the
                 convolutions, channels-last, conv weights in the autocast dtype), so the
                 ratio measures the pipeline around it
  forward/unfolded  the encoder as built: BatchNorm layers kept, float32 weights that autocast
                 casts at every call (what embed's inference model saves)
  histstore      `embed()` with Macenko (one fit per slide, the default), end to end: read
                 tiles with OpenSlide, fit each slide's stains on a sample of its tiles,
                 normalise, encode, zarr arrays, catalog rows (a fresh copy of the ingested
                 store each call)
  histstore/none the same with --stain-norm none
  plain loop     what a user writes: OpenSlide read_region in the main process, a torchvision
                 ResNet-18 (fc removed; channels_last + the same autocast), np.save per slide;
                 no stain normalisation
  processes      `embed()` with Macenko and 2 reader processes (--workers 2), the old CPU default
  in turn        `embed()` with Macenko, each batch read (and normalised) on the model's
                 thread when the model asks for it, instead of on the default's niced
                 background thread beside the model

Profile: each stage alone on the same tiles, one after the other (read, Macenko per tile for
comparison, Macenko per slide: fits and applying them, preprocess, forward, zarr writes), the zarr writer against writing each block straight into zarr on a
10,000-row slide, and the top cProfile entries of one `embed()` call reading in turn (every
stage on the profiled thread). Figures on a shared machine are noisy.

    python -m benchmarks.bench_embed [--quick] [--repeats N]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Row, interleaved, median, report

ARCH, BATCH = "resnet18", 64


def _plain_loop(slides, out_dir: Path, amp) -> None:
    """Main-process OpenSlide reads + a torchvision model: the user's loop."""
    import openslide
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Identity()
    model = model.eval().to(memory_format=torch.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def encode(batch):
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div(255)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            return model(x).float().numpy()

    for s in slides:
        slide = openslide.OpenSlide(s.path)
        size, level = s.read_spec["read_size"], s.read_spec["read_level"]
        feats, batch = [], []
        for x, y in zip(s.x.tolist(), s.y.tolist()):
            batch.append(np.asarray(slide.read_region((x, y), level, (size, size)).convert("RGB")))
            if len(batch) == BATCH:
                feats.append(encode(batch))
                batch = []
        if batch:
            feats.append(encode(batch))
        slide.close()
        np.save(out_dir / f"{s.slide_id}.npy", np.concatenate(feats).astype(np.float16))


def _stages(slides, model, amp) -> dict:
    """Each stage alone over all tiles, batch by batch, in this thread: [[stage, seconds], ...]."""
    import torch

    from histstore.embeddings import arrays
    from histstore.embeddings.dataset import TileDataset
    from histstore.embeddings.slide_stain import fit_slide_stain
    from histstore.embeddings.stain import apply_stain_fit, macenko_normalize
    from histstore.embeddings.stain_settings import StainSettings
    from histstore.encoders.backbones import preprocess

    ds = TileDataset(slides)
    n, t = len(ds), {}
    size = int(slides[0].read_spec["tile_size"])
    batches = []
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        b = np.empty((min(BATCH, n - start), size, size, 3), np.uint8)
        ds.read_into(b, start)
        batches.append(torch.from_numpy(b))
    t["read (OpenSlide, 1 thread)"] = time.perf_counter() - t0
    ds.close()
    t0 = time.perf_counter()
    [macenko_normalize(b) for b in batches]
    t["Macenko per tile (macenko-tile; not in the pipeline below)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fits = [fit_slide_stain(s, StainSettings()).fit for s in slides]
    t["Macenko per slide: fits (each reads its sample of up to 128 tiles)"] = time.perf_counter() - t0
    # which slide each batch row belongs to; apply each slide's fit to its rows
    owner = np.searchsorted(ds.offsets, np.arange(n), side="right") - 1
    t0 = time.perf_counter()
    normed = []
    for start, b in zip(range(0, n, BATCH), batches):
        rows = owner[start:start + len(b)]
        out = b.clone()
        for s in np.unique(rows):
            part = np.flatnonzero(rows == s)  # consecutive rows, as in the pipeline
            part = slice(int(part[0]), int(part[-1]) + 1)
            out[part] = apply_stain_fit(b[part], fits[s].stain_matrix, fits[s].max_c)[0]
        normed.append(out)
    batches = normed
    t["Macenko per slide: apply the fits"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    xs = [preprocess(b) for b in batches]
    t["preprocess (uint8 -> normalised float)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        outs = [model(x).float().numpy() for x in xs]
    t["forward"] = time.perf_counter() - t0
    out = np.concatenate(outs)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for s, lo in zip(slides, ds.offsets[:-1]):
            with arrays.ArrayWriter(Path(tmp), s.slide_id, len(s), out.shape[1]) as w:
                for i in range(lo, lo + len(s), BATCH):
                    w.write(out[i:min(i + BATCH, lo + len(s))])
                w.commit()
        t["zarr writes"] = time.perf_counter() - t0
    return [[k, v] for k, v in t.items()]  # a list: the order of the stages survives JSON


def _writer_blocks(n_rows: int = 10_000, dim: int = 512) -> dict:
    """ArrayWriter against writing each 64-row block straight into the zarr array (seconds)."""
    import zarr

    from histstore.embeddings import arrays

    data = np.random.default_rng(0).standard_normal((n_rows, dim)).astype(np.float16)
    with tempfile.TemporaryDirectory() as tmp:
        def writer():
            with arrays.ArrayWriter(Path(tmp), "w", n_rows, dim) as w:
                for i in range(0, n_rows, BATCH):
                    w.write(data[i:i + BATCH])
                w.commit()

        def straight():
            shutil.rmtree(Path(tmp) / "z", ignore_errors=True)
            z = zarr.create_array(store=zarr.storage.LocalStore(str(Path(tmp) / "z")), shape=data.shape,
                                  chunks=(arrays.chunk_rows_for(n_rows), dim), dtype="float16",
                                  compressors=arrays.COMPRESSOR, fill_value=0, zarr_format=3)
            for i in range(0, n_rows, BATCH):
                z[i:i + BATCH] = data[i:i + BATCH]

        times = interleaved({"writer": writer, "straight": straight}, 3)
    return {"rows": n_rows, "dim": dim, "writer_s": median(times["writer"]), "straight_s": median(times["straight"])}


def _profile(fn, top: int = 12) -> list[list]:
    """Main thread's top cProfile entries (by own time) of one call: [function, calls, seconds]."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(fn)
    stats = pstats.Stats(prof).stats
    entries = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    return [[_short(pstats.func_std_string(func)), int(v[1]), round(v[2], 3)] for func, v in entries]


def _short(name: str) -> str:
    """A profile entry without this machine's paths: site-packages/... or the repository's."""
    root = str(Path(__file__).resolve().parent.parent) + "/"
    if "site-packages/" in name:
        return name[name.index("site-packages/") + len("site-packages/"):]
    return name.replace(root, "")


def run(quick: bool = False, repeats: int | None = None) -> list[dict]:
    import torch

    from histstore.embed import embed
    from histstore.embeddings.dataset import load_slide_tiles
    from histstore.embeddings.slide_embed import prepare_model
    from histstore.encoders.backbones import build_backbone, preprocess
    from histstore.devices import resolve_amp
    from histstore.ingest import ingest
    from histstore.store import Store
    from histstore.wsi.synth import synth_cohort
    from histstore.wsi.tiling import TilingSpec

    import histstore.embeddings.dataset  # noqa: F401  (imports are not the pipeline's cost:
    import histstore.embeddings.stain  # noqa: F401   a real job embeds for minutes to hours)
    import torchvision  # noqa: F401

    n_slides, side = (2, 4096) if quick else (4, 8192)
    repeats = repeats or (3 if quick else 5)
    amp = resolve_amp("auto", torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cohort = synth_cohort(tmp / "slides", n_slides=n_slides, seed=3, size=(side, side))
        store, _ = Store.init(tmp / "base")
        ingest(store, cohort.manifest, TilingSpec(), cohort="bench", workers=1, show_progress=False)
        with store.read() as conn:
            ids = [r[0] for r in conn.exec_driver_sql("SELECT slide_id FROM cohort_slides ORDER BY 1").all()]
            key = conn.exec_driver_sql("SELECT any_value(settings_key) FROM tilings").scalar()
            slides = load_slide_tiles(conn, ids, key)
        n = sum(len(s) for s in slides)
        copies = iter(range(10 ** 6))
        reports = {}

        def embed_fresh(tag, **kw):
            def call():
                root = tmp / f"copy{next(copies)}"
                shutil.copytree(tmp / "base", root)  # not the pipeline's cost, but small
                t0 = time.perf_counter()
                reports[tag] = embed(Store.open(root), ARCH, "bench", allow_random=True, batch_size=BATCH,
                                     show_progress=False, **kw)
                seconds = time.perf_counter() - t0
                shutil.rmtree(root)
                return seconds
            return call

        torch.manual_seed(0)
        model, _ = build_backbone(ARCH, None, allow_random=True)
        unfolded = model.eval().to(memory_format=torch.channels_last)
        model = prepare_model(model, torch.device("cpu"), amp)  # embed's own inference model
        x = preprocess(torch.randint(0, 255, (BATCH, 128, 128, 3), dtype=torch.uint8))

        def forward_of(net):
            def go():
                with torch.inference_mode(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                    for start in range(0, n, BATCH):
                        net(x[:min(BATCH, n - start)]).float().numpy()
            return go

        forward = forward_of(model)

        def plain():
            out = tmp / "plain"
            out.mkdir(exist_ok=True)
            _plain_loop(slides, out, amp)
            shutil.rmtree(out)

        def in_turn(call):
            def go():
                from histstore.embeddings import slide_embed

                slide_embed.READ_IN_BACKGROUND = False
                try:
                    return call()
                finally:
                    slide_embed.READ_IN_BACKGROUND = True
            return go

        calls = {"forward": forward, "forward/unfolded": forward_of(unfolded), "histstore": embed_fresh("histstore", stain_norm="macenko"),
                 "histstore/none": embed_fresh("histstore/none", stain_norm="none"), "plain loop": plain,
                 "processes": embed_fresh("processes", stain_norm="macenko", workers=2),
                 "in turn": in_turn(embed_fresh("in turn", stain_norm="macenko"))}
        seconds: dict[str, list[float]] = {k: [] for k in calls}

        def timed(name):
            def go():
                s = calls[name]()
                seconds[name].append(s if isinstance(s, float) else None)
            return go

        for fn in calls.values():
            fn()  # warm-up: page cache, oneDNN kernels, first fork
        wall = interleaved({k: timed(k) for k in calls}, repeats)
        # embed_fresh times embed() alone (without the store copy); the others are timed whole
        per_call = {k: [s if s is not None else w for s, w in zip(seconds[k], wall[k])] for k in calls}
        stages = _stages(slides, model, amp)
        profile = _profile(in_turn(embed_fresh("profiled", stain_norm="macenko")))
    precision = reports["histstore"].precision
    return [{"arch": ARCH, "n_slides": n_slides, "slide_px": side, "n_tiles": n, "batch_size": BATCH, "precision": precision,
             "threads": torch.get_num_threads(), "repeats": repeats,
             "candidates": {k: {"median_s": median(v), "all_s": v, "tiles_per_s": n / median(v)}
                            for k, v in per_call.items()},
             "stages_s": stages, "writer_blocks": _writer_blocks(), "profile_main_thread": profile}]


def rows(results: list[dict]) -> list[Row]:
    r = results[0]
    c = {k: v["tiles_per_s"] for k, v in r["candidates"].items()}
    what = (f"{r['arch']}, 128 px, {r['precision']}, batch {r['batch_size']}, {r['n_tiles']:,} tiles "
            f"on {r['n_slides']} slides")
    w = r["writer_blocks"]
    return [
        Row("embed: end to end, Macenko", f"{c['histstore']:.0f} tiles/s ({what}; read, normalise, encode, "
            "zarr, catalog)", f"forward pass alone on ready tensors {c['forward']:.0f} tiles/s",
            c["histstore"] / c["forward"], "pipeline / forward-only (target >= 0.7)"),
        *([Row("embed: inference model", f"forward pass of embed's model (BatchNorm folded into the "
               f"convolutions, their weights stored in the autocast dtype) {c['forward']:.0f} tiles/s",
               f"the encoder as built (BatchNorm layers; float32 weights, cast at every call) "
               f"{c['forward/unfolded']:.0f} tiles/s", c["forward"] / c["forward/unfolded"],
               "embed's model / the encoder as built")] if "forward/unfolded" in c else []),
        Row("embed: no stain normalisation", f"`embed --stain-norm none` {c['histstore/none']:.0f} tiles/s",
            f"plain loop: OpenSlide read_region in the main process + torchvision ResNet-18 "
            f"(channels_last, same autocast), np.save per slide: {c['plain loop']:.0f} tiles/s",
            c["histstore/none"] / c["plain loop"], "histstore / plain loop (target > 1)"),
        Row("embed: tile reader", f"the default, a niced reading thread beside the model: {c['histstore']:.0f} tiles/s",
            f"each batch read in turn with the model: {c['in turn']:.0f} tiles/s; "
            f"2 reader processes (--workers 2): {c['processes']:.0f} tiles/s",
            c["histstore"] / max(c["in turn"], c["processes"]), "default / the faster alternative (all with Macenko)"),
        Row("embed: zarr writer", f"ArrayWriter, {w['rows']:,} x {w['dim']} f16 in {BATCH}-row blocks: "
            f"{w['writer_s']:.2f} s", f"each block written straight into the zarr array: {w['straight_s']:.2f} s",
            w["straight_s"] / w["writer_s"], "straight / ArrayWriter time"),
    ]


def details(results: list[dict]) -> list[str]:
    r = results[0]
    st = r["stages_s"]
    pipeline = r["candidates"]["histstore"]["median_s"]
    turn = r["candidates"]["in turn"]["median_s"]
    out = [f"Where the time goes ({r['n_tiles']:,} tiles; each stage alone, one after the other, "
           f"{r['threads']} torch threads; medians of {r['repeats']} for the candidates):", "",
           "| stage | seconds | tiles/s |", "|---|---|---|"]
    out += [f"| {k} | {v:.2f} | {r['n_tiles'] / v:,.0f} |" for k, v in st]
    out += [f"| sum of the stages | {sum(v for _, v in st):.2f} | |",
            f"| `embed()` end to end, Macenko (the default: a reading thread beside the model) | {pipeline:.2f} | "
            f"{r['n_tiles'] / pipeline:,.0f} |",
            f"| `embed()` end to end, Macenko, each batch read in turn with the model | {turn:.2f} | "
            f"{r['n_tiles'] / turn:,.0f} |", "",
            "One `embed()` call reading in turn (so that every stage runs on the profiled thread), "
            "top entries by own time (cProfile):", "",
            "| function | calls | seconds |", "|---|---|---|"]
    out += [f"| `{f}` | {calls} | {s:.3f} |" for f, calls, s in r["profile_main_thread"]]
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int)
    a = p.parse_args()
    report("embed", run(a.quick, a.repeats))
