"""Commands about the store itself: init, migrate, status, sql."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from histstore.cli.common import (check_new_file, emit_rows, force_option, format_option, get_store,
                                  output_option, pass_store)


@click.command()
@click.pass_context
def init(ctx):
    """Create a store (folder layout + catalog at the newest schema). Harmless if it exists."""
    from histstore.store import Store

    given = get_store(ctx, must_exist=False)
    store, created = Store.init(given.root, wait=given.wait, exclusive=given.exclusive)
    verb = "created" if created else "already exists, left unchanged:"
    click.echo(f"store {verb} {store.root}")


@click.command()
@click.option("--show", is_flag=True, help="Only show the current and newest revisions.")
@click.option("--to", "revision", default="head", show_default=True,
              help="Target revision (an older one downgrades).")
@pass_store
def migrate(store, show, revision):
    """Upgrade (or downgrade) the store's catalog schema."""
    from histstore.migrate_store import migrate_store, revisions

    if show:
        current, head = revisions(store)
        click.echo(f"current: {current}\nnewest:  {head}")
        return
    before, after = migrate_store(store, revision)
    if before == after:
        click.echo(f"catalog already at revision {after}")
    else:
        click.echo(f"catalog migrated from {before} to {after}")


@click.command()
@pass_store
def status(store):
    """Counts of cohorts, cases, slides, tiles, embedding sets and runs; store size."""
    from histstore.status import store_status

    s = store_status(store)
    click.echo(f"store:   {s.root}")
    click.echo(f"schema:  {s.schema_revision}")
    click.echo(f"size:    {s.size_bytes / 1e6:.1f} MB")
    for name, n in s.counts.items():
        click.echo(f"{name + ':':<18}{n:>12,}")
    if s.slides_by_status:
        click.echo("slides by status: " + ", ".join(f"{k} {v}" for k, v in s.slides_by_status.items()))
    if s.runs_by_status:
        click.echo("runs by kind:status: " + ", ".join(f"{k} {v}" for k, v in s.runs_by_status.items()))
    from histstore.liveness import age_text, progress_text

    for r in s.running:
        what = " ".join(str(x) for x in (r["kind"], r["task"], r["model"]) if x)
        progress = progress_text(r["progress_done"], r["progress_total"], r["progress_unit"])
        if r["state"] == "running":
            click.echo(f"running: run {r['run_id']} {what} on {r['cohort']}"
                       + (f", {progress}" if progress else "")
                       + f", heartbeat {age_text(r['heartbeat_age_s'])} (PID {r['pid']} on {r['host']})")
        else:
            click.echo(f"interrupted: run {r['run_id']} {what} on {r['cohort']}"
                       + (f" at {progress}" if progress else "")
                       + f": its process is gone (PID {r['pid']} on {r['host']}, heartbeat "
                         f"{age_text(r['heartbeat_age_s'])}); `histstore verify --repair` marks it")


@click.command()
@click.argument("query", required=False)
@click.option("-f", "--file", "sql_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read SQL from a file.")
@click.option("--write", is_flag=True,
              help="Allow statements that change the catalog, with DuckDB's full power (files, "
                   "COPY, ATTACH, extensions): one transaction, rolled back whole on error.")
@format_option()
@output_option()
@force_option()
@pass_store
def sql(store, query, sql_file, write, fmt, output, force):
    """Run SQL on the catalog (QUERY, -f FILE, or stdin). Read-only unless --write.

    Without --write the catalog is opened read-only in DuckDB's sandbox: it can be read and
    nothing else (no COPY TO, EXPORT DATABASE, ATTACH, INSTALL/LOAD, read_csv of files, SET);
    -o FILE writes the result.

    \b
    Examples:
      histstore sql "SELECT * FROM cohort_overview"
      histstore sql "SELECT * FROM run_summary WHERE metric = 'auc'" --format csv -o auc.csv
    """
    from histstore.sql import run_sql

    if query and sql_file:
        raise click.UsageError("give QUERY or -f FILE, not both")
    check_new_file(output, force)
    if sql_file:
        query = sql_file.read_text()
    elif not query and not sys.stdin.isatty():
        query = sys.stdin.read()
    table = run_sql(store, query or "", write=write)
    if table is None:
        click.echo("ok", err=True)
        return
    emit_rows(table, fmt, output, force=force)


@click.command()
@click.option("--repair", is_flag=True,
              help="Remove orphan arrays and leftovers of interrupted writes, mark runs whose process "
                   "is gone as interrupted. Never deletes registered data.")
@click.option("--quick", is_flag=True,
              help="Check array shapes and that checkpoints exist, without reading every byte for "
                   "checksums.")
@pass_store
def verify(store, repair, quick):
    """Check that catalog and files agree (fsck): arrays (shape, checksum), orphans, leftovers,
    dead runs, checkpoints (sha256), tiles/tilings/slides. One line per problem; exits 1 if any
    remain."""
    from histstore.verify import verify as run_verify

    r = run_verify(store, repair=repair, quick=quick, on_problem=lambda p: None)
    for p in r.problems:
        click.echo(p.line())
    fixed = sum(p.repaired for p in r.problems)
    left = len(r.unrepaired)
    click.echo(f"checked {r.n_arrays} arrays ({'shapes' if quick else 'shapes and checksums'}) and "
               f"{r.n_checkpoints} checkpoints in {r.seconds:.1f} s: "
               + (f"{left} problem(s)" if left else "no problems")
               + (f", {fixed} repaired" if fixed else "")
               + (" (run with --repair to fix the repairable ones)"
                  if left and not repair and any(p.repairable for p in r.problems) else ""),
               err=bool(left))
    if left:
        raise click.exceptions.Exit(1)
