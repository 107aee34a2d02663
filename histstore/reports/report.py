"""`histstore report RUN`: a train run's evaluation as PNG figures and one HTML page.

What is drawn depends on the run (all from the catalog; nothing is recomputed by a model):
- classification: ROC curves per fold from the test predictions (score = probability of the
  positive class, the last of runs.settings['classes']) with the mean curve and mean AUC
  (HistCode reports 5-fold mean AUC), the confusion matrix summed over the test folds;
- regression (fc:GENE): predicted versus true values, coloured by fold;
- every run with folds: the per-fold test metrics table and the training curves (train and
  validation loss per epoch, the selected epoch marked);
- a gene run's parent (children with tasks de:GENE, up:GENE, ...): each gene's mean test AUC
  (Pearson r for fc) against the cohort's mean |log2 fold change| of that gene, with the
  Spearman rho (HistCode: prediction accuracy rises with the gene's fold-change level), and
  each gene's within-fold permutation p-value and Benjamini-Hochberg q (genes with q < 0.05
  are marked: filled in the figure, "yes" in the table);
- every run: how many folds each mean rests on and the folds where a metric was undefined;
  the pooled test predictions' AUC and accuracy, slide and case level, with 95 % case
  bootstrap intervals (`histstore.evaluation`, computed when the report is written).

The HTML page embeds every image as a base64 data URI (one file that can be mailed) and links
each to its PNG beside it (relative links, so the folder can be moved). All files are
registered in `artifacts` in one transaction once written.
"""
from __future__ import annotations

import base64
import html
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from histstore.catalog.bulk import query_arrow
from histstore.catalog.runs import read_run_report
from histstore.errors import MissingStep
from histstore.reports.common import (REPORT_DIR, Artifact, atomic_write, is_regression, new_figure,
                                      register_artifacts, require_train_run, run_dir, save_figure)
from histstore.store import Store

if TYPE_CHECKING:  # the statistics import scipy and sklearn: loaded when a report is written
    from histstore.evaluation.run_stats import RunStatistics

HTML_NAME = "report.html"
_CLASS_METRICS = ("auc", "accuracy", "balanced_accuracy", "f1", "n")
_REG_METRICS = ("pearson", "spearman", "mse", "n")
_COUNT_COLUMNS = {"n", "folds", "run_id", "fold", "selected epoch", "n_undefined", "case_n", "slides / cases",
                  "cases", "n_perm", "auc_folds"}


@dataclass
class ReportResult:
    run_id: int
    out_dir: Path
    html: Path
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG
    mean_auc: float | None = None
    spearman_rho: float | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def paths(self) -> list[Path]:
        return [self.html, *self.figures.values()]


@dataclass
class _RunData:
    run: dict
    summary: pd.DataFrame
    per_fold: pd.DataFrame
    children: pd.DataFrame | None
    parent_metrics: dict[str, float]
    preds: pd.DataFrame          # test predictions: fold, slide_id, label, target, score, predicted
    curves: pd.DataFrame         # fold, subset, step, value (loss per epoch)
    best_epoch: dict[int, float]
    embedding_set: str | None
    encoder: str | None
    parent_task: str | None
    statistics: RunStatistics | None = None


