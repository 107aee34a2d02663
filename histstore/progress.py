"""One progress-bar factory for every long job (tqdm on stderr, quiet when not a terminal
unless HISTSTORE_PROGRESS=1)."""
from __future__ import annotations

import os
import sys


def progress_bar(total=None, desc: str = "", unit: str = "it", disable: bool = False, **kw):
    from tqdm.auto import tqdm

    forced = os.environ.get("HISTSTORE_PROGRESS")
    if forced is not None:
        disable = disable or forced == "0"
    else:
        disable = disable or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                mininterval=0.5, file=sys.stderr, **kw)


class TileRate:
    """Tiles per second since the job started, over everything it registered (a cluster's
    workers together): `add(n)` after each slide returns the rate so far, rounded."""

    def __init__(self):
        import time

        self._clock = time.perf_counter
        self.start, self.tiles = self._clock(), 0

    def add(self, n: int) -> float:
        self.tiles += int(n)
        elapsed = self._clock() - self.start
        return round(self.tiles / elapsed, 1) if elapsed > 0 else 0.0
