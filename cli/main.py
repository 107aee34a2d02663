"""The `histstore` command: a thin Click layer over the histstore library."""
from __future__ import annotations

from pathlib import Path

import click

from histstore import __version__
from histstore.cli.common import HiststoreGroup
from histstore.cli import (cohort_cmds, demo_cmds, embed_cmds, ingest_cmds, interop_cmds, label_cmds, predict_cmds,
                           pretrain_cmds, report_cmds, serve_cmds, store_cmds, train_cmds)


@click.group(cls=HiststoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", type=click.Path(file_okay=False, path_type=Path),
              envvar="HISTSTORE_STORE", default="histstore-store", show_default=True,
              help="Store folder (catalog + embeddings + checkpoints + artifacts). "
                   "Env: HISTSTORE_STORE.")
@click.option("--wait", type=click.FloatRange(min=0), envvar="HISTSTORE_WAIT", default=120,
              show_default=True, metavar="SECONDS",
              help="How long to wait for a catalog that another process is using (saying once "
                   "which process holds it) before failing. Jobs wait at least 600 s to commit "
                   "finished work. Env: HISTSTORE_WAIT.")
@click.option("--exclusive", is_flag=True, envvar="HISTSTORE_EXCLUSIVE",
              help="Jobs hold the catalog for their whole run instead of per commit: the fastest "
                   "when nobody else uses the store, but every other command waits until the job "
                   "ends. Env: HISTSTORE_EXCLUSIVE=1.")
@click.version_option(__version__, prog_name="histstore")
def main(store, wait, exclusive):
    """histstore: feature store and experiment database for computational pathology.

    Ingest whole-slide images, pretrain AdCo tile encoders, embed tiles into zarr, train
    gated-attention MIL models with 5-fold CV, and query every result in SQL.
    """


# in the order of the workflow (also the order of docs/cli.md)
for command in (store_cmds.init, store_cmds.migrate, store_cmds.status, store_cmds.sql, store_cmds.verify,
                ingest_cmds.synth, ingest_cmds.ingest, label_cmds.labels, label_cmds.genes,
                label_cmds.foldchanges, cohort_cmds.cohort, pretrain_cmds.pretrain, embed_cmds.encoders,
                embed_cmds.embed, embed_cmds.embeddings, train_cmds.train, train_cmds.runs, train_cmds.compare,
                predict_cmds.predict,
                report_cmds.heatmap, report_cmds.report,
                interop_cmds.features, interop_cmds.export, serve_cmds.serve, demo_cmds.demo):
    main.add_command(command)


if __name__ == "__main__":
    main()
