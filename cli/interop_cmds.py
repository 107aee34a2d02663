"""`histstore features import|export` and `histstore export predictions|attention`."""
from __future__ import annotations

from pathlib import Path

import click

from histstore.cli.common import HiststoreGroup, pass_store
from histstore.cluster import CLUSTER_HELP


@click.group(cls=HiststoreGroup)
def features():
    """Tile features made elsewhere (CLAM, TRIDENT, ...): import and export."""


@features.command("import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Name of the embedding set to import into (created, or resumed).")
@click.option("--cohort", required=True, help="Add the imported slides to this cohort (created if new).")
@click.option("--format", "fmt", type=click.Choice(["h5", "pt", "npy"]),
              help="File format [default: detected: pt, else npy, else h5].")
@click.option("--patch-size", type=int, help="Patch side in pixels at --patch-level, when the files do not say.")
@click.option("--patch-level", type=int, help="Pyramid level the patch size refers to [default: the file's, else 0].")
@click.option("--mapping", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with columns file,slide_id[,case_id] (when file names are not slide ids).")
@click.option("--coords-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Where the coords of .pt/.npy files are (<stem>.h5, <stem>_patches.h5, <stem>_coords.npy).")
@click.option("--register-slides", is_flag=True,
              help="Register slides not in the catalog as slides without pixels (features-only cohorts); "
                   "their case is the mapping's case_id column, else their TCGA barcode, else --case-id slide.")
@click.option("--case-id", "case_id_mode", type=click.Choice(["slide"]),
              help="'slide': a slide registered without a case id or TCGA barcode is its own case "
                   "(else refused: patients must not span train and test of one fold).")
@click.option("--dtype", type=click.Choice(["auto", "float16", "float32"]), default="auto", show_default=True,
              help="Stored dtype; auto keeps float16 files float16, anything else becomes float32.")
@click.option("--cluster", default="none", show_default=True, help=CLUSTER_HELP)
@click.option("--workers", type=int, help="Dask workers (--cluster local) or jobs (slurm, pbs) "
              "[default: min(4, CPUs)].")
@pass_store
def features_import(store, directory, name, cohort, fmt, patch_size, patch_level, mapping, coords_dir,
                    register_slides, case_id_mode, dtype, cluster, workers):
    """Import one feature file per slide (features [N, D] + level-0 coords [N, 2]) from DIRECTORY."""
    from histstore.interop import import_features

    r = import_features(store, directory, name=name, cohort=cohort, fmt=fmt, patch_size=patch_size,
                        patch_level=patch_level, mapping=mapping, register_slides=register_slides,
                        coords_dir=coords_dir, dtype=dtype, case_id_mode=case_id_mode,
                        cluster=cluster, workers=workers)
    for o in r.outcomes:
        if o.status == "imported" and o.message:
            click.echo(f"note: {o.line()}", err=True)
    for o in r.failures:
        click.echo(f"failed: {o.line()}", err=True)
    if r.ignored_files:
        click.echo(f"{r.ignored_files} files in {directory} are not in the mapping and were left alone", err=True)
    if r.embedding_set is None:
        click.echo(f"nothing imported: all {len(r.outcomes)} files failed", err=True)
        raise click.exceptions.Exit(1)
    click.echo(r.summary())
    if not r.ok:
        click.echo(f"{len(r.failures)} of {len(r.outcomes)} files failed (listed above); the others are "
                   "imported - fix the files and run the same command again to add them", err=True)
        raise click.exceptions.Exit(1)


@features.command("export")
@click.argument("embedding_set")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["h5"]), default="h5", show_default=True)
@click.option("--cohort", help="Only this cohort's slides.")
@click.option("--force", "--overwrite", "overwrite", is_flag=True, help="Replace files that exist in DIRECTORY.")
@pass_store
def features_export(store, embedding_set, directory, fmt, cohort, overwrite):
    """Write an embedding set as CLAM/TRIDENT-style h5 files (features, coords), one per slide."""
    from histstore.interop import export_features

    r = export_features(store, embedding_set, directory, fmt=fmt, cohort=cohort, overwrite=overwrite)
    click.echo(f"wrote {len(r.files)} files ({r.n_rows:,} rows) of embedding set {r.embedding_set} to {r.directory}")


@click.group(cls=HiststoreGroup)
def export():
    """Results for pandas, R or QuPath: predictions and attention as Parquet or CSV."""


def _table_command(what: str):
    @export.command(what)
    @click.argument("run")
    @click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]),
                  help="[default: from FILE's suffix, .parquet or .csv]")
    @click.option("--force", is_flag=True, help="Replace FILE if it exists.")
    @pass_store
    def command(store, run, file, fmt, force):
        from histstore import interop

        fn = interop.export_predictions if what == "predictions" else interop.export_attention
        r = fn(store, run, file, fmt, overwrite=force)
        click.echo(f"wrote {r.n_rows:,} rows of {what} of run {run} to {r.path} ({r.fmt})")

    command.__doc__ = {
        "predictions": "A run's slide predictions: run, task, fold, subset, slide_id, case_id, label, "
                       "target, score, predicted.",
        "attention": "A run's test-tile attention: run, task, fold, slide_id, case_id, tile_id, idx, x, y, "
                     "size_l0, score, score_norm (min-max in the slide), rank_in_slide.",
    }[what]
    command.help = command.__doc__
    return command


export_predictions = _table_command("predictions")
export_attention = _table_command("attention")
