"""`histstore train`, `histstore runs list|show`, `histstore compare`."""
from __future__ import annotations

import math

import click

from histstore.cli.common import (HiststoreGroup, RegistryChoice, emit_rows, format_option, mil_model_names,
                                  pass_store)


def _fmt_summary(summary: dict) -> str:
    keys = [k for k in ("auc", "accuracy", "balanced_accuracy", "f1", "mse", "pearson", "spearman") if k in summary]
    return ", ".join(f"{k} {summary[k][0]:.3f} ± {summary[k][1]:.3f}"
                     if summary[k][1] is not None and not math.isnan(summary[k][1]) else f"{k} {summary[k][0]:.3f}"
                     for k in keys)


@click.command()
@click.option("--cohort", help="Cohort to train on.")
@click.option("--task", help="Label task (e.g. tumor) or gene task (de:TP53, up:KRAS, fc:EGFR); "
                             "with --genes, the kind alone (de, up, down, fc).")
@click.option("--embeddings", help="Embedding set (name or id) [default: the cohort's only one].")
@click.option("--model", type=RegistryChoice(mil_model_names), default="gated-attention", show_default=True)
@click.option("--genes", help="'drivers' or a comma-separated list: one model per gene under one parent run.")
@click.option("--folds", type=int, default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=50, show_default=True, help="At most; early stopping on validation.")
@click.option("--patience", type=int, default=10, show_default=True, help="Epochs without validation improvement.")
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--weight-decay", type=float, default=1e-5, show_default=True)
@click.option("--dropout", type=float, default=0.0, show_default=True)
@click.option("--bags-per-step", type=int, default=1, show_default=True, help="1 = one slide per step (HistCode).")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True)
@click.option("--select-on", type=click.Choice(["loss", "auc"]), default="loss", show_default=True,
              help="Validation criterion for choosing the epoch.")
@click.option("--threshold", type=float, default=1.0, show_default=True, help="|log2FC| threshold of gene tasks.")
@click.option("--p-cut", type=float, help="Also require p_adj <= this for gene tasks.")
@click.option("--fc-source", help="Fold-change source when there are several.")
@click.option("--positive", help="Positive class of a binary task.")
@click.option("--device", default="auto", show_default=True)
@click.option("--memory-budget", default="auto", show_default=True,
              help="Memory for the bags (e.g. 6GB, 512MB). The cohort is packed in memory when it fits, "
                   "else streamed from disk per step; the same seed gives the same results either way. "
                   "auto: half the free RAM (free GPU memory when training on a GPU).")
@click.option("--resume", "resume_run", type=int, help="Continue an interrupted run (other options are ignored).")
@pass_store
def train(store, cohort, task, embeddings, model, genes, folds, seed, epochs, patience, lr, weight_decay, dropout,
          bags_per_step, class_weight, select_on, threshold, p_cut, fc_source, positive, device, memory_budget,
          resume_run):
    """Train and cross-validate a MIL model on a cohort's embeddings; results go to the catalog."""
    from histstore.train import TrainSettings, resume, train as run_train

    if resume_run is not None:
        r = resume(store, resume_run)
    else:
        if not cohort or not task:
            raise click.UsageError("--cohort and --task are required (or --resume RUN)")
        gene_list = tuple(g.strip() for g in genes.split(",") if g.strip()) if genes else None
        s = TrainSettings(cohort=cohort, task=task, embeddings=embeddings, model=model, folds=folds, seed=seed,
                          epochs=epochs, patience=patience, lr=lr, weight_decay=weight_decay, dropout=dropout,
                          bags_per_step=bags_per_step, class_weight=class_weight, select_on=select_on,
                          device=device, threshold=threshold, p_cut=p_cut, fc_source=fc_source,
                          positive=positive, genes=gene_list,
                          memory_budget=None if memory_budget == "auto" else memory_budget)
        r = run_train(store, s)
    if r.children or r.task.endswith(":*"):
        click.echo(f"run {r.run_id} ({r.task}, {r.model}): {len(r.children)} gene models")
        for c in r.children:
            click.echo(f"  run {c.run_id} {c.task}: {_fmt_summary(c.summary)}")
        shown = {n for c in r.children for n in c.notes}
        for n in sorted(shown):
            click.echo(f"note: {n}", err=True)
        for n in r.notes:
            click.echo(f"  skipped {n}")
        if "spearman_metric_vs_mean_abs_log2fc" in r.summary:
            click.echo(f"Spearman rho of AUC vs mean |log2FC|: {r.summary['spearman_metric_vs_mean_abs_log2fc'][0]:.3f}")
        return
    click.echo(f"run {r.run_id} ({r.task}, {r.model}, {r.n_bags} slides): {_fmt_summary(r.summary)} "
               f"[{r.seconds:.1f} s]")
    for n in r.notes:
        click.echo(f"note: {n}", err=True)
    if r.n_without_target or r.n_without_embedding:
        click.echo(f"left out: {r.n_without_target} slides without a {r.task} target, "
                   f"{r.n_without_embedding} without embeddings", err=True)


@click.group(cls=HiststoreGroup)
def runs():
    """Training and pretraining runs."""


@runs.command("list")
@click.option("--kind", type=click.Choice(["pretrain", "embed", "train", "evaluate"]))
@click.option("--cohort")
@format_option()
@pass_store
def runs_list(store, kind, cohort, fmt):
    """All runs with their status and main test metric (AUC, or Pearson for fc: tasks)."""
    from histstore.runs import list_runs

    emit_rows(list_runs(store, kind, cohort), fmt)


@runs.command("show")
@click.argument("run_id")
@pass_store
def runs_show(store, run_id):
    """A run's settings, per-fold and summary metrics (per-gene table for gene runs)."""
    import json

    from histstore.runs import show_run

    r = show_run(store, run_id)
    run = r.run
    click.echo(f"run {run['run_id']}: {run['kind']} {run['task'] or ''} {run['model'] or ''} on cohort "
               f"{run['cohort']} - {run['status']}" + (f" ({run['error']})" if run["error"] else ""))
    click.echo(f"seed {run['seed']}, code {run['code_version']}, started {run['started_at']}, "
               f"finished {run['finished_at']}")
    if r.summary.num_rows:
        click.echo("\ntest metrics (mean ± sd over folds):")
        emit_rows(r.summary)
    if r.per_fold.num_rows:
        click.echo("\nper fold (test):")
        emit_rows(r.per_fold)
    if r.children is not None:
        click.echo("\nper gene:")
        emit_rows(r.children)
    if r.parent_metrics:
        click.echo("\n" + ", ".join(f"{k} = {v:.4g}" for k, v in r.parent_metrics.items()))
    click.echo("\nsettings: " + json.dumps({k: v for k, v in run["settings"].items()
                                          if k not in ("train_config", "task_spec")}, default=str))


@click.command()
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--subset", type=click.Choice(["test", "val"]), default="test", show_default=True)
@format_option()
@pass_store
def compare(store, run_ids, subset, fmt):
    """Runs side by side: one row per metric, mean ± sd over folds (the paper's Table 1)."""
    from histstore.runs import compare_runs

    emit_rows(compare_runs(store, list(run_ids), subset), fmt)
