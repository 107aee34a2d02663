"""Commands for cohorts."""
from __future__ import annotations

from pathlib import Path

import click

from histstore.cli.common import HiststoreGroup, emit_rows, format_option, pass_store


@click.group(cls=HiststoreGroup)
def cohort():
    """Named snapshots of slides that jobs run on."""


@cohort.command("create")
@click.argument("name")
@click.option("--slides", "slides_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File of slide_ids (one per line, or CSV with slide_id).")
@click.option("--sql", help="A query returning a slide_id column.")
@click.option("--from", "from_cohort", help="Start from this cohort's slides...")
@click.option("--where", help="...keeping those matching this condition on `slides` columns.")
@click.option("--description")
@pass_store
def cohort_create(store, name, slides_file, sql, from_cohort, where, description):
    """Create cohort NAME from a slide list, a SQL query, or a filtered cohort.

    \b
    Examples:
      histstore cohort create luad --sql "SELECT slide_id FROM slide_labels WHERE task='tumor'"
      histstore cohort create tumours --from demo_lung --where "slide_id LIKE '%-01Z-%'"
    """
    from histstore.cohorts import create_cohort

    r = create_cohort(store, name, slides_file, sql, from_cohort, where, description)
    click.echo(f"cohort {r.name}: {r.n_slides} slides from {r.n_cases} cases")


@cohort.command("list")
@format_option()
@pass_store
def cohort_list(store, fmt):
    """All cohorts with slide and case counts."""
    from histstore.cohorts import list_cohorts

    emit_rows(list_cohorts(store), fmt)


@cohort.command("show")
@click.argument("name")
@pass_store
def cohort_show(store, name):
    """Slides, cases, tilings, label balance per task and embedding coverage of a cohort."""
    from histstore.cohorts import show_cohort

    r = show_cohort(store, name)
    click.echo(f"cohort {r.name}: {r.n_slides} slides, {r.n_cases} cases"
               + (f" ({', '.join(f'{k} {v}' for k, v in r.slides_by_status.items())})" if r.slides_by_status else ""))
    if r.description:
        click.echo(f"description: {r.description}")
    if r.definition:
        click.echo(f"definition:  {r.definition}")
    for title, table in (("tilings", r.n_tiles), ("label balance", r.label_balance),
                         ("embedding sets", r.embeddings)):
        click.echo(f"\n{title}:")
        if table.num_rows:
            emit_rows(table, "table")
        else:
            click.echo("  (none)")
    for w in r.warnings:
        click.echo(f"warning: {w}")
