"""`histstore heatmap` and `histstore report`: look at a run instead of reading it."""
from __future__ import annotations

from pathlib import Path

import click

from histstore.cli.common import pass_store

# mirrored from histstore.reports.heatmap (not imported here: the CLI starts without numpy work)
_FORMATS = ("png", "geojson")
_NORMS = ("minmax", "percentile")


@click.command()
@click.option("--run", "run_id", required=True, help="Train run id (see `histstore runs list`).")
@click.option("--slide", "slide_id", required=True, help="Slide id; one of the run's test slides.")
@click.option("--fold", type=int, help="Fold [default: the fold whose test subset held the slide].")
@click.option("--out", type=click.Path(path_type=Path),
              help="Output file or folder [default: STORE/artifacts/heatmaps/run<RUN>/<slide>_fold<F>.<format>].")
@click.option("--format", "fmt", type=click.Choice(_FORMATS),
              help="png: thumbnail + attention; geojson: one polygon per tile (QuPath) "
                   "[default: from --out's suffix, else png].")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.4, show_default=True,
              help="Opacity of the attention colours over the slide.")
@click.option("--cmap", default="inferno", show_default=True, help="matplotlib colour map.")
@click.option("--norm", type=click.Choice(_NORMS), default="minmax", show_default=True,
              help="Within-slide normalisation: min-max, or percentile rank.")
@click.option("--top", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Also write a gallery of the K most and K least attended tiles (full resolution).")
@click.option("--max-side", type=click.IntRange(16, 8192), default=1024, show_default=True,
              help="Thumbnail size (px, long side); read from the slide's low-resolution levels.")
@pass_store
def heatmap(store, run_id, slide_id, fold, out, fmt, alpha, cmap, norm, top, max_side):
    """Draw a slide's tile attention in a run: PNG heatmap or QuPath GeoJSON."""
    from histstore.reports.heatmap import render_heatmap

    r = render_heatmap(store, run_id, slide_id, fold=fold, out=out, fmt=fmt, alpha=alpha, cmap=cmap,
                       norm=norm, top=top, max_side=max_side)
    click.echo(f"heatmap of {r.slide_id} in run {r.run_id} (fold {r.fold}, {r.model}, {r.n_tiles} tiles, "
               f"{r.norm}) [{r.seconds:.1f} s]", err=True)
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    for p in r.paths:
        click.echo(str(p))


@click.command()
@click.argument("run_id")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [default: STORE/artifacts/reports/run<RUN>/].")
@pass_store
def report(store, run_id, out_dir):
    """Write a run's evaluation (ROC, confusion matrix, per-fold metrics, training curves,
    fold-change scatter for gene runs) as PNGs and one HTML page."""
    from histstore.reports.report import write_report

    r = write_report(store, run_id, out_dir=out_dir)
    summary = []
    if r.mean_auc is not None:
        summary.append(f"mean AUC {r.mean_auc:.3f}")
    if r.spearman_rho is not None:
        summary.append(f"Spearman rho {r.spearman_rho:.3f}")
    click.echo(f"report of run {r.run_id}: {len(r.figures)} figures"
               + (f", {', '.join(summary)}" if summary else "") + f" [{r.seconds:.1f} s]", err=True)
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    for p in r.paths:
        click.echo(str(p))