def _load(store: Store, run_id: int | str) -> _RunData:
    from histstore.evaluation.run_stats import run_statistics

    with store.read() as conn:
        run = require_train_run(conn, run_id)
        rep = read_run_report(conn, run["run_id"])
        statistics = run_statistics(conn, run)
    rid = int(run["run_id"])
    with store.read() as conn:
        preds = query_arrow(conn, "SELECT fold, slide_id, label, target, score, predicted FROM predictions "
                                  "WHERE run_id = $1 AND subset = 'test' AND target IS NOT NULL "
                                  "ORDER BY fold, slide_id", [rid]).to_pandas()
        curves = query_arrow(conn, "SELECT fold, subset, step, value FROM metrics WHERE run_id = $1 AND "
                                   "name = 'loss' AND step IS NOT NULL AND fold IS NOT NULL "
                                   "ORDER BY fold, subset, step", [rid]).to_pandas()
        best = dict(conn.exec_driver_sql(
            "SELECT fold, value FROM metrics WHERE run_id = ? AND subset = 'val' AND name = 'best_epoch' "
            "AND step IS NULL AND fold IS NOT NULL", (rid,)).all())
        q = conn.exec_driver_sql
        emb = q("SELECT name FROM embedding_sets WHERE embedding_set_id = ?",
                (run["embedding_set_id"],)).scalar() if run["embedding_set_id"] is not None else None
        enc = q("SELECT name FROM encoders WHERE encoder_id = ?",
                (run["encoder_id"],)).scalar() if run["encoder_id"] is not None else None
        parent_task = q("SELECT task FROM runs WHERE run_id = ?",
                        (run["parent_run_id"],)).scalar() if run["parent_run_id"] is not None else None
    children = rep.children.to_pandas() if rep.children is not None else None
    if children is not None and statistics.gene_tests is not None:
        tests = statistics.gene_tests[["run_id", "pooled_auc", "perm_p", "bh_q", "passes"]]
        children = children.merge(tests, on="run_id", how="left")
    return _RunData(run, rep.summary.to_pandas(), rep.per_fold.to_pandas(), children, rep.parent_metrics,
                    preds, curves, {int(k): v for k, v in best.items()}, emb, enc, parent_task, statistics)


