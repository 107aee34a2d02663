"""One joint model for a gene panel (`train --genes ... --joint`) against one model per gene.

Cohort: `histstore synth --gene-regions --separate-gene-regions` (one tumour slide per case):
each signal gene is differentially expressed in a case with probability 1/2 and then shows its
own mark in its own subregion of the case's tumour, the genes' subregions placed apart. The
slides are ingested (64 px tiles at 1 um/px) and embedded ONCE by a random-init ResNet-18
(the MIL sweep's fixed encoder: the comparison is about the aggregator, not the features);
both arms train on those same stored embeddings through `histstore train`'s library
(`histstore.train_joint.train`), task `de` (|log2FC| >= 1), the same folds count, seed,
epochs and early stopping. The per-gene arm splits each gene's cases stratified by that
gene's label; the joint arm uses one split for the panel.

Reported:
- test AUC per gene (mean over the CV's test folds, as `histstore train` reports it), joint
  and per gene;
- total training time of each arm (the whole `train` call: reading bags, every fold, writing
  results; one torch thread for both) and per-gene time / joint time;
- where each gene's attention map peaks (joint arm's branch for that gene; per-gene arm's
  model): over the tested slides in which the gene is expressed, the mean attention on tiles
  lying >= 50 % in the gene's own subregion divided by the mean on the slide's other tiles
  ("own / rest", 1 = no preference), and divided by the mean on tiles in OTHER genes'
  subregions ("own / other genes'": > 1 means the map tells its gene's subregion apart).

    python -m benchmarks.bench_joint [--quick] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import Row


@dataclass(frozen=True)
class Plan:
    n_slides: int
    size: int
    genes: tuple[str, ...]
    folds: int
    epochs: int
    patience: int
    lr: float


QUICK = Plan(16, 1536, ("TP53", "MYC"), 3, 10, 4, 5e-4)
FULL = Plan(80, 2560, ("TP53", "MYC", "EGFR", "CDKN2A", "KRAS", "PIK3CA", "PTEN", "BRAF"), 5, 30, 8, 5e-4)
COHORT = "genes"
SOURCE = ("synthetic slides (synth --gene-regions --separate-gene-regions, one tumour slide per case), "
          "embedded once by a random-init ResNet-18; both arms train on those stored embeddings")


def _cohort(work: Path, plan: Plan):
    from benchmarks.evidence_data import embed_random, make_store, mark_done, reuse
    from histstore.genes import import_fold_changes

    settings = dict(n_slides=plan.n_slides, seed=17, size=plan.size, slides_per_case=1, gene_regions=True,
                    separate_genes=True)
    store, truth, set_name, t = reuse(work, COHORT, settings)
    if store is None:
        store, cohort, t = make_store(work, COHORT, **settings)
        import_fold_changes(store, cohort.foldchanges, "synth")
        set_name, t["embed_s"] = embed_random(store, COHORT)
        mark_done(work, COHORT, settings)
        truth = cohort.truth()
    return store, truth, t


def _settings(plan: Plan, joint: bool):
    from histstore.train import TrainSettings

    return TrainSettings(cohort=COHORT, task="de", genes=plan.genes, joint=joint, folds=plan.folds, seed=0,
                         epochs=plan.epochs, patience=plan.patience, lr=plan.lr, device="cpu")


def _peaks(store, run_id: int, gene: str, truth: dict) -> dict:
    """Attention on the gene's own subregion vs the rest / other genes' subregions, over the
    run's tested slides that show the gene."""
    from histstore.wsi.synth import tumor_fraction_of_tiles

    with store.read() as conn:
        rows = conn.exec_driver_sql(
            "SELECT t.slide_id, t.x, t.y, t.size_l0, a.score FROM attention a JOIN tiles t USING (tile_id) "
            "WHERE a.run_id = ? ORDER BY t.slide_id", (run_id,)).all()
    by_slide: dict[str, list] = {}
    for sid, x, y, s, a in rows:
        by_slide.setdefault(sid, []).append((x, y, s, a))
    own_rest, own_other = [], []
    for sid, tiles in by_slide.items():
        t = truth["slides"][sid]
        regions = t.get("gene_regions", {})
        if gene not in regions:
            continue
        x, y, s, a = (np.array(v, dtype=np.float64) for v in zip(*tiles))

        def inside(g):
            return tumor_fraction_of_tiles({**t, "regions": [regions[g]]}, x, y, int(s[0])) >= 0.5

        own = inside(gene)
        others = np.zeros(len(a), bool)
        for g in regions:
            if g != gene:
                others |= inside(g)
        others &= ~own
        if own.any() and (~own).any():
            own_rest.append(a[own].mean() / a[~own].mean())
        if own.any() and others.any():
            own_other.append(a[own].mean() / a[others].mean())
    return {"own_rest": float(np.mean(own_rest)) if own_rest else math.nan,
            "own_other": float(np.mean(own_other)) if own_other else math.nan,
            "n_slides": len(own_rest)}


