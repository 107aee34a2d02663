"""Run every benchmark and print one table of ratios, each measured side by side with what it
is compared against in the same run. Writes benchmarks/RESULTS.md with the machine.

    python -m benchmarks.run_all [--quick] [--only NAME ...] [--no-write]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

BENCHMARKS = ["ingest", "tiles", "embed", "bags", "mil", "catalog", "heatmap", "pretrain", "encoders",
              "mil_sweep", "encoder_probe"]
HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 1e6:.0f} GB RAM"
    except (OSError, StopIteration):
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores{mem}, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")


def _mil_rows(results):
    from benchmarks.common import Row

    by = {r["variant"]: r for r in results}
    plain = by["plain/host"]["seconds_per_epoch"]
    out = []
    for name, r in by.items():
        if name.startswith("trainer/"):
            out.append(Row(f"MIL epoch ({name})",
                           f"{r['seconds_per_epoch']:.2f} s/epoch, {r['n_bags']} bags, {r['n_tiles']:,} tiles x 1024",
                           f"plain one-bag-per-step loop {plain:.2f} s/epoch", plain / r["seconds_per_epoch"],
                           "plain / histstore time"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", choices=BENCHMARKS)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    names = a.only or BENCHMARKS
    rows, failures, raw = [], [], {}
    t_all = time.perf_counter()
    for name in names:
        mod = importlib.import_module(f"benchmarks.bench_{name}")
        t0 = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            if name == "mil":
                import torch

                # 500 bags x ~6,000 x 1024 float32 is ~12 GB twice over and ~15 min per
                # variant on 2 CPU cores: the full 500-bag run is for a GPU (see bench_mil.py)
                res = mod.run(a.quick, n_bags=None if (a.quick or torch.cuda.is_available()) else 100)
            else:
                res = mod.run(a.quick)
            raw[name] = res
            got = _mil_rows(res) if name == "mil" else mod.rows(res)
            rows += got
            print(f"  {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        except Exception as exc:  # one broken benchmark must not hide the others
            failures.append((name, f"{type(exc).__name__}: {exc}"))
            traceback.print_exc()
    table = ["| benchmark | histstore | compared with | ratio | ratio means |", "|---|---|---|---|---|"]
    table += [f"| {r.benchmark} | {r.measured} | {r.versus} | {'-' if r.ratio is None else f'{r.ratio:.2f}'} "
              f"| {r.meaning} |" for r in rows]
    print("\n".join(table))
    for name, err in failures:
        print(f"FAILED {name}: {err}")
    if not a.no_write:
        try:
            commit = subprocess.run(["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"],
                                    capture_output=True, text=True).stdout.strip()
        except OSError:
            commit = "?"
        text = [f"# Benchmark results", "",
                f"Latest run: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}, "
                f"`python -m benchmarks.run_all{' --quick' if a.quick else ''}` "
                f"({time.perf_counter() - t_all:.0f} s).", "",
                f"Machine: {machine()}.", "",
                "Each ratio compares two things measured side by side in the same run; absolute",
                "numbers on a shared machine are noisy, ratios less so.", "", *table, ""]
        if failures:
            text += ["Failed: " + "; ".join(f"{n} ({e})" for n, e in failures), ""]
        text += ["<details><summary>raw measurements</summary>", "", "```json",
                 json.dumps(raw, indent=1, default=str), "```", "</details>", ""]
        (HERE / "RESULTS.md").write_text("\n".join(text))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
