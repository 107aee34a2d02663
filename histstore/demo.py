"""`histstore demo`: the whole mission end to end on the embedded default.

synthesise a cohort (or take the user's slides) -> ingest -> labels, driver genes, fold
changes -> pretrain AdCo briefly -> embed -> cohort `demo_lung` -> gated attention 5-fold CV
for tumour vs normal, against mean and max pooling -> a handful of gene DE tasks -> report and
one heatmap -> the metrics table, the pictures' paths and SQL to paste next.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from histstore.errors import HiststoreError, InvalidInput
from histstore.store import Store

COHORT = "demo_lung"
TUMOUR_COHORT = "demo_lung_tumour"
DEMO_GENES = ("TP53", "MYC", "EGFR", "KRAS", "STK11")


@dataclass(frozen=True)
class DemoPlan:
    n_slides: int
    tile_size: int
    target_mpp: float
    pretrain_steps: int
    pretrain_batch: int
    epochs: int
    gene_folds: int  # gene models see only the tumour slides (half the cohort)

    @classmethod
    def make(cls, quick: bool, n_slides: int | None) -> "DemoPlan":
        if quick:  # HistCode's tissue area per tile at a quarter of the pixels
            return cls(n_slides or 12, 64, 1.0, 30, 32, 30, 3)
        return cls(n_slides or 30, 128, 0.5, 120, 64, 50, 5)


@dataclass
class DemoResult:
    store: Path
    runs: dict[str, int] = field(default_factory=dict)
    table: str = ""
    pictures: list[Path] = field(default_factory=list)
    seconds: float = 0.0


EXAMPLE_SQL = [
    ("mean test AUC per model", "SELECT model, task, round(mean, 3) AS auc, round(sd, 3) AS sd FROM run_summary "
     "WHERE metric = 'auc' AND subset = 'test' ORDER BY task, auc DESC"),
    ("the 5 most attended tiles of each tested tumour slide (run {run})",
     "SELECT slide_id, tile_id, x, y, round(score, 4) AS attention FROM tile_attention "
     "WHERE run_id = {run} AND rank_in_slide <= 5 AND slide_id LIKE '%-01Z-%' ORDER BY slide_id, score DESC"),
    ("gene AUC against fold-change level (run {gene_run})",
     "SELECT r.task, round(s.mean, 3) AS auc, round(m.value, 2) AS mean_abs_log2fc FROM runs r "
     "JOIN run_summary s ON s.run_id = r.run_id AND s.metric = 'auc' AND s.subset = 'test' "
     "JOIN metrics m ON m.run_id = r.run_id AND m.subset = 'cohort' AND m.name = 'mean_abs_log2fc' "
     "WHERE r.parent_run_id = {gene_run} ORDER BY auc DESC"),
]


def run_demo(store_root: Path, *, quick: bool = False, n_slides: int | None = None,
             slides_from: Path | None = None, seed: int = 0, echo: Callable[[str], None] = print,
             show_progress: bool = True) -> DemoResult:
    from histstore.cohorts import create_cohort
    from histstore.embed import embed
    from histstore.genes import import_fold_changes, import_genes
    from histstore.ingest import ingest
    from histstore.labels import import_labels, labels_from_barcodes
    from histstore.pretrain import PretrainSettings, pretrain
    from histstore.runs import compare_runs
    from histstore.train import TrainSettings, train
    from histstore.wsi.synth import GENES, synth_cohort
    from histstore.wsi.tiling import TilingSpec

    t_start = time.perf_counter()
    plan = DemoPlan.make(quick, n_slides)
    store_root = Path(store_root).absolute()
    if (store_root / "catalog.duckdb").exists():
        raise InvalidInput(f"{store_root} already holds a store",
                           hint="give the demo a new --store folder (or delete that one)")
    if plan.n_slides < 10:
        raise InvalidInput("the demo needs at least 10 slides (5 cases for 5-fold CV)")
    result = DemoResult(store_root)
    step = _Steps(echo, 8)

    store, _ = Store.init(store_root)
    if slides_from is None:
        step("synthesise", f"{plan.n_slides} H&E-like slides with planted tumour regions")
        data = synth_cohort(store_root / "demo-slides", n_slides=plan.n_slides, seed=seed)
        source = data.manifest
    else:
        step("take slides", f"from {slides_from}")
        data, source = None, Path(slides_from)

    step("ingest", f"tissue detection + {plan.tile_size} px tiles at {plan.target_mpp} um/px")
    rep = ingest(store, source, TilingSpec(target_mpp=plan.target_mpp, tile_size=plan.tile_size),
                 cohort=COHORT, show_progress=show_progress)
    echo(f"      {rep.count('ingested')} slides, {rep.n_tiles:,} tiles, {rep.count('failed')} failed")

    step("labels", "tumour/normal, driver genes, fold changes")
    if data is not None:
        import_labels(store, data.labels, "tumor")
        genes_file = store_root / "demo-slides" / "drivers.txt"
        genes_file.write_text("\n".join(g for g, _, _ in GENES) + "\n")
        import_genes(store, genes_file, drivers=True, source="demo drivers")
        import_fold_changes(store, data.foldchanges, source="synthetic RNA-seq")
    else:
        labels_from_barcodes(store, "tumor", COHORT)

    step("pretrain", f"AdCo, ResNet-18, {plan.pretrain_steps} steps of {plan.pretrain_batch} tiles")
    pre = pretrain(store, PretrainSettings(cohort=COHORT, method="adco", arch="resnet18", steps=plan.pretrain_steps,
                                           batch_size=plan.pretrain_batch, lr=0.03,
                                           warmup_steps=max(1, plan.pretrain_steps // 10), seed=seed),
                   show_progress=show_progress)
    result.runs["pretrain"] = pre.run_id
    echo(f"      encoder {pre.encoder}: {pre.img_per_s:.0f} img/s")

    step("embed", f"every tile with {pre.encoder} (Macenko stain normalisation)")
    emb = embed(store, pre.encoder, COHORT, stain_norm="macenko", show_progress=show_progress)
    echo(f"      set {emb.embedding_set}: {emb.n_tiles:,} tiles at {emb.tiles_per_second:.0f} tiles/s")

    step("train", "tumour vs normal: gated attention, mean and max pooling, 5-fold CV")
    models = ("gated-attention", "mean", "max")
    for model in models:
        r = train(store, TrainSettings(cohort=COHORT, task="tumor", model=model, epochs=plan.epochs,
                                       lr=5e-4, seed=seed), show_progress=show_progress)
        result.runs[model] = r.run_id
    tumour_run = result.runs["gated-attention"]

    gene_run = None
    if data is not None:
        # fold changes are measured on the tumour sample: gene models learn from tumour slides
        step("genes", f"differential expression of {', '.join(DEMO_GENES)} (|log2FC| >= 1), "
                      f"{plan.gene_folds}-fold CV on the tumour slides")
        create_cohort(store, TUMOUR_COHORT, from_cohort=COHORT,
                      where="slide_id IN (SELECT slide_id FROM slide_labels WHERE task = 'tumor' AND value = 'tumor')",
                      description="tumour slides of demo_lung (gene expression is measured on tumour)")
        g = train(store, TrainSettings(cohort=TUMOUR_COHORT, task="de", genes=DEMO_GENES, epochs=plan.epochs,
                                       folds=plan.gene_folds, lr=5e-4, seed=seed), show_progress=show_progress)
        gene_run = result.runs["genes"] = g.run_id
        for c in g.children:
            auc = c.summary.get("auc")
            defined = auc is not None and not math.isnan(auc[0])
            echo(f"      {c.task:<10} " + (f"AUC {auc[0]:.3f}" if defined else "AUC undefined (one class per test fold)"))
        for n in g.notes:
            echo(f"      skipped {n}")
    else:
        step("genes", "skipped: your slides come without fold changes")

    step("report", "ROC curves, confusion matrix, heatmap")
    result.pictures += _pictures(store, tumour_run, echo)

    table = compare_runs(store, [result.runs[m] for m in models])
    result.table = _render(table)
    result.seconds = time.perf_counter() - t_start
    echo("")
    echo(f"tumour vs normal, {COHORT}, 5-fold CV (test folds, mean ± sd):")
    echo(result.table)
    echo("")
    echo("pictures:")
    for p in result.pictures:
        echo(f"  {p}")
    echo("")
    echo("try next:")
    for title, sql in EXAMPLE_SQL:
        if "{gene_run}" in sql and gene_run is None:
            continue
        echo(f"  # {title.format(run=tumour_run, gene_run=gene_run)}")
        echo(f"  histstore --store {store_root} sql \"{sql.format(run=tumour_run, gene_run=gene_run)}\"")
    echo("")
    echo(f"demo finished in {result.seconds:.0f} s; store: {store_root}")
    echo("look at it in the browser (slides in deep zoom with attention, runs, SQL):")
    echo(f"  histstore --store {store_root} serve")
    return result


def _pictures(store: Store, run_id: int, echo) -> list[Path]:
    """The run's report and a heatmap of its most confidently detected tumour slide."""
    out: list[Path] = []
    try:
        from histstore.reports.report import write_report

        rep = write_report(store, run_id)
        out.append(Path(rep.html))
    except HiststoreError as exc:
        echo(f"      report skipped: {exc}")
    with store.read() as conn:
        row = conn.exec_driver_sql(
            "SELECT slide_id FROM predictions WHERE run_id = ? AND subset = 'test' AND label = 'tumor' "
            "ORDER BY score DESC LIMIT 1", (run_id,)).first()
    if row is not None:
        try:
            from histstore.reports.heatmap import render_heatmap

            hm = render_heatmap(store, run_id, row[0], top=8)
            out += [Path(p) for p in hm.paths]
        except HiststoreError as exc:
            echo(f"      heatmap skipped: {exc}")
    return out


def _render(table) -> str:
    names = table.column_names
    rows = table.to_pylist()
    widths = [max(len(n), *(len(str(r[n])) for r in rows)) for n in names]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(r[n]).ljust(w) for n, w in zip(names, widths)) for r in rows if r["metric"] != "n"]
    return "\n".join(lines)


class _Steps:
    def __init__(self, echo, total: int):
        self.echo, self.total, self.n, self.t0 = echo, total, 0, time.perf_counter()

    def __call__(self, name: str, what: str) -> None:
        self.n += 1
        self.echo(f"[{self.n}/{self.total}] {name}: {what}  (+{time.perf_counter() - self.t0:.0f} s)")