def run(quick: bool = False, workdir: str | None = None) -> list[dict]:
    import torch

    from histstore.train_joint import train

    plan = QUICK if quick else FULL
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_joint-")
        workdir = tmp.name
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        store, truth, t = _cohort(work, plan)
        results: list[dict] = [{"kind": "plan", "quick": quick, "source": SOURCE, **asdict(plan),
                                "n_cases": len(truth["cases"]), **{k: round(v, 1) for k, v in t.items()}}]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # both arms alike: small per-bag matmuls run best on one thread
        for joint in (False, True):
            t0 = time.perf_counter()
            try:
                rep = train(store, _settings(plan, joint), show_progress=False)
            finally:
                torch.set_num_threads(threads)
            seconds = time.perf_counter() - t0
            torch.set_num_threads(1)
            arm = "joint" if joint else "per_gene"
            results.append({"kind": "arm", "arm": arm, "seconds": seconds, "run_id": rep.run_id})
            for c in rep.children:
                gene = c.task.split(":", 1)[1]
                auc = c.summary.get("auc", (math.nan, math.nan))
                results.append({"kind": "gene", "arm": arm, "gene": gene, "run_id": c.run_id,
                                "auc": auc[0], "auc_sd": auc[1], **_peaks(store, c.run_id, gene, truth)})
        torch.set_num_threads(threads)
        return results
    finally:
        if tmp is not None:
            tmp.cleanup()


def _arms(results):
    return {r["arm"]: r for r in results if r["kind"] == "arm"}


def _genes(results):
    return {(r["arm"], r["gene"]): r for r in results if r["kind"] == "gene"}


def _f(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def rows(results: list[dict]) -> list[Row]:
    plan = results[0]
    arms, genes = _arms(results), _genes(results)
    if "joint" not in arms or "per_gene" not in arms:
        return []
    g = plan["genes"]
    mean_auc = {a: np.nanmean([genes[a, x]["auc"] for x in g if (a, x) in genes]) for a in arms}
    peak = {a: np.nanmean([genes[a, x]["own_other"] for x in g if (a, x) in genes]) for a in arms}
    return [
        Row(f"joint gene model: training time, {len(g)} genes ({plan['n_cases']} cases, {plan['folds']} folds)",
            f"joint {arms['joint']['seconds']:.1f} s", f"one model per gene {arms['per_gene']['seconds']:.1f} s",
            arms["per_gene"]["seconds"] / arms["joint"]["seconds"], "per-gene time / joint time"),
        Row("joint gene model: mean test AUC over the genes",
            f"joint {_f(mean_auc['joint'])}", f"one model per gene {_f(mean_auc['per_gene'])}", None,
            "figures only: fold-mean test AUC averaged over the genes"),
        Row("joint gene model: attention on the gene's own subregion / other genes' subregions",
            f"joint {_f(peak['joint'])}", f"one model per gene {_f(peak['per_gene'])}", None,
            "figures only: mean over genes; > 1 = each gene's map peaks on its own subregion"),
    ]


def details(results: list[dict]) -> list[str]:
    plan = results[0]
    genes = _genes(results)
    lines = [f"Data: {plan['source']}.", "",
             "| gene | AUC joint | AUC per gene | own/rest joint | own/rest per gene | own/other genes' joint "
             "| own/other genes' per gene | slides showing the gene (tested) |",
             "|---|---|---|---|---|---|---|---|"]
    for g in plan["genes"]:
        j, p = genes.get(("joint", g)), genes.get(("per_gene", g))
        if j is None or p is None:
            continue
        lines.append(f"| {g} | {_f(j['auc'])} | {_f(p['auc'])} | {_f(j['own_rest'])} | {_f(p['own_rest'])} | "
                     f"{_f(j['own_other'])} | {_f(p['own_other'])} | {j['n_slides']} |")
    return lines


if __name__ == "__main__":
    from benchmarks.evidence_data import print_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workdir", help="keep the cohort here (made once, reused by later runs)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    res = run(a.quick, a.workdir)
    print(f"data: {SOURCE}")
    print_report("joint", res, rows, details)
    print(f"[{time.perf_counter() - t0:.0f} s]")
