"""`histstore train`, `histstore runs list|show`, `histstore compare`."""
from __future__ import annotations

import math

import click

from histstore.cli.common import (HiststoreGroup, RegistryChoice, emit_rows, format_option, mil_model_names,
                                  pass_store)


def _fmt_summary(summary: dict) -> str:
    keys = [k for k in ("auc", "accuracy", "balanced_accuracy", "f1", "mse", "pearson", "spearman", "case_auc",
                        "case_accuracy", "case_pearson") if k in summary]

    def one(k):
        mean, sd = summary[k]
        if mean is None or math.isnan(mean):
            return f"{k} undefined in every fold"
        return f"{k} {mean:.3f} ± {sd:.3f}" if sd is not None and not math.isnan(sd) else f"{k} {mean:.3f}"

    return ", ".join(one(k) for k in keys)


@click.command()
@click.option("--cohort", help="Cohort to train on.")
@click.option("--task", help="Label task (e.g. tumor) or gene task (de:TP53, up:KRAS, fc:EGFR); "
                             "with --genes, the kind alone (de, up, down, fc).")
@click.option("--embeddings", help="Embedding set (name or id) [default: the cohort's only one].")
@click.option("--model", type=RegistryChoice(mil_model_names), default="gated-attention", show_default=True)
@click.option("--genes", help="'drivers' or a comma-separated list: one model per gene (or one joint model, "
                             "--joint) under one parent run.")
@click.option("--joint", is_flag=True,
              help="With --genes: ONE model for the whole panel (a shared embedding, one attention branch and "
                   "output per gene; gated-attention or attention), same folds for every gene; each gene's "
                   "results still land in its own child run.")
@click.option("--folds", type=int, default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=50, show_default=True, help="At most; early stopping on validation.")
@click.option("--patience", type=int, default=10, show_default=True, help="Epochs without validation improvement.")
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--weight-decay", type=float, default=1e-5, show_default=True)
@click.option("--dropout", type=float, default=0.0, show_default=True)
@click.option("--bags-per-step", type=int, default=1, show_default=True, help="1 = one slide per step (HistCode).")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True)
@click.option("--select-on", type=click.Choice(["loss", "auc", "last"]), default="loss", show_default=True,
              help="The epoch kept: best validation loss or AUC, or the last (a fixed schedule of --epochs, for "
                   "cohorts whose validation slides are too few to choose an epoch).")
@click.option("--min-epochs", type=int, default=1, show_default=True, help="No early stopping before this epoch.")
@click.option("--val-fraction", type=float,
              help="Validation share of each fold's non-test cases [default: 1/9, HistCode's 80/10/10 with 5 "
                   "folds]; 0 trains on all of them for --epochs (the last epoch is kept).")
@click.option("--standardize/--no-standardize", default=True, show_default=True,
              help="Z-score each feature with the fold's training bags' statistics (stored with the fold's model).")
@click.option("--hidden-dim", type=int, help="Model's tile embedding width [default: the model's, e.g. 512].")
@click.option("--attn-dim", type=int, help="Attention width of attention models [default: the model's, e.g. 256].")
@click.option("--decision-threshold", type=click.Choice(["0.5", "val", "train"]), default="0.5", show_default=True,
              help="Binary tasks: predict positive above 0.5, or above the cut that is most accurate on the "
                   "fold's validation (val) or training (train) bags.")
@click.option("--threshold", type=float, default=1.0, show_default=True, help="|log2FC| threshold of gene tasks.")
@click.option("--p-cut", type=float, help="Also require p_adj <= this for gene tasks.")
@click.option("--fc-source", help="Fold-change source when there are several.")
@click.option("--gene-slides", type=click.Choice(["tumour", "all"]), default="tumour", show_default=True,
              help="Gene tasks: train on the case's tumour slides (task tumor labels, when the slides have them), "
                   "or on all its slides (each carries the case's fold change).")
@click.option("--positive", help="Positive class of a binary task.")
@click.option("--device", default="auto", show_default=True)
@click.option("--memory-budget", default="auto", show_default=True,
              help="Memory for the bags (e.g. 6GB, 512MB). The cohort is packed in memory when it fits, "
                   "else streamed from disk per step; the same seed gives the same results either way. "
                   "auto: half the free RAM (free GPU memory when training on a GPU).")
@click.option("--final", is_flag=True,
              help="After cross-validation, fit one model on all the slides (10 % of the cases for early "
                   "stopping); `histstore predict` applies it [default: predict uses the fold models].")