# ------------------------------------------------------------------------------ figures
def _roc(d: _RunData, path: Path, notes: list[str]) -> float | None:
    """Per-fold ROC curves, the mean curve (vertical averaging over a common FPR grid) and the
    mean of the per-fold AUCs. Returns the mean AUC (None when no fold has both classes)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    classes = list(d.run["settings"].get("classes") or [])
    pos = classes[-1]
    grid = np.linspace(0, 1, 201)
    fig = new_figure(figsize=(6.2, 5.6))
    ax = fig.add_subplot()
    aucs, tprs = [], []
    for fold, g in d.preds.groupby("fold", sort=True):
        y = (g["label"].astype(str) == pos).to_numpy()
        s = g["score"].to_numpy(np.float64)
        if y.all() or not y.any():
            notes.append(f"fold {fold}: one class only among its {len(g)} test slides, no ROC curve")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        auc = float(roc_auc_score(y, s))
        aucs.append(auc)
        interp = np.interp(grid, fpr, tpr)
        interp[0] = 0.0
        tprs.append(interp)
        ax.plot(fpr, tpr, lw=1.2, alpha=0.75, drawstyle="default",
                label=f"fold {fold}: AUC {auc:.3f} (n={len(g)})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.9, color="grey", label="chance")
    mean_auc = None
    if aucs:
        mean_tpr = np.mean(tprs, axis=0)
        mean_tpr[-1] = 1.0
        mean_auc = float(np.mean(aucs))
        sd = float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0
        ax.plot(grid, mean_tpr, color="black", lw=2.2, label=f"mean: AUC {mean_auc:.3f} ± {sd:.3f}")
        if len(tprs) > 1:
            band = np.std(tprs, axis=0)
            ax.fill_between(grid, np.clip(mean_tpr - band, 0, 1), np.clip(mean_tpr + band, 0, 1),
                            color="grey", alpha=0.2, label="± 1 sd")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
           xlabel="false positive rate", ylabel=f"true positive rate (positive class: {pos})",
           title=f"ROC, test folds · run {d.run['run_id']} ({d.run['model']}, {d.run['task']})")
    ax.title.set_fontsize(10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return mean_auc


def _confusion(d: _RunData, path: Path) -> None:
    classes = list(d.run["settings"].get("classes") or [])
    extra = sorted((set(d.preds["label"].astype(str)) | set(d.preds["predicted"].astype(str))) - set(classes))
    classes = classes + extra
    index = {c: i for i, c in enumerate(classes)}
    m = np.zeros((len(classes), len(classes)), np.int64)
    for t, p in zip(d.preds["label"].astype(str), d.preds["predicted"].astype(str)):
        m[index[t], index[p]] += 1
    side = 2.2 + 0.9 * len(classes)
    fig = new_figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues", vmin=0)
    rows = m.sum(1, keepdims=True)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            share = f"\n{100 * m[i, j] / rows[i, 0]:.0f}%" if rows[i, 0] else ""
            ax.text(j, i, f"{m[i, j]}{share}", ha="center", va="center", fontsize=10,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30 if len(classes) > 3 else 0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(f"confusion matrix, {int(m.sum())} test predictions\n(summed over folds; % of the true class)",
                 fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="slides")
    save_figure(fig, path)


def _curves(d: _RunData, path: Path) -> None:
    folds = sorted(d.curves["fold"].unique().tolist())
    ncols = min(len(folds), 5)
    nrows = math.ceil(len(folds) / ncols)
    fig = new_figure(figsize=(3.0 * ncols + 0.5, 2.6 * nrows + 0.6))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    for ax, fold in zip(axes, folds):
        g = d.curves[d.curves["fold"] == fold]
        for subset, style in (("train", dict(color="C0", ls="-")), ("val", dict(color="C1", ls="--"))):
            s = g[g["subset"] == subset]
            ax.plot(s["step"], s["value"], lw=1.3, label=f"{subset} loss", **style)
        best = d.best_epoch.get(int(fold))
        if best is not None and not math.isnan(best):
            ax.axvline(best, color="grey", ls=":", lw=1.2, label=f"selected epoch {int(best)}")
        ax.set_title(f"fold {fold}", fontsize=9.5)
        ax.set_xlabel("epoch", fontsize=8.5)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(folds):]:
        ax.set_axis_off()
    axes[0].set_ylabel("loss")
    fig.suptitle(f"training curves · run {d.run['run_id']} ({d.run['model']}, {d.run['task']})", fontsize=10)
    save_figure(fig, path)


def _regression(d: _RunData, path: Path, notes: list[str]) -> float | None:
    from scipy import stats

    fig = new_figure(figsize=(6.0, 5.6))
    ax = fig.add_subplot()
    for fold, g in d.preds.groupby("fold", sort=True):
        ax.scatter(g["target"], g["score"], s=28, alpha=0.8, label=f"fold {fold} (n={len(g)})")
    t, p = d.preds["target"].to_numpy(float), d.preds["score"].to_numpy(float)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", color="grey", lw=0.9, label="y = x")
    r = float(stats.pearsonr(t, p)[0]) if len(t) > 2 and np.ptp(t) > 0 and np.ptp(p) > 0 else math.nan
    if math.isnan(r):
        notes.append("pooled Pearson r undefined (constant predictions or targets)")
    ax.set(xlabel=f"true value ({d.run['task']})", ylabel="predicted value",
           title=f"predicted vs true, test folds · run {d.run['run_id']}\npooled Pearson r = {r:.3f}")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return r


def _genes(d: _RunData, path: Path, notes: list[str]) -> float | None:
    from scipy import stats

    from histstore.evaluation.pooled import ALPHA, N_PERM

    c = d.children
    metric = "pearson" if str(d.run["task"]).startswith("fc:") else "auc"
    ok = c[c["status"].eq("finished") & c[metric].notna() & c["mean_abs_log2fc"].notna()]
    if len(ok) < len(c):
        notes.append(f"{len(c) - len(ok)} of {len(c)} gene runs have no {metric} or fold change "
                     "(failed or unfinished) and are left out of the scatter")
    fig = new_figure(figsize=(6.6, 5.4))
    ax = fig.add_subplot()
    x, y = ok["mean_abs_log2fc"].to_numpy(float), ok[metric].to_numpy(float)
    yerr = ok["auc_sd"].to_numpy(float) if metric == "auc" else None
    ax.errorbar(x, y, yerr=yerr, fmt="none", capsize=2, lw=0.8, ecolor="#9bb")
    passes = ok["passes"].fillna(False).to_numpy(bool) if "passes" in ok.columns else np.zeros(len(ok), bool)
    ax.scatter(x[~passes], y[~passes], s=30, facecolors="white", edgecolors="C0", zorder=3,
               label="not significant" if "passes" in ok.columns else None)
    if passes.any():
        ax.scatter(x[passes], y[passes], s=30, color="C0", zorder=3,
                   label=f"pooled AUC > chance, BH q < {ALPHA:g} ({N_PERM:,} permutations)")
    if "passes" in ok.columns:
        ax.legend(fontsize=7.5, loc="lower right")
    # name every gene when they are few, else the ten best and ten worst
    order = np.argsort(y)
    named = set(range(len(y))) if len(y) <= 40 else set(order[:10]) | set(order[-10:])
    for i, (xi, yi, task) in enumerate(zip(x, y, ok["task"])):
        if i not in named:
            continue
        ax.annotate(str(task).split(":", 1)[-1], (xi, yi), xytext=(4, 3), textcoords="offset points",
                    fontsize=7.5)
    rho = pval = math.nan
    if len(ok) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        rho, pval = (float(v) for v in stats.spearmanr(x, y))
    else:
        notes.append("Spearman rho needs at least 3 gene runs with distinct values")
    if metric == "auc":
        ax.axhline(0.5, ls="--", color="grey", lw=0.8)
    ax.set(xlabel="cohort mean |log2 fold change| of the gene",
           ylabel=f"mean test {'AUC' if metric == 'auc' else 'Pearson r'} over folds",
           title=f"{metric.upper() if metric == 'auc' else 'Pearson r'} vs fold-change level · run "
                 f"{d.run['run_id']} ({len(ok)} genes)\nSpearman rho = {rho:.3f} (p = {pval:.3g})")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return None if math.isnan(rho) else rho


# ------------------------------------------------------------------------------ html
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.8em;
border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.7em; } th { background: #f4f4f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.agg td { background: #fafafa; font-weight: 600; }
table.kv th { width: 11em; } figure { margin: 1em 0; } figcaption { font-size: 0.88em; color: #555; }
img { max-width: 100%; border: 1px solid #eee; } .note { color: #8a5300; } footer { margin-top: 2.5em;
font-size: 0.82em; color: #777; }
"""


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3g}"
    return str(v)


