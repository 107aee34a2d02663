"""Seconds to draw an attention heatmap of a slide with ~20,000 tiles.

Setup (not timed): a synthetic slide is written (quick: 14,000 px square at 0.5 um/px, tiles of
64 level-0 px; full: 28,000 px square, tiles of 128 level-0 px - both about 20,000 tissue tiles,
the full slide four times the pixels), ingested into a fresh store, and a run is planted with
one attention score per tile (softmax of the planted tumour fraction plus noise) - no training.

Steps (median of `repeats` calls each):
  load        catalog read: attention JOIN tiles, prediction, tiling (load_slide_attention)
  thumbnail   the slide image from its coarse pyramid level (SlideReader.thumbnail)
  paint       all tiles into the thumbnail grid at once (paint_tiles, a difference array)
  png         render_heatmap end to end: load + thumbnail + paint + blend + figure + PNG +
              artifacts row
  geojson     render_heatmap --format geojson (one polygon per tile)
  png+top16   render_heatmap with a gallery of the 16 most and 16 least attended tiles, read
              at full resolution
  patches     the plain matplotlib way, for contrast: one Rectangle per tile over the same
              thumbnail, then the PNG (median of the same number of calls as png)

    python -m benchmarks.bench_heatmap --quick
    python -m benchmarks.bench_heatmap --json heatmap.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {True: (14_000, 0.5, 64), False: (28_000, 1.0, 64)}  # quick -> (px, target mpp, tile px)


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _setup(root: Path, quick: bool, seed: int):
    from histstore.ingest import ingest
    from histstore.store import Store
    from histstore.wsi.synth import synth_slide, tumor_fraction_of_tiles
    from histstore.wsi.tiling import TilingSpec
    from tests.support.planted_runs import plant_run

    px, target_mpp, tile = SIZES[quick]
    slide = synth_slide(root / "BENCH-0001-01Z.tiff", size=(px, px), mpp=0.5, seed=seed, tumor=True,
                        burden=0.3, slide_id="BENCH-0001-01Z")
    (root / "manifest.csv").write_text(f"path,slide_id,case_id\n{slide.path},{slide.slide_id},BENCH-0001\n")
    store, _ = Store.init(root / "store")
    ingest(store, root / "manifest.csv", TilingSpec(target_mpp=target_mpp, tile_size=tile), cohort="bench",
           workers=1, show_progress=False)
    with store.read() as conn:
        x, y, size = (np.asarray(v) for v in zip(*conn.exec_driver_sql(
            "SELECT x, y, size_l0 FROM tiles WHERE slide_id = ? ORDER BY idx", (slide.slide_id,)).all()))
    frac = tumor_fraction_of_tiles(slide, x, y, size[0])
    logits = 4.0 * frac + np.random.default_rng(seed).normal(0, 0.5, frac.size)
    attention = np.exp(logits - logits.max())
    rid = plant_run(store, {slide.slide_id: ("tumor", attention / attention.sum())}, cohort="bench")
    return store, slide, rid, len(x)


def _patches(store, rid: int, slide_id: str, out: Path) -> None:
    """One Rectangle per tile (what the vectorised painter replaces)."""
    import matplotlib
    from matplotlib.patches import Rectangle

    from histstore.reports.common import new_figure, save_figure
    from histstore.reports.heatmap import DEFAULT_MAX_SIDE
    from histstore.reports.raster import normalise, slide_background
    from histstore.reports.slide_attention import load_slide_attention

    sa = load_slide_attention(store, rid, slide_id)
    rgb, _, _ = slide_background(sa, DEFAULT_MAX_SIDE)
    v = normalise(sa.score)
    cmap = matplotlib.colormaps["inferno"]
    fig = new_figure(figsize=(9, 8))
    ax = fig.add_subplot()
    ax.imshow(rgb, extent=(0, sa.width, sa.height, 0))
    for xi, yi, si, vi in zip(sa.x.tolist(), sa.y.tolist(), sa.size_l0.tolist(), v.tolist()):
        ax.add_patch(Rectangle((xi, yi), si, si, facecolor=cmap(vi), alpha=0.4, linewidth=0))
    ax.set_axis_off()
    save_figure(fig, out, dpi=130)


def run(quick: bool = False, *, repeats: int = 3, seed: int = 0, workdir: str | Path | None = None,
        patches: bool = True) -> list[dict]:
    """Time each step (see module docstring); one dict per step."""
    from histstore.reports.heatmap import DEFAULT_MAX_SIDE, render_heatmap
    from histstore.reports.raster import normalise, paint_tiles, slide_background
    from histstore.reports.slide_attention import load_slide_attention

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_heatmap_")
        workdir = tmp.name
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        store, slide, rid, n_tiles = _setup(root, quick, seed)
        setup_s = time.perf_counter() - t0
        sid = slide.slide_id
        render_heatmap(store, rid, sid, out=root / "warmup.png")  # imports, page cache
        sa = load_slide_attention(store, rid, sid)
        rgb, scale, _ = slide_background(sa, DEFAULT_MAX_SIDE)
        values = normalise(sa.score)
        common = {"n_tiles": n_tiles, "slide_px": f"{slide.width}x{slide.height}",
                  "tile_l0_px": int(sa.size_l0[0]), "thumb_px": f"{rgb.shape[1]}x{rgb.shape[0]}",
                  "repeats": repeats, "setup_s": round(setup_s, 1), "quick": quick}
        steps = {
            "load": lambda: load_slide_attention(store, rid, sid),
            "thumbnail": lambda: slide_background(sa, DEFAULT_MAX_SIDE),
            "paint": lambda: paint_tiles(sa.x, sa.y, sa.size_l0, values, scale, rgb.shape[:2]),
            "png": lambda: render_heatmap(store, rid, sid, out=root / "heatmap.png"),
            "geojson": lambda: render_heatmap(store, rid, sid, out=root / "heatmap.geojson"),
            "png+top16": lambda: render_heatmap(store, rid, sid, out=root / "heatmap_top.png", top=16),
        }
        results = []
        for name, fn in steps.items():
            seconds, _ = _timed(fn, repeats)
            results.append({"step": name, "seconds": round(seconds, 4), **common})
        if patches:
            seconds, _ = _timed(lambda: _patches(store, rid, sid, root / "patches.png"), repeats)
            results.append({"step": "patches", "seconds": round(seconds, 4), **common})
        png = next(r["seconds"] for r in results if r["step"] == "png")
        for r in results:
            r["vs_png"] = round(r["seconds"] / png, 3)
        return results
    finally:
        if tmp is not None:
            tmp.cleanup()


def rows(results: list[dict]):
    from benchmarks.common import Row

    by = {r["step"]: r for r in results}
    png = by["png"]
    measured = (f"{png['seconds']:.2f} s per PNG heatmap, {png['n_tiles']:,} tiles on a {png['slide_px']} px slide "
                f"(catalog {by['load']['seconds']:.2f} s, thumbnail {by['thumbnail']['seconds']:.2f} s, "
                f"painting {by['paint']['seconds']:.3f} s); GeoJSON {by['geojson']['seconds']:.2f} s")
    if "patches" not in by:
        return [Row("heatmap: ~20k tiles", measured, "-", 1.0, "no comparison run (--no-patches)")]
    return [Row("heatmap: ~20k tiles", measured,
                f"one matplotlib patch per tile: {by['patches']['seconds']:.1f} s "
                f"(both: median of {by['patches']['repeats']} calls)",
                by["patches"]["seconds"] / png["seconds"], "patch-per-tile time / histstore time")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="14,000 px slide (setup ~10 s) instead of 28,000 px (~40 s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-patches", action="store_true", help="skip the one-patch-per-tile contrast")
    p.add_argument("--workdir", help="keep the slide, store and images here (default: a temporary folder)")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args(argv)
    results = run(a.quick, repeats=a.repeats, seed=a.seed, workdir=a.workdir, patches=not a.no_patches)
    r0 = results[0]
    print(f"slide {r0['slide_px']} px, {r0['n_tiles']:,} tiles of {r0['tile_l0_px']} px, thumbnail "
          f"{r0['thumb_px']}, median of {r0['repeats']} (setup {r0['setup_s']} s, not timed)")
    print(f"{'step':<12}{'seconds':>10}{'x png':>8}")
    for r in results:
        print(f"{r['step']:<12}{r['seconds']:>10.3f}{r['vs_png']:>8.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    from benchmarks.common import report

    report("heatmap", results)


if __name__ == "__main__":
    main()
