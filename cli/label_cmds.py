"""Commands for labels, genes and fold changes."""
from __future__ import annotations

from pathlib import Path

import click

from histstore.cli.common import HiststoreGroup, emit_rows, format_option, pass_store

existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


@click.group(cls=HiststoreGroup)
def labels():
    """Slide or case labels (e.g. tumour vs normal)."""


@labels.command("import")
@click.argument("file", type=existing_file)
@click.option("--task", required=True, help="Task name, e.g. tumor.")
@click.option("--level", type=click.Choice(["slide", "case"]), default="slide", show_default=True,
              help="Whether rows name slides (slide_id) or cases (case_id).")
@click.option("--column", help="Column holding the values (default: the task's name, or the only other column).")
@click.option("--source", help="Where the labels came from (default: the file name).")
@pass_store
def labels_import(store, file, task, level, column, source):
    """Import labels from a CSV/TSV; replaces the task's labels in one transaction."""
    from histstore.labels import import_labels

    r = import_labels(store, file, task, level, column, source)
    click.echo(f"task {r.task}: {r.n_rows} {r.level} labels ({_counts(r.class_counts)})"
               + (f"; replaced {r.replaced}" if r.replaced else ""))


@labels.command("from-barcodes")
@click.option("--task", default="tumor", show_default=True)
@click.option("--cohort", help="Only this cohort's slides.")
@pass_store
def labels_from_barcodes(store, task, cohort):
    """Tumour vs normal from GDC sample types or TCGA barcodes (01-09 tumour, 10-19 normal)."""
    from histstore.labels import labels_from_barcodes as derive

    r = derive(store, task, cohort)
    click.echo(f"task {r.task}: {r.n_rows} slide labels ({_counts(r.class_counts)})")
    if r.unlabelled:
        shown = ", ".join(r.unlabelled[:5]) + (" ..." if len(r.unlabelled) > 5 else "")
        click.echo(f"{len(r.unlabelled)} slide(s) have no tumour/normal sample type: {shown}", err=True)


@labels.command("list")
@format_option()
@pass_store
def labels_list(store, fmt):
    """Label tasks with their class counts."""
    from histstore.labels import list_tasks

    emit_rows(list_tasks(store), fmt)


@click.group(cls=HiststoreGroup)
def genes():
    """Gene lists (e.g. cancer driver genes)."""


@genes.command("import")
@click.argument("file", type=existing_file)
@click.option("--drivers", is_flag=True, help="Mark these genes as cancer driver genes.")
@click.option("--source", help="Name of the list (default: the file's stem).")
@pass_store
def genes_import(store, file, drivers, source):
    """Import gene symbols (one per line, or a CSV with a `symbol` column)."""
    from histstore.genes import import_genes

    r = import_genes(store, file, drivers, source)
    click.echo(f"{r.n_genes} genes ({r.n_new} new" + (f", {r.n_marked_driver} marked as drivers" if drivers else "") + ")")


@click.group(cls=HiststoreGroup)
def foldchanges():
    """Per-case gene fold changes (differential expression)."""


@foldchanges.command("import")
@click.argument("file", type=existing_file)
@click.option("--source", required=True, help="Name for this set of values (re-import replaces it).")
@click.option("--format", "fmt", type=click.Choice(["long", "wide"]), default="long", show_default=True,
              help="long: case_id,gene,log2_fold_change[,p_adj]; wide: case_id + one column per gene.")
@click.option("--value", type=click.Choice(["log2fc", "ratio"]), default="log2fc", show_default=True,
              help="ratio values (long column `fold_change`) are stored as log2.")
@pass_store
def foldchanges_import(store, file, source, fmt, value):
    """Import fold changes; unknown genes are added as non-drivers."""
    from histstore.genes import import_fold_changes

    r = import_fold_changes(store, file, source, fmt, value)
    click.echo(f"source {r.source}: {r.n_values} values for {r.n_cases} cases x {r.n_genes} genes"
               f" ({r.n_new_genes} new genes)" + (f"; replaced {r.replaced}" if r.replaced else ""))
