"""`histstore demo`."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--store", "demo_store", type=click.Path(file_okay=False, path_type=Path),
              help="Store folder for the demo (overrides the global --store); must not hold a store yet.")
@click.option("--slides", "n_slides", type=int, help="Synthetic slides [default: 30, --quick: 12].")
@click.option("--quick", is_flag=True, help="Fewer slides, smaller tiles and shorter training (prints how long it took).")
@click.option("--slides-from", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Use your own slides (TCGA names give tumour/normal labels) instead of synthetic ones.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def demo(ctx, demo_store, n_slides, quick, slides_from, seed):
    """Run the whole mission end to end: synthesise, ingest, pretrain AdCo, embed, train
    gated attention vs mean/max pooling with 5-fold CV, gene tasks, report and heatmap."""
    from histstore.demo import run_demo

    root = demo_store or Path(ctx.find_root().params["store"])
    run_demo(root, quick=quick, n_slides=n_slides, slides_from=slides_from, seed=seed, echo=click.echo)
