"""Shared helpers for benchmarks: a row format and a timer.

Every benchmark module has `run(quick: bool) -> list[dict]` (its raw measurements) and
`rows(results) -> list[Row]`: what was measured, against what, and the ratio, all measured
side by side in the same run (never compared with numbers from another day or machine).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Row:
    benchmark: str
    measured: str        # what histstore did, with its number
    versus: str          # the comparison, with its number
    ratio: float         # > 1: histstore is better (faster / smaller), as stated in `meaning`
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


def main(run, rows) -> None:
    """Command line of a benchmark module without extra options: --quick, JSON, then rows."""
    import argparse
    import json

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    res = run(p.parse_args().quick)
    print(json.dumps(res, indent=1, default=str))
    for row in rows(res):
        print(row)