def _integral(v) -> bool:
    return isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer())


def _table(frame: pd.DataFrame, agg_rows: int = 0) -> str:
    """HTML table; count columns (n, folds, ids, epochs) print as integers."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    n = len(frame)
    plain = frame.iloc[: n - agg_rows] if agg_rows else frame
    whole = {c for c in frame.columns if c in _COUNT_COLUMNS
             and plain[c].map(lambda v: v is None or (isinstance(v, float) and math.isnan(v)) or _integral(v)).all()}

    def cell(col, v, agg: bool, counts: bool) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
            return f"<td>{html.escape(_fmt(v))}</td>"
        text = str(int(v)) if (counts or col in whole and not agg) and _integral(v) else _fmt(v)
        return f'<td class="num">{html.escape(text)}</td>'

    for i, row in enumerate(frame.itertuples(index=False)):
        agg = i >= n - agg_rows
        counts = agg and str(row[0]) in _COUNT_COLUMNS  # an aggregate row of counts ("folds")
        cells = "".join(cell(c, v, agg, counts) for c, v in zip(frame.columns, row))
        cls = ' class="agg"' if agg else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv(pairs: list[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(int(v)) if _integral(v) else _fmt(v))}</td></tr>"
                   for k, v in pairs if v is not None and v != "")
    return f'<table class="kv">{rows}</table>'


def _img(path: Path, alt: str, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><a href="{html.escape(path.name)}"><img src="data:image/png;base64,{data}" '
            f'alt="{html.escape(alt)}"></a><figcaption>{html.escape(caption)} '
            f'(<a href="{html.escape(path.name)}">{html.escape(path.name)}</a>)</figcaption></figure>')


def _per_fold_table(d: _RunData, regression: bool) -> pd.DataFrame | None:
    pf = d.per_fold
    if pf is None or pf.empty:
        return None
    order = _REG_METRICS if regression else _CLASS_METRICS
    cols = [c for c in order if c in pf.columns] + sorted(c for c in pf.columns if c not in order and c != "fold")
    out = pf[["fold", *cols]].copy()
    if d.best_epoch:
        out["selected epoch"] = [d.best_epoch.get(int(f)) for f in out["fold"]]
    out["fold"] = out["fold"].astype(str)
    stats_rows = []
    num = out.drop(columns="fold").astype(float)
    # mean and sd over the folds where a metric is defined; "folds" says how many that is
    for name, fn in (("mean", lambda s: s.mean()), ("sd", lambda s: s.std(ddof=1)),
                     ("folds", lambda s: float(s.notna().sum()))):
        stats_rows.append({"fold": name, **{c: fn(num[c]) for c in num.columns}})
    return pd.concat([out, pd.DataFrame(stats_rows)], ignore_index=True)


def _html(d: _RunData, res: ReportResult, regression: bool, parts: list[str]) -> str:
    from histstore.evaluation.pooled import N_BOOT

    run = d.run
    title = f"Run {run['run_id']}: {run['model']} · {run['task']} · cohort {run['cohort']}"
    started, finished = run.get("started_at"), run.get("finished_at")
    seconds = (finished - started).total_seconds() if started and finished else None
    info = _kv([
        ("run", run["run_id"]),
        ("part of", f"gene run {run['parent_run_id']} ({d.parent_task})" if run["parent_run_id"] else None),
        ("status", run["status"] + (f": {run['error']}" if run.get("error") else "")),
        ("cohort", run["cohort"]), ("task", run["task"]), ("model", run["model"]),
        ("classes (positive last)", ", ".join(run["settings"].get("classes") or []) or None),
        ("embedding set", d.embedding_set), ("encoder", d.encoder),
        ("genes", ", ".join(run["settings"].get("genes") or []) or None),
        ("folds", run["settings"].get("folds")), ("epochs (at most)", run["settings"].get("epochs")),
        ("learning rate", run["settings"].get("lr")), ("seed", run["seed"]),
        ("test slides", len(d.preds) if len(d.preds) else None),
        ("started", started.isoformat(sep=" ", timespec="seconds") if started else None),
        ("took", f"{seconds:.0f} s" if seconds is not None else None),
        ("code version", run["code_version"]), ("host", run["host"]),
    ])
    out = [f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           f"<style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>", info]
    if not d.summary.empty:
        s = d.summary.rename(columns={"n_folds": "folds"})
        out += ["<h2>Test metrics (mean ± sd over folds)</h2>",
                "<p>folds: how many folds each mean rests on; n_undefined / undefined_folds: folds where "
                "the metric is undefined (e.g. AUC of a test fold holding one class), left out of the mean. "
                "case_*: slide scores averaged per case (per case and label).</p>", _table(s)]
    iv = d.statistics.intervals if d.statistics is not None else None
    if iv is not None and len(iv):
        t = iv.rename(columns={"n": "slides / cases", "n_cases": "cases"})
        out += ["<h2>Pooled test predictions (95 % intervals)</h2>",
                f"<p>Every slide once, scored by the fold model that held it out. Intervals: percentiles of "
                f"{N_BOOT:,} bootstrap resamples of cases (stratified by label; a case keeps all its "
                "slides). Case level: slide scores averaged per case.</p>", _table(t)]
    pf = _per_fold_table(d, regression)
    if pf is not None:
        out += ["<h2>Per-fold test metrics</h2>", "<p>An empty cell: the metric is undefined in that fold.</p>",
                _table(pf, agg_rows=3)]
    out += parts
    if res.notes:
        out.append("<h2>Notes</h2><ul>" + "".join(f'<li class="note">{html.escape(n)}</li>' for n in res.notes)
                   + "</ul>")
    files = ", ".join(f'<a href="{html.escape(p.name)}">{html.escape(p.name)}</a>' for p in res.figures.values())
    out.append(f"<footer>histstore report · generated {datetime.now().isoformat(timespec='seconds')}"
               f" · figures: {files or 'none'}</footer></body></html>")
    return "\n".join(out)


# ------------------------------------------------------------------------------ entry point
def default_report_dir(store: Store, run_id: int) -> Path:
    return run_dir(store, REPORT_DIR, run_id)


def write_report(store: Store, run_id: int | str, out_dir: Path | str | None = None,
                 register: bool = True) -> ReportResult:
    """Write the figures and `report.html` of a train run into out_dir (default
    `<store>/artifacts/reports/run<id>/`) and register them in `artifacts` (register=False:
    only read the catalog, e.g. `histstore serve` drawing into its own cache folder)."""
    t0 = time.perf_counter()
    d = _load(store, run_id)
    rid = int(d.run["run_id"])
    is_parent = d.children is not None and len(d.children) > 0
    if d.preds.empty and not is_parent:
        raise MissingStep(f"run {rid} has no test predictions yet (status {d.run['status']}"
                          + (f": {d.run['error']}" if d.run.get("error") else "") + ")",
                          hint=(f"`histstore train --resume {rid}` finishes it"
                                if d.run["status"] == "interrupted" else "see `histstore runs show "
                                                                          f"{rid}`"))
    out = Path(out_dir) if out_dir is not None else default_report_dir(store, rid)
    out.mkdir(parents=True, exist_ok=True)
    res = ReportResult(rid, out, out / HTML_NAME)
    res.notes += d.statistics.notes if d.statistics is not None else []
    regression = is_regression(d.run)
    if d.run["status"] != "finished":
        done = sorted(d.preds["fold"].unique().tolist()) if not d.preds.empty else []
        res.notes.append(f"run {rid} is {d.run['status']}: figures cover its finished folds only "
                         f"({', '.join(map(str, done)) or 'none'} of {d.run['settings'].get('folds', '?')})")
    parts: list[str] = []
    artifacts: list[Artifact] = []

    def figure(name: str, kind: str, caption: str, draw):
        path = out / f"{name}.png"
        value = draw(path)
        res.figures[name] = path
        parts.append(_img(path, caption, caption))
        artifacts.append(Artifact(f"report-{kind}", path, rid, None, None, caption))
        return value

    if is_parent:
        from histstore.evaluation.pooled import ALPHA, N_PERM

        parts.append("<h2>Gene runs</h2>")
        res.spearman_rho = figure("genes", "genes", "Per-gene test metric versus the cohort's mean |log2FC|",
                                  lambda p: _genes(d, p, res.notes))
        cols = [c for c in ("run_id", "task", "status", "auc", "auc_sd", "auc_folds", "accuracy", "pearson",
                            "mean_abs_log2fc", "positive_fraction", "pooled_auc", "perm_p", "bh_q", "passes",
                            "error") if c in d.children.columns]
        table = d.children[cols].copy()
        if "passes" in table.columns:
            table["passes"] = table["passes"].map(lambda v: "yes" if v is True else ("no" if v is False else ""))
            parts.append(f"<p>perm_p: one-sided permutation p-value of the gene's pooled test AUC, labels "
                         f"permuted within folds ({N_PERM:,} permutations, so p &ge; {1 / (N_PERM + 1):.1e}); "
                         f"bh_q: Benjamini-Hochberg over the genes; passes: q &lt; {ALPHA:g}.</p>")
        table = table.loc[:, [c for c in cols if c in ("run_id", "task", "status") or table[c].notna().any()]]
        parts += [_table(table), "<p>Per-gene figures: <code>histstore report RUN</code> with a gene run's id.</p>"]
        if d.parent_metrics:
            parts.append(_kv([(k, v) for k, v in sorted(d.parent_metrics.items())]))
    if not d.preds.empty:
        if regression:
            parts.append("<h2>Predicted versus true</h2>")
            figure("regression", "regression", "Test predictions versus true values, coloured by fold",
                   lambda p: _regression(d, p, res.notes))
        else:
            classes = list(d.run["settings"].get("classes") or [])
            if len(classes) == 2:
                parts.append("<h2>ROC curves</h2>")
                res.mean_auc = figure("roc", "roc", "ROC curves of the test folds and their mean",
                                      lambda p: _roc(d, p, res.notes))
            else:
                res.notes.append(f"{len(classes)} classes: ROC curves are drawn for binary tasks only "
                                 "(per-class scores are not stored)")
            parts.append("<h2>Confusion matrix</h2>")
            figure("confusion", "confusion", "Confusion matrix summed over the test folds",
                   lambda p: _confusion(d, p))
    if not d.curves.empty:
        parts.append("<h2>Training curves</h2>")
        figure("curves", "curves", "Train and validation loss per epoch; dotted: the epoch selected on "
                                   "validation", lambda p: _curves(d, p))
    page = _html(d, res, regression, parts)
    atomic_write(res.html, lambda p: p.write_text(page, encoding="utf-8"))
    artifacts.append(Artifact("report-html", res.html, rid, None, None, f"report of run {rid}"))
    if register:
        register_artifacts(store, artifacts)
    res.seconds = time.perf_counter() - t0
    return res
