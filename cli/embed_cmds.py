"""`histstore embed` and `histstore embeddings list`."""
from __future__ import annotations

from pathlib import Path

import click

from histstore.cli.common import HiststoreGroup, emit_rows, format_option, pass_store
from histstore.cluster import CLUSTER_HELP
from histstore.embeddings.stain_settings import STAIN_NORMS


@click.command()
@click.option("--encoder", required=True,
              help="A registered encoder (name or id), or an architecture: resnet18, resnet50-layer3, resnet50.")
@click.option("--cohort", required=True, help="Embed this cohort's slides.")
@click.option("--tiling", help="Tiling settings key (or prefix) when slides have several.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Local weights file for an architecture (torchvision state_dict or histstore checkpoint).")
@click.option("--random-init", is_flag=True, help="Allow an untrained encoder (recorded as method 'random').")
@click.option("--stain-norm", type=click.Choice(STAIN_NORMS), default=STAIN_NORMS[0], show_default=True,
              help="macenko: one Macenko fit per slide (stain matrix and 99th-percentile concentrations from "
              "a seeded sample of its tiles, recorded in table slide_stain) applied to all its tiles; "
              "macenko-tile: a fit per tile (erases tile-to-tile stain differences); none.")
@click.option("--stain-tiles", type=click.IntRange(min=1), default=128, show_default=True,
              help="Tiles sampled per slide for the per-slide stain fit.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: AMP on CUDA, bf16 on CPUs with native bf16, else fp32.")
@click.option("--workers", type=int, help="--cluster none: tile-reading worker processes; 0 reads on a background "
              "thread in this process [default: 0 on CPU, 8 on CUDA]. Other --cluster: Dask workers (local) or "
              "jobs (slurm, pbs), each reading on a background thread.")
@click.option("--cluster", default="none", show_default=True, help=CLUSTER_HELP)
@click.option("--name", help="Name of the embedding set [default: <encoder>@<tiling>-<stain norm>].")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of a random-init encoder.")
@pass_store
def embed(store, encoder, cohort, tiling, weights, random_init, stain_norm, stain_tiles, batch_size, device,
          precision, workers, cluster, name, dtype, seed):
    """Embed every tile of a cohort with a frozen encoder into zarr (resumable)."""
    from histstore.embed import embed as run_embed

    r = run_embed(store, encoder, cohort, tiling=tiling, weights=weights, allow_random=random_init,
                  seed=seed, stain_norm=stain_norm, batch_size=batch_size, device=device,
                  workers=workers, precision=precision, name=name, dtype=dtype, stain_tiles=stain_tiles,
                  cluster=cluster)
    for note in r.warnings:
        click.echo(f"warning: {note}", err=True)
    verb = "created" if r.created else "reused"
    click.echo(f"embedding set {r.embedding_set} ({verb}): {r.n_embedded} slides embedded, "
               f"{r.n_skipped} already done; {r.n_tiles:,} tiles in {r.seconds:.1f} s = "
               f"{r.tiles_per_second:.1f} tiles/s on {r.device} ({r.precision})")


@click.group(cls=HiststoreGroup)
def embeddings():
    """Embedding sets."""


@embeddings.command("list")
@format_option()
@pass_store
def embeddings_list(store, fmt):
    """Embedding sets with their encoder, dimension and coverage."""
    from histstore.embeddings.sets import list_sets

    emit_rows(list_sets(store), fmt)


@click.command("encoders")
@format_option()
@pass_store
def encoders(store, fmt):
    """Registered tile encoders."""
    from histstore.catalog.bulk import query_arrow
    from histstore.encoder_catalog import list_encoders_sql

    with store.read() as conn:
        emit_rows(query_arrow(conn, list_encoders_sql()), fmt)