@click.option("--resume", "resume_run", type=int, help="Continue an interrupted run (other options are ignored).")
@pass_store
def train(store, cohort, task, embeddings, model, genes, joint, folds, seed, epochs, patience, lr, weight_decay, dropout,
          bags_per_step, class_weight, select_on, min_epochs, val_fraction, standardize, hidden_dim, attn_dim,
          decision_threshold, threshold, p_cut, fc_source, gene_slides, positive, device, memory_budget, final,
          resume_run):
    """Train and cross-validate a MIL model on a cohort's embeddings; results go to the catalog."""
    from histstore.train import TrainSettings
    from histstore.train_joint import resume, train as run_train  # joint gene runs, else train.py's

    def notify(line: str) -> None:
        click.echo(line, err=True)

    if resume_run is not None:
        r = resume(store, resume_run, notify=notify)
    else:
        if not cohort or not task:
            raise click.UsageError("--cohort and --task are required (or --resume RUN)")
        gene_list = tuple(g.strip() for g in genes.split(",") if g.strip()) if genes else None
        s = TrainSettings(cohort=cohort, task=task, embeddings=embeddings, model=model, folds=folds, seed=seed,
                          epochs=epochs, patience=patience, lr=lr, weight_decay=weight_decay, dropout=dropout,
                          bags_per_step=bags_per_step, class_weight=class_weight, select_on=select_on,
                          device=device, threshold=threshold, p_cut=p_cut, fc_source=fc_source,
                          positive=positive, genes=gene_list, joint=joint, gene_slides=gene_slides,
                          min_epochs=min_epochs,
                          standardize=standardize, hidden_dim=hidden_dim, attn_dim=attn_dim,
                          decision_threshold=decision_threshold, final=final,
                          memory_budget=None if memory_budget == "auto" else memory_budget,
                          **({"val_fraction": val_fraction} if val_fraction is not None else {}))
        r = run_train(store, s, notify=notify)
    if r.children or r.task.endswith(":*"):
        click.echo(f"run {r.run_id} ({r.task}, {r.model}): " + (f"{len(r.children)} genes in one joint model"
                                                               if joint else f"{len(r.children)} gene models"))
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
    click.echo(f"run {r.run_id} ({r.task}, {r.model}, {r.n_bags} slides of {r.n_cases} cases): "
               f"{_fmt_summary(r.summary)} "
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

    import pyarrow as pa

    from histstore.evaluation.pooled import N_BOOT, N_PERM
    from histstore.runs import show_run

    r = show_run(store, run_id)
    run = r.run
    click.echo(f"run {run['run_id']}: {run['kind']} {run['task'] or ''} {run['model'] or ''} on cohort "
               f"{run['cohort']} - {r.state}" + (f" ({run['error']})" if run["error"] else ""))
    click.echo(f"seed {run['seed']}, code {run['code_version']}, started {run['started_at']}, "
               f"finished {run['finished_at']}")
    if r.summary.num_rows:
        click.echo("\ntest metrics (mean ± sd over the n_folds folds where each is defined; "
                   "undefined_folds: where it is not, e.g. one class in the fold):")
        emit_rows(r.summary)
    if r.per_fold.num_rows:
        click.echo("\nper fold (test; case_*: slide scores averaged per case):")
        emit_rows(r.per_fold)
    st = r.statistics
    if st is not None and len(st.intervals):
        click.echo(f"\npooled test predictions, 95 % intervals from {N_BOOT} case-stratified bootstrap "
                   "resamples (computed now, not stored):")
        emit_rows(pa.Table.from_pandas(st.intervals, preserve_index=False))
    if r.children is not None:
        click.echo("\nper gene:")
        emit_rows(r.children)
    if st is not None and st.gene_tests is not None and len(st.gene_tests):
        click.echo(f"\nper gene, pooled test AUC against chance: one-sided permutation p ({N_PERM:,} "
                   f"permutations of labels within folds; p >= {1 / (N_PERM + 1):.1e}), Benjamini-Hochberg q; "
                   "passes: q < 0.05:")
        emit_rows(pa.Table.from_pandas(st.gene_tests, preserve_index=False))
    if r.parent_metrics:
        click.echo("\n" + ", ".join(f"{k} = {v:.4g}" for k, v in r.parent_metrics.items()))
    for n in (st.notes if st is not None else []):
        click.echo(f"note: {n}", err=True)
    click.echo("\nsettings: " + json.dumps({k: v for k, v in run["settings"].items()
                                          if k not in ("train_config", "task_spec")}, default=str))


@click.command()
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--subset", type=click.Choice(["test", "val"]), default="test", show_default=True)
@format_option()
@pass_store
def compare(store, run_ids, subset, fmt):
    """Runs side by side: one row per metric, mean ± sd over folds with the number of folds
    (the paper's Table 1); pooled test AUC and accuracy with 95 % case-bootstrap intervals
    (slide and case level); for runs on the first run's splits, paired tests of the AUC
    difference (DeLong, paired case bootstrap)."""
    from histstore.runs import compare as run_compare

    c = run_compare(store, list(run_ids), subset)
    emit_rows(c.table, fmt)
    for n in c.notes:
        click.echo(n, err=True)
