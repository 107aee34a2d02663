"""Tile-encoder throughput on the CPU: AdCo training steps and forward-only embedding.

Measured side by side in one run (best of several timed repeats after warm-up; noise on a
shared machine only ever adds time), ResNet-18 by default, batch 32:

  augment     two augmented views of uint8 tiles (histstore.encoders.augment.two_views)
  train/fp32  one AdCo step (augmentation of both views, query forward/backward, key forward,
              SGD, EMA, bank ascent; bank K = 16384), model channels_last, fp32
  train/bf16  the same under bf16 autocast (what amp=auto picks on CPUs with AVX512-BF16/AMX)
  fwd/*       backbone forward on ready tensors, eval + no_grad: fp32 contiguous, fp32
              channels_last, channels_last + bf16 autocast
  macenko     stain normalisation of uint8 tiles (random pixels: the cost does not depend on
              content), stains estimated on histstore's 4,096-pixel subsample and (macenko_fullfit)
              on every pixel

    python -m benchmarks.bench_encoders --quick            # 64 px only, 3 repeats
    python -m benchmarks.bench_encoders --sizes 64,128 --threads 2
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.common import Row, best_of, report


def run(quick: bool = False, *, sizes=(64, 128), arch: str = "resnet18", batch: int = 32,
        threads: int | None = None, bank_size: int = 16384) -> list[dict]:
    from histstore.embeddings.stain import macenko_normalize
    from histstore.encoders.adco import AdCo, AdCoConfig
    from histstore.encoders.augment import BatchAugment, two_views
    from histstore.encoders.backbones import build_backbone

    if threads:
        torch.set_num_threads(threads)
    repeat = 3 if quick else 5
    sizes = sizes[:1] if quick else sizes
    torch.manual_seed(0)
    out = []
    for s in sizes:
        r = {"size": s, "arch": arch, "batch": batch, "threads": torch.get_num_threads()}
        tiles = torch.randint(0, 256, (batch, s, s, 3), dtype=torch.uint8)
        aug, gen = BatchAugment(), torch.Generator().manual_seed(0)

        def views():
            return two_views(tiles, aug, generator=gen)

        views()
        r["augment_s"] = best_of(views, repeat)
        for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
            model = AdCo(AdCoConfig(arch=arch, bank_size=bank_size)).train()
            model.to(memory_format=torch.channels_last)
            opt = torch.optim.SGD(model.encoder_parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)

            def step():
                x1, x2 = views()
                model.training_step(x1, x2, opt, amp_dtype=amp)

            step()
            r[f"train_{name}_s"] = best_of(step, repeat)
        enc, _ = build_backbone(arch, allow_random=True)
        x = torch.randn(batch, 3, s, s)
        with torch.no_grad():
            enc(x)
            r["fwd_fp32_s"] = best_of(lambda: enc(x), repeat)
            enc = enc.to(memory_format=torch.channels_last)
            xl = x.contiguous(memory_format=torch.channels_last)
            enc(xl)
            r["fwd_cl_s"] = best_of(lambda: enc(xl), repeat)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                enc(xl)
                r["fwd_cl_bf16_s"] = best_of(lambda: enc(xl), repeat)
        macenko_normalize(tiles)
        r["macenko_s"] = best_of(lambda: macenko_normalize(tiles), repeat)
        r["macenko_fullfit_s"] = best_of(lambda: macenko_normalize(tiles, max_fit_pixels=s * s), repeat)
        out.append(r)
    return out


def rows(results: list[dict]) -> list[Row]:
    rs = []
    for r in results:
        b, s = r["batch"], r["size"]
        ips = {k[:-2]: b / v for k, v in r.items() if k.endswith("_s")}
        tag = f"{r['arch']} {s}px b{b} {r['threads']}thr"
        rs.append(Row(f"encoders: AdCo step {tag}", f"bf16 autocast {ips['train_bf16']:.1f} img/s",
                      f"fp32 {ips['train_fp32']:.1f} img/s", ips["train_bf16"] / ips["train_fp32"],
                      "bf16 speed / fp32 speed (augmentation included)"))
        rs.append(Row(f"encoders: forward {tag}", f"channels_last+bf16 {ips['fwd_cl_bf16']:.1f} img/s "
                      f"(channels_last fp32 {ips['fwd_cl']:.1f})", f"fp32 {ips['fwd_fp32']:.1f} img/s",
                      ips["fwd_cl_bf16"] / ips["fwd_fp32"], "channels_last+bf16 speed / fp32 speed"))
        fullfit = f" (fit on every pixel: {ips['macenko_fullfit']:.0f})" if "macenko_fullfit" in ips else ""
        rs.append(Row(f"encoders: input work {tag}", f"augment 2 views {ips['augment']:.0f} img/s, "
                      f"Macenko {ips['macenko']:.0f} tiles/s{fullfit}", f"train step bf16 {ips['train_bf16']:.1f} img/s",
                      ips["augment"] / ips["train_bf16"], "augmentation speed / training speed (>> 1: not the bottleneck)"))
    return rs


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", default="64,128")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    res = run(a.quick, sizes=tuple(int(v) for v in a.sizes.split(",")), arch=a.arch, batch=a.batch,
              threads=a.threads)
    report("encoders", res)
