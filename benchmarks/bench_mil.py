"""Seconds per training epoch: histstore's MIL trainer vs a plain one-bag-per-step loop.

Both train the same model - HistCode's gated attention (1024 -> 512 -> 256 -> 1, linear
classifier), Adam lr 1e-4, wd 1e-5 - on the same random bags (N ~ U[2000, 10000] tiles of
1024-d float32, random binary labels), in the same run. Variants:

  plain/host      the usual loop: bags in host memory, `.to(device)` each step, a textbook
                  nn.Module, `loss.item()` each step
  plain/resident  the same loop with the bags moved to the device beforehand (on a CPU it
                  is plain/host)
  trainer/1       histstore.mil.trainer.train_fold, one bag per step (the paper's setting)
  trainer/B       bags_per_step=B: one optimiser step per B bags (batch_mode auto: one
                  concatenated forward on a GPU, per-bag gradient accumulation on a CPU)
  trainer/B+MODE  the same with the batch mode auto does not pick on this device (concat on a
                  CPU, accumulate on a GPU): the evidence for the per-device default
  trainer/B+bf16  (CUDA only) the same under bf16 autocast

The first epoch of each variant is a warm-up and is not timed (unless only one epoch runs).
`ratio` is plain/host seconds divided by the variant's seconds (> 1: faster than plain).
Note: bags_per_step=B takes B times fewer optimiser steps per epoch; it is a different
optimisation schedule, not the same computation done faster.

Memory: the bags live twice (host list + the trainer's packed copy): 500 bags of ~6,000
1024-d float32 tiles are ~12 GB each. Use --host-dtype float16 / --feature-dtype float16 to
halve that.

    python benchmarks/bench_mil.py --quick           # 16 bags, CPU-sized
    python benchmarks/bench_mil.py --device cuda     # 500 bags
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import report
from histstore.devices import resolve_device
from histstore.mil.bags import pack_bags
from histstore.mil.train_config import TrainConfig
from histstore.mil.trainer import train_fold

DIM = 1024


class PlainGatedAttention(nn.Module):
    """Textbook gated-attention MIL (as in HistCode's / CLAM's code), for the baseline loop."""

    def __init__(self, d=DIM, hidden=512, attn=256, n_classes=2):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(d, hidden), nn.ReLU())
        self.V = nn.Linear(hidden, attn)
        self.U = nn.Linear(hidden, attn)
        self.w = nn.Linear(attn, 1)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, x):
        h = self.fc(x)                                                  # [N, 512]
        a = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h)))    # [N, 1]
        a = torch.softmax(a, dim=0)
        return self.classifier((a * h).sum(0, keepdim=True))           # [1, C]


def make_bags(n_bags, min_tiles=2000, max_tiles=10000, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(min_tiles, max_tiles + 1, (n_bags,), generator=g).tolist()
    bags = [torch.randn(n, DIM, generator=g).to(dtype) for n in sizes]
    labels = torch.randint(0, 2, (n_bags,), generator=g).numpy()
    return bags, labels


def plain_epochs(bags, labels, train_idx, epochs, device, resident, seed=0):
    """The baseline: one bag per step, per-step host->device copy unless resident."""
    torch.manual_seed(seed)
    model = PlainGatedAttention().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    data = [b.to(device) for b in bags] if resident else bags
    y = torch.as_tensor(labels, dtype=torch.long)
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        total = 0.0
        for i in rng.permutation(train_idx):
            x = data[i].to(device).float()
            loss = F.cross_entropy(model(x), y[i:i + 1].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def _timed(times):
    return statistics.median(times[1:] if len(times) > 1 else times)


def run(quick: bool = False, *, device: str = "auto", n_bags: int | None = None,
        epochs: int | None = None, bags_per_step: int = 16, host_dtype: str = "float32",
        feature_dtype: str = "float32", seed: int = 0) -> list[dict]:
    """Run every variant; returns one dict per variant (see module docstring)."""
    dev = resolve_device(device)
    # 500 bags x ~6,000 x 1024 float32 is ~12 GB twice over and ~15 min per variant on 2 CPU
    # cores: the full 500-bag run is for a GPU; a CPU's full run takes 100 bags
    n_bags = n_bags or (16 if quick else 500 if dev.type == "cuda" else 100)
    epochs = epochs or (2 if quick else 3)
    t0 = time.perf_counter()
    bags, labels = make_bags(n_bags, dtype=getattr(torch, host_dtype), seed=seed)
    gen_s = time.perf_counter() - t0
    n_tiles = int(sum(len(b) for b in bags))
    train_idx = np.arange(n_bags - 1)  # the last bag is the trainer's (untimed) test bag
    common = {"device": str(dev), "n_bags": n_bags, "n_train_bags": n_bags - 1,
              "n_tiles": n_tiles, "epochs": epochs, "threads": torch.get_num_threads()}
    results = []

    def record(variant, times, **extra):
        results.append({"variant": variant, "seconds_per_epoch": _timed(times),
                        "epoch_seconds": [round(t, 3) for t in times], **common, **extra})

    record("plain/host", plain_epochs(bags, labels, train_idx, epochs, dev, resident=False))
    if dev.type == "cuda":
        record("plain/resident", plain_epochs(bags, labels, train_idx, epochs, dev,
                                              resident=True))
        torch.cuda.empty_cache()

    t0 = time.perf_counter()
    packed = pack_bags(bags, dev, feature_dtype)
    pack_s = time.perf_counter() - t0
    # (name, bags per step, amp, batch_mode); the mode auto does not pick is timed too, so that
    # the choice per device (TrainConfig.batch_mode) rests on a measurement
    other = "accumulate" if dev.type == "cuda" else "concat"
    variants = [("trainer/1", 1, False, "auto"), (f"trainer/{bags_per_step}", bags_per_step, False, "auto"),
                (f"trainer/{bags_per_step}+{other}", bags_per_step, False, other)]
    if dev.type == "cuda":
        variants.append((f"trainer/{bags_per_step}+bf16", bags_per_step, True, "auto"))
    for name, bps, amp, batch_mode in variants:
        cfg = TrainConfig(epochs=epochs, patience=None, bags_per_step=bps, amp=amp,
                          feature_dtype=feature_dtype, batch_mode=batch_mode)
        r = train_fold(packed, labels, train_idx, [], [n_bags - 1], cfg, seed=seed, device=dev)
        if bps == 1:
            mode = "one-bag"
        elif batch_mode == "auto":
            mode = "concat" if dev.type == "cuda" else "accumulate"
        else:
            mode = batch_mode
        record(name, [h.train_seconds for h in r.history], pack_seconds=round(pack_s, 2),
               batch_mode=mode)
    base = results[0]["seconds_per_epoch"]
    for r in results:
        r["ratio"] = base / r["seconds_per_epoch"]
        r["generate_seconds"] = round(gen_s, 2)
    return results


def rows(results: list[dict]):
    from benchmarks.common import Row

    by = {r["variant"]: r for r in results}
    plain = by["plain/host"]["seconds_per_epoch"]
    out = []
    for name, r in by.items():
        if name.startswith("trainer/"):
            label = name if name.endswith(r["batch_mode"]) else f"{name}, {r['batch_mode']}"
            out.append(Row(f"MIL epoch ({label})",
                           f"{r['seconds_per_epoch']:.2f} s/epoch, {r['n_bags']} bags, {r['n_tiles']:,} tiles x {DIM}",
                           f"plain one-bag-per-step loop {plain:.2f} s/epoch", plain / r["seconds_per_epoch"],
                           "plain / histstore time"))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--n-bags", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--bags-per-step", type=int, default=16)
    p.add_argument("--host-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--feature-dtype", default="float32",
                   choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    results = run(a.quick, device=a.device, n_bags=a.n_bags, epochs=a.epochs,
                  bags_per_step=a.bags_per_step, host_dtype=a.host_dtype,
                  feature_dtype=a.feature_dtype)
    r0 = results[0]
    print(f"{r0['n_bags']} bags, {r0['n_tiles']:,} tiles x {DIM}, device {r0['device']}, "
          f"{r0['threads']} threads, {r0['epochs']} epochs (first untimed)")
    print(f"{'variant':<22}{'s/epoch':>10}{'vs plain':>10}   epochs (s)")
    for r in results:
        print(f"{r['variant']:<22}{r['seconds_per_epoch']:>10.3f}{r['ratio']:>9.2f}x   "
              f"{r['epoch_seconds']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    report("mil", results)


if __name__ == "__main__":
    main()
