"""Shared helpers for benchmarks: the row format, timers, and the command line of a module.

The convention every benchmark follows is in benchmarks/README.md: a module
`benchmarks/bench_<name>.py` with `run(quick: bool) -> list[dict]` (its raw measurements,
JSON-serialisable) and `rows(results) -> list[Row]` (its table, a pure function of those
measurements), optionally `details(results) -> list[str]` (more markdown: a profile, a
per-step table). `python -m benchmarks.run_all` finds it by its file name.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable


@dataclass
class Row:
    benchmark: str
    measured: str               # what histstore did, with its number
    versus: str                 # the strongest alternative, with its number, timed the same way
    ratio: float | None         # > 1: histstore is better, as stated in `meaning`; None: figures only
    meaning: str


@contextmanager
def timer(out: dict, key: str):
    t = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t


def best_of(fn, repeat: int = 3) -> float:
    """Fastest of `repeat` timed calls (noise on a shared machine only ever adds time)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call, the candidates taken in turn (ABAB...) `repeats` times, so that
    load from other processes falls on all of them alike. Returns every timing per name."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def median(values) -> float:
    return float(statistics.median(values))


def main(run, rows, name: str | None = None) -> None:
    """Command line of a benchmark module without extra options: --quick, then its table
    (the same rendering as benchmarks/RESULTS.md) and the raw JSON."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    res = run(p.parse_args().quick)
    report(name or _caller_name(run), res)


def report(name: str, results) -> None:
    """Print a benchmark's table as RESULTS.md will show it, then its raw measurements."""
    import json

    from benchmarks.render import section_body

    print("\n".join(section_body(name, results)))
    print(json.dumps(results, indent=1, default=str))


def _caller_name(run) -> str:
    """bench_<name> -> name, also when the module runs as __main__ (python -m)."""
    import sys
    from pathlib import Path

    mod = sys.modules[run.__module__]
    stem = Path(getattr(mod, "__file__", "") or run.__module__).stem
    return stem[len("bench_"):] if stem.startswith("bench_") else stem
