"""Embedding throughput: `histstore embed` end to end (read tiles with OpenSlide, Macenko
stain normalisation, the frozen encoder, zarr writes and catalog registration) versus the
same encoder's forward pass alone on ready tensors, same batch size and precision, in the same
run. Issue target: the pipeline reaches >= 0.7 of forward-only on a 2-core machine.

    python -m benchmarks.bench_embed [--quick]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row


def run(quick: bool = False, arch: str = "resnet18", batch_size: int = 64, stain_norm: str = "macenko",
        workers: int | None = None) -> list[dict]:
    import numpy as np
    import torch

    from histstore.embed import embed
    from histstore.encoders.backbones import build_backbone, preprocess
    from histstore.encoders.trainer import resolve_amp
    from histstore.ingest import ingest
    from histstore.store import Store
    from histstore.wsi.synth import synth_cohort
    from histstore.wsi.tiling import TilingSpec

    import histstore.embeddings.dataset  # noqa: F401  (imports are not the pipeline's cost:
    import histstore.embeddings.stain  # noqa: F401   a real job embeds for minutes to hours)

    n_slides = 4 if quick else 16
    with tempfile.TemporaryDirectory() as tmp:
        cohort = synth_cohort(Path(tmp) / "slides", n_slides=n_slides, seed=3)
        store, _ = Store.init(Path(tmp) / "store")
        ingest(store, cohort.manifest, TilingSpec(), cohort="bench", workers=1, show_progress=False)
        t0 = time.perf_counter()
        rep = embed(store, arch, "bench", allow_random=True, stain_norm=stain_norm, batch_size=batch_size,
                    workers=workers, show_progress=False)
        pipeline_s = time.perf_counter() - t0
        n = rep.n_tiles
    # forward only: ready, preprocessed tensors; same model, batch, precision, threads
    torch.manual_seed(0)
    model, _ = build_backbone(arch, None, allow_random=True)
    model = model.eval().to(memory_format=torch.channels_last)
    amp = resolve_amp("auto", torch.device("cpu"))
    x = preprocess(torch.randint(0, 255, (batch_size, 128, 128, 3), dtype=torch.uint8))
    n_batches = max(1, n // batch_size)
    with torch.inference_mode(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        model(x)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            model(x).float().numpy()
        forward_s = time.perf_counter() - t0
    return [{"arch": arch, "n_tiles": n, "batch_size": batch_size, "stain_norm": stain_norm,
             "precision": rep.precision, "threads": torch.get_num_threads(),
             "pipeline_tiles_per_s": n / pipeline_s, "embed_reported_tiles_per_s": rep.tiles_per_second,
             "forward_tiles_per_s": n_batches * batch_size / forward_s}]


def rows(results: list[dict]) -> list[Row]:
    r = results[0]
    return [Row("embed: end to end", f"{r['pipeline_tiles_per_s']:.0f} tiles/s ({r['arch']}, 128 px, "
                f"{r['stain_norm']}, {r['precision']}, {r['n_tiles']} tiles incl. zarr + catalog)",
                f"forward only on ready tensors {r['forward_tiles_per_s']:.0f} tiles/s",
                r["pipeline_tiles_per_s"] / r["forward_tiles_per_s"], "pipeline / forward-only (target >= 0.7)")]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--stain-norm", default="macenko")
    p.add_argument("--workers", type=int)
    a = p.parse_args()
    res = run(a.quick, stain_norm=a.stain_norm, workers=a.workers)
    print(json.dumps(res, indent=1))
    for row in rows(res):
        print(row)
