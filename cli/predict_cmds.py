"""`histstore predict`: apply a trained run to a cohort."""
from __future__ import annotations

import math

import click

from histstore.cli.common import emit_rows, format_option, pass_store


def _line(r) -> str:
    shown = [k for k in ("auc", "accuracy", "balanced_accuracy", "pearson", "mse", "case_auc", "case_accuracy",
                         "case_pearson") if k in r.metrics]
    metrics = ", ".join(f"{k} {r.metrics[k]:.3f}" if not math.isnan(r.metrics[k]) else f"{k} undefined"
                        for k in shown)
    return (f"run {r.run_id} ({r.task}, {r.use} model{'s' if r.use == 'folds' else ''} of run {r.source_run}): "
            f"{r.n_slides} slides, {r.n_labelled} labelled" + (f": {metrics}" if metrics else "")
            + f" [{r.seconds:.1f} s]")


@click.command()
@click.option("--run", "run_id", help="Train run whose models predict (a gene run: every gene).")
@click.option("--cohort", help="Cohort to predict.")
@click.option("--embeddings", help="The cohort's embedding set (name or id) [default: the run's set, or one "
                                   "made like it that holds the cohort].")
@click.option("--task", help="The run's task (a gene run: predict this gene only).")
@click.option("--use", type=click.Choice(["auto", "final", "folds"]), default="auto", show_default=True,
              help="auto: the run's final model (train --final) if it has one, else the mean of its fold models.")
@click.option("--device", default="auto", show_default=True)
@click.option("--resume", "resume_run", type=int, help="Continue an interrupted evaluate run (other options "
                                                       "but --device are ignored).")
@format_option()
@pass_store
def predict(store, run_id, cohort, embeddings, task, use, device, resume_run, fmt):
    """Apply a train run's models to a cohort: a run of kind evaluate with predictions, tile
    attention and, where the cohort has labels for the task, metrics (slide and case level)."""
    import pyarrow as pa

    from histstore.predict import predict as run_predict, resume_predict

    def notify(line: str) -> None:
        click.echo(line, err=True)

    if resume_run is not None:
        r = resume_predict(store, resume_run, device=device)
    else:
        if not run_id or not cohort:
            raise click.UsageError("--run and --cohort are required (or --resume RUN)")
        r = run_predict(store, run_id, cohort, embeddings=embeddings, task=task, use=use, device=device,
                        notify=notify)
    if r.children or r.task.endswith(":*"):
        click.echo(f"run {r.run_id} ({r.task}): {len(r.children)} gene runs predicted")
        for c in r.children:
            click.echo("  " + _line(c))
        for n in r.notes:
            click.echo(f"note: {n}", err=True)
        return
    click.echo(_line(r))
    for n in r.notes:
        click.echo(f"note: {n}", err=True)
    if r.intervals is not None and len(r.intervals):
        click.echo("95 % intervals (case-stratified bootstrap of the labelled slides):")
        emit_rows(pa.Table.from_pandas(r.intervals, preserve_index=False), fmt)
