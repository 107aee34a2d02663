"""The GPU check (issue 14): histstore's CUDA paths on one GPU, in one run of under 8 minutes.

    bash benchmarks/gpu_check.sh            # on a machine with a GPU (writes the results)
    bash benchmarks/gpu_check.sh --smoke    # anywhere: a tiny CPU run proving the check works
    python -m benchmarks.bench_gpu [--smoke] # the same, printed only

Four parts, each timed on the GPU (torch.cuda.synchronize around timed regions):
1. embed: `histstore embed` with AMP (bf16 where supported, else fp16) of a synthetic cohort,
   resnet50-layer3, Macenko, 8 pinned-memory tile readers, end to end (tiles read with
   OpenSlide, zarr writes, catalog) against the same model's forward pass alone on ready
   device tensors at the same batch and precision: tiles/s and the pipeline / forward ratio.
2. AdCo: 200 training steps of HistCode's model (resnet50-layer3, 128 px, batch 256, bank
   318,193, shuffle BN over 8 groups, AMP; fp16 runs through a GradScaler) on random tiles
   held in pinned memory: img/s (median of the logging windows after the first) and the
   peak GPU memory allocated.
3. MIL: benchmarks.bench_mil with the bags resident on the device (200 bags, 2 epochs).
4. `histstore pretrain --nproc-per-node 1`: the data-parallel path through torch.distributed's
   elastic launcher with NCCL, DistributedDataParallel and cross-rank shuffle BN on one GPU.

Without a GPU (or with --smoke) every part runs a tiny version on the CPU (gloo for part 4)
and the table says so: those figures only show that the check runs. No GPU has run this
check yet; the project's machines have none.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row

ARCH = "resnet50-layer3"
HISTCODE_BANK = 318193


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _embed(dev, smoke: bool, tmp: Path) -> tuple[dict, object]:
    import torch

    from histstore.devices import resolve_amp
    from histstore.embed import embed
    from histstore.encoders.backbones import build_backbone, preprocess
    from histstore.ingest import ingest
    from histstore.store import Store
    from histstore.wsi.synth import synth_cohort
    from histstore.wsi.tiling import TilingSpec

    batch = 8 if smoke else 256
    cohort = synth_cohort(tmp / "slides", n_slides=2 if smoke else 16, seed=3,
                          size=(1024, 1024) if smoke else (2048, 2048))
    store, _ = Store.init(tmp / "store")
    ingest(store, cohort.manifest, TilingSpec(), cohort="gpu", workers=2 if smoke else 8, show_progress=False)
    t0 = time.perf_counter()
    rep = embed(store, ARCH, "gpu", allow_random=True, stain_norm="macenko", batch_size=batch, device=str(dev),
                workers=0 if smoke else 8, precision="auto", show_progress=False)
    pipeline_s = time.perf_counter() - t0
    # forward only: the same model, batch and precision on ready, preprocessed device tensors
    torch.manual_seed(0)
    model, _ = build_backbone(ARCH, None, allow_random=True)
    model = model.eval().to(dev, memory_format=torch.channels_last)
    amp = resolve_amp("auto", dev)
    x = preprocess(torch.randint(0, 255, (batch, 128, 128, 3), dtype=torch.uint8), device=dev)
    n_batches = max(1, rep.n_tiles // batch)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        model(x)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            model(x).float().cpu()
        _sync(dev)
        forward_s = time.perf_counter() - t0
    return {"part": "embed", "arch": ARCH, "n_tiles": rep.n_tiles, "batch_size": batch, "precision": rep.precision,
            "pipeline_tiles_per_s": rep.n_tiles / pipeline_s, "forward_tiles_per_s": n_batches * batch / forward_s,
            "seconds": round(pipeline_s + forward_s, 1)}, store


def _adco(dev, smoke: bool, tmp: Path) -> dict:
    import numpy as np
    import torch

    from histstore.devices import resolve_amp
    from histstore.encoders.adco import AdCo, AdCoConfig
    from histstore.encoders.trainer import PretrainConfig, pretrain_loop

    batch, steps = (8, 2) if smoke else (256, 200)
    bank = 64 if smoke else HISTCODE_BANK
    size = 32 if smoke else 128
    torch.manual_seed(0)
    model = AdCo(AdCoConfig(arch=ARCH, bank_size=bank, bn_splits=2 if smoke else 8))
    pool = torch.randint(0, 256, (4 * batch, size, size, 3), dtype=torch.uint8)
    if dev.type == "cuda":
        pool = pool.pin_memory()  # so the per-step host -> device copy is asynchronous

    def batches(epoch, skip):
        for i in range(skip, 4):
            yield pool[i * batch:(i + 1) * batch]

    log_every = 1 if smoke else 20
    cfg = PretrainConfig(steps=steps, lr=0.03, amp="auto", checkpoint_every=10**9,
                         bank_init_max_batches=1 if smoke else 8, seed=0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    hist = pretrain_loop(model, batches, cfg, device=dev, checkpoint_path=tmp / "adco.ckpt", log_every=log_every)
    seconds = time.perf_counter() - t0
    speeds = [h["img_per_s"] for h in hist[1:]] or [h["img_per_s"] for h in hist]
    amp = resolve_amp("auto", dev)
    return {"part": "adco", "arch": ARCH, "steps": steps, "batch_size": batch, "tile_px": size, "bank": bank,
            "precision": str(amp).replace("torch.", "") if amp else "fp32",
            "img_per_s": float(np.median(speeds)), "final_loss": hist[-1]["loss"],
            "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
            "seconds": round(seconds, 1)}


def _mil(dev, smoke: bool) -> dict:
    from benchmarks.bench_mil import run as mil_run

    t0 = time.perf_counter()
    res = mil_run(quick=smoke, device=str(dev), n_bags=4 if smoke else 200, epochs=1 if smoke else 2)
    return {"part": "mil", "variants": res, "seconds": round(time.perf_counter() - t0, 1)}


def _pretrain_launched(dev, smoke: bool, store) -> dict:
    from histstore.pretrain import PretrainSettings, pretrain

    s = PretrainSettings(cohort="gpu", method="adco", arch=ARCH, steps=2 if smoke else 30,
                         batch_size=8 if smoke else 128, device=str(dev), amp="auto", log_every=1 if smoke else 10,
                         checkpoint_every=1000, nproc_per_node=1, workers=0 if smoke else 8)
    t0 = time.perf_counter()
    rep = pretrain(store, s, show_progress=False)
    return {"part": "pretrain", "world_size": rep.world_size, "steps": rep.steps, "batch_size": s.batch_size,
            "img_per_s": rep.img_per_s, "backend": "nccl" if dev.type == "cuda" else "gloo",
            "seconds": round(time.perf_counter() - t0, 1)}


def run(quick: bool = False, smoke: bool | None = None) -> list[dict]:
    """All four parts; without a GPU (or smoke=True) their tiny CPU versions."""
    import torch

    gpu = torch.cuda.is_available()
    smoke = (not gpu) if smoke is None else smoke
    dev = torch.device("cuda" if gpu and not smoke else "cpu")
    head = {"part": "setup", "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
            "smoke": smoke, "torch": torch.__version__,
            "bf16": bool(gpu and torch.cuda.is_bf16_supported())}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        embed_part, store = _embed(dev, smoke, tmp)
        parts = [head, embed_part, _adco(dev, smoke, tmp), _mil(dev, smoke), _pretrain_launched(dev, smoke, store)]
    head["seconds"] = round(time.perf_counter() - t0, 1)
    return parts


def rows(results: list[dict]) -> list[Row]:
    by = {r["part"]: r for r in results}
    head = by["setup"]
    where = head["device"] if not head["smoke"] else "smoke run on CPU, not GPU figures"
    out = []
    e = by["embed"]
    out.append(Row(f"gpu embed ({where})",
                   f"{e['pipeline_tiles_per_s']:.0f} tiles/s end to end ({e['arch']}, {e['precision']}, batch "
                   f"{e['batch_size']}, {e['n_tiles']} tiles, Macenko, zarr + catalog)",
                   f"forward only {e['forward_tiles_per_s']:.0f} tiles/s",
                   e["pipeline_tiles_per_s"] / e["forward_tiles_per_s"], "pipeline / forward-only"))
    a = by["adco"]
    mem = f", peak {a['peak_gib']:.1f} GiB" if a.get("peak_gib") is not None else ""
    out.append(Row(f"gpu AdCo steps ({where})",
                   f"{a['img_per_s']:.0f} img/s{mem} ({a['steps']} steps, {a['arch']}, batch {a['batch_size']}, "
                   f"{a['tile_px']} px, bank {a['bank']:,}, {a['precision']})", "-", None, "figures only"))
    variants = {v["variant"]: v for v in by["mil"]["variants"]}
    plain = variants["plain/host"]["seconds_per_epoch"]
    for name, v in variants.items():
        if name.startswith("trainer/"):
            out.append(Row(f"gpu MIL epoch {name} ({where})",
                           f"{v['seconds_per_epoch']:.2f} s/epoch, {v['n_bags']} bags on {v['device']}",
                           f"plain one-bag-per-step loop {plain:.2f} s/epoch", plain / v["seconds_per_epoch"],
                           "plain / histstore time"))
    p = by["pretrain"]
    out.append(Row(f"gpu pretrain --nproc-per-node 1 ({where})",
                   f"{p['img_per_s']:.0f} img/s over {p['steps']} steps, batch {p['batch_size']}, "
                   f"{p['backend']}, {p['seconds']:.0f} s with the launch", "-", None, "figures only"))
    return out


def details(results: list[dict]) -> list[str]:
    head = next(r for r in results if r["part"] == "setup")
    return [f"Device: {head['device']}; smoke: {head['smoke']}; torch {head['torch']}; "
            f"whole check {head.get('seconds', 0):.0f} s."]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run: proves the check works")
    ap.add_argument("--quick", action="store_true", help="(the same as the full check)")
    args = ap.parse_args()
    res = run(args.quick, smoke=True if args.smoke else None)
    for r in rows(res):
        print(f"| {r.benchmark} | {r.measured} | {r.versus} | {'-' if r.ratio is None else f'{r.ratio:.2f}'} | "
              f"{r.meaning} |")
    print(*details(res), sep="\n")
    print(json.dumps(res, indent=1, default=str))
