"""Deep-zoom tile latency of `histstore serve`: p50/p95 of one DZI tile over HTTP (uvicorn on
loopback, a keep-alive client, as a browser fetches them), cold and warm, on the real sample
slide and on a 60,000 x 60,000 px synthetic slide (--quick: 20,000 px), side by side with
OpenSlide's own `read_region` of the same area in the same run. Goal: p95 < 100 ms warm.

- warm: the slide is open in the app's cache (DeepZoomCache); each request is a tile not asked
  for before (no response cache: the browser caches what it has seen);
- cold: the app's caches are emptied before each request, so it looks the slide up in the catalog,
  opens the file and builds its DeepZoomGenerator first (the OS file cache stays warm: dropping it
  on a shared machine is not ours to do);
- read_region: the same (location, level, size) that DeepZoomGenerator reads for each tile, warm
  on an open handle and cold with open + read + close, without resizing, JPEG or HTTP.

Tiles are drawn at random (seeded) from the four finest deep-zoom levels, where a viewer spends
its time.

    python -m benchmarks.bench_serve [--quick] [--keep-slide PATH]
"""
from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np

from benchmarks.common import Row

GOAL_P95_MS = 100.0


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "n": int(a.size)}


def _sample_tiles(level_tiles, n: int, seed: int) -> list[tuple[int, int, int]]:
    """Up to n distinct tiles, as evenly as the levels allow from the four finest levels, in
    random order."""
    rng = np.random.default_rng(seed)
    top = len(level_tiles) - 1
    levels = [lv for lv in range(top, max(top - 4, -1), -1)]
    out = []
    for i, level in enumerate(levels):
        cols, rows = level_tiles[level]
        want = -(-(n - len(out)) // (len(levels) - i))  # what is left, spread over the levels left
        pick = rng.choice(cols * rows, size=min(want, cols * rows), replace=False)
        out += [(level, int(k % cols), int(k // cols)) for k in pick]
    return [out[i] for i in rng.permutation(len(out))]


class _Client:
    """One keep-alive HTTP connection, as a browser keeps per host."""

    def __init__(self, base: str):
        u = urlsplit(base)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)

    def get(self, path: str) -> bytes:
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
        return body

    def close(self) -> None:
        self.conn.close()


def measure_slide(name: str, path: Path, n_warm: int, n_cold: int, seed: int = 0) -> dict:
    import openslide

    from histstore.ingest import ingest
    from histstore.store import Store
    from histstore.web.app import create_app
    from histstore.web.server import serve_in_thread
    from histstore.wsi.tiling import TilingSpec

    with tempfile.TemporaryDirectory() as tmp:
        store, _ = Store.init(Path(tmp) / "store")
        rep = ingest(store, path, TilingSpec(target_mpp=2.0, tile_size=256), workers=1, show_progress=False,
                     case_id_mode="slide")
        sid = rep.outcomes[0].slide_id
        app = create_app(store)
        state = app.state.serve
        dz = state.deepzoom
        levels = dz.level_tiles(path)
        tiles = _sample_tiles(levels, n_warm + n_cold, seed)
        n_cold = max(1, round(len(tiles) * n_cold / (n_warm + n_cold)))  # a small slide has fewer tiles
        warm_tiles, cold_tiles = tiles[n_cold:], tiles[:n_cold]
        url = f"/dzi/{quote(sid, safe='')}_files/{{}}/{{}}_{{}}.jpeg"
        with serve_in_thread(app) as base:
            client = _Client(base)
            client.get(url.format(0, 0, 0))  # open the slide; first-request imports
            warm = []
            for level, col, row in warm_tiles:
                t0 = time.perf_counter()
                client.get(url.format(level, col, row))
                warm.append(time.perf_counter() - t0)
            cold = []
            for level, col, row in cold_tiles:
                dz.clear()
                state.slide_paths.clear()
                t0 = time.perf_counter()
                client.get(url.format(level, col, row))
                cold.append(time.perf_counter() - t0)
            client.close()
        args = {t: dz.region_args(path, *t) for t in tiles}
        with openslide.OpenSlide(str(path)) as osr:
            osr.read_region(*args[warm_tiles[0]])
            rr_warm = []
            for t in warm_tiles:
                t0 = time.perf_counter()
                osr.read_region(*args[t])
                rr_warm.append(time.perf_counter() - t0)
        rr_cold = []
        for t in cold_tiles:
            t0 = time.perf_counter()
            with openslide.OpenSlide(str(path)) as osr:
                osr.read_region(*args[t])
            rr_cold.append(time.perf_counter() - t0)
        state.close()
        with openslide.OpenSlide(str(path)) as osr:
            width, height = osr.dimensions
            n_levels = osr.level_count
    return {"slide": name, "width": width, "height": height, "pyramid_levels": n_levels,
            "deepzoom_levels": len(levels), "serve_warm": _pct(warm), "serve_cold": _pct(cold),
            "read_region_warm": _pct(rr_warm), "read_region_cold": _pct(rr_cold),
            "goal_p95_warm_ms": GOAL_P95_MS, "meets_goal": _pct(warm)["p95_ms"] < GOAL_P95_MS}


def run(quick: bool = False, keep_slide: Path | None = None) -> list[dict]:
    from tests.support.sample_slide import real_sample_slide
    from histstore.wsi.synth import synth_slide

    n_warm, n_cold = (100, 20) if quick else (400, 60)
    side = 20_000 if quick else 60_000
    out = [measure_slide("real sample (Aperio SVS)", real_sample_slide(), n_warm, n_cold)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(keep_slide) if keep_slide else Path(tmp) / "big.tiff"
        t0 = time.perf_counter()
        if not path.exists():
            synth_slide(path, size=(side, side), mpp=0.25, seed=7, tumor=True)
        made = time.perf_counter() - t0
        res = measure_slide(f"synthetic {side:,} px (pyramidal TIFF)", path, n_warm, n_cold)
        res["synth_seconds"] = made
        out.append(res)
    return out


def rows(results: list[dict]) -> list[Row]:
    out = []
    for r in results:
        w, c, rw, rc = r["serve_warm"], r["serve_cold"], r["read_region_warm"], r["read_region_cold"]
        out.append(Row(f"serve: DZI tile, {r['slide']}",
                       f"warm p50 {w['p50_ms']:.1f} ms, p95 {w['p95_ms']:.1f} ms (goal < {GOAL_P95_MS:.0f}); "
                       f"cold p50 {c['p50_ms']:.1f} ms, p95 {c['p95_ms']:.1f} ms ({w['n']} + {c['n']} tiles, "
                       f"{r['width']:,} x {r['height']:,} px)",
                       f"OpenSlide read_region of the same area: warm p50 {rw['p50_ms']:.1f} ms, p95 "
                       f"{rw['p95_ms']:.1f} ms; cold (open + read) p50 {rc['p50_ms']:.1f} ms, p95 {rc['p95_ms']:.1f} ms",
                       rw["p95_ms"] / w["p95_ms"],
                       "read_region p95 / served tile p95, warm (the tile adds resize, JPEG and HTTP)"))
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--keep-slide", type=Path, help="reuse (or create) the big slide at this path")
    a = p.parse_args()
    res = run(a.quick, a.keep_slide)
    print(json.dumps(res, indent=1))
    for row in rows(res):
        print(row)
