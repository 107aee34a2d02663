"""Which MIL aggregator finds a small tumour: gated attention (HistCode), attention (ABMIL),
mean and max pooling, DSMIL and MIL-RNN against the witness rate (the share of a tumour
slide's tissue that is tumour), with where each model looks (attention localisation).

For each witness rate (1 % to 50 %) one synthetic cohort is made with `histstore synth`'s
difficulty controls (cases with 1-3 slides, tumour and normal balanced, full tumour contrast,
one site), ingested (64 px tiles at 1 um/px) and embedded ONCE with one fixed encoder (a
random-init ResNet-18: embedding dominates the cost, and the sweep is about the aggregator,
not the features; the encoder benchmark is bench_encoder_probe). Every model is then
cross-validated (5 folds grouped by case, `histstore train`'s library functions) with 5
seeds (seed = splits and initialisation) on the same bags.

Reported per model and rate:
- test AUC: the pooled CV test AUC of each seed; mean over seeds and a 95 % Student t
  interval over the seeds (it covers split and initialisation variation, not the sampling of
  a new cohort);
- attention localisation: per tested tumour slide, the share of its k most attended tiles
  that lie >= 50 % in a planted region (k = its number of such tiles, at most 10; 1 is
  perfect), averaged over slides and seeds, beside chance (the share of such tiles).
  Tile values are each model's own (softmax attention, max-pool share, or tile score).

The table's ratio is gated attention's AUC over mean pooling's. Plots (generated, full mode):
benchmarks/mil_sweep.png (AUC against witness rate) and benchmarks/attention_localisation.png;
--quick (or --rates) writes them to the temporary folder instead and says where.

    python -m benchmarks.bench_mil_sweep [--quick] [--workdir DIR] [--rates R ...] [--workers N]
"""
from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.common import Row

MODELS = ("gated-attention", "attention", "mean", "max", "dsmil", "mil-rnn")
KEY = "fold_auc_mean"  # the headline AUC: mean over the CV's test folds (HistCode's, and `histstore train`'s)
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Plan:
    rates: tuple[float, ...]
    n_slides: int
    size: int
    seeds: int
    folds: int
    epochs: int
    patience: int
    lr: float


QUICK = Plan((0.05, 0.5), 16, 2048, 2, 4, 20, 5, 5e-4)
FULL = Plan((0.01, 0.02, 0.05, 0.1, 0.2, 0.5), 48, 2560, 5, 5, 20, 5, 5e-4)


def _cohort(work: Path, i: int, rate: float, plan: Plan):
    from benchmarks.evidence_data import embed_random, load_cohort, make_store, mark_done, reuse

    name = f"w{i}"
    settings = dict(n_slides=plan.n_slides, seed=1000 + i, size=plan.size, witness_rate=rate, slides_per_case=(1, 3))
    store, truth, set_name, t = reuse(work, name, settings)
    if store is None:
        store, cohort, t = make_store(work, name, **settings)
        set_name, t["embed_s"] = embed_random(store, name)
        mark_done(work, name, settings)
        truth = cohort.truth()
    data = load_cohort(store, name, set_name, truth)
    tumour = [k for k in range(len(data.y)) if data.y[k]]
    return data, {
        "rate": rate, "kind": "cohort", "n_slides": len(data.y), "n_cases": len(set(data.case_ids)),
        "n_tumour_slides": len(tumour), "n_tiles": data.n_tiles,
        "measured_witness_rate": float(np.mean([truth["slides"][data.slide_ids[k]]["tumor_area_fraction"]
                                                for k in tumour])),
        "planted_tiles_per_tumour_slide": float(np.mean([(data.planted[k] >= 0.5).sum() for k in tumour])),
        "tiles_per_slide": data.n_tiles / len(data.y), **{k: round(v, 1) for k, v in t.items()}}


def run(quick: bool = False, workdir: str | None = None, workers: int = 2,
        rates: tuple[float, ...] | None = None) -> list[dict]:
    from benchmarks.evidence_data import parallel_cv, topk_in_planted
    from histstore.evaluation import stats
    from histstore.evaluation.pooled import case_view

    plan = QUICK if quick else FULL
    if rates:  # a subset of the plan's rates (e.g. to time one of them)
        plan = replace(plan, rates=tuple(rates))
    results: list[dict] = [{"kind": "plan", "quick": quick, **asdict(plan), "models": list(MODELS)}]
    with tempfile.TemporaryDirectory(prefix="mil-sweep-") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        for i, rate in enumerate(plan.rates):
            data, info = _cohort(work, i, rate, plan)
            results.append(info)
            print(f"witness rate {rate:g}: {info['n_slides']} slides, {info['n_tiles']} tiles, "
                  f"{info['planted_tiles_per_tumour_slide']:.1f} planted tiles per tumour slide", flush=True)
            tasks = [(m, seed) for m in MODELS for seed in range(plan.seeds)]
            for (model, seed), cv, cpu in parallel_cv(data, tasks, workers, folds=plan.folds, epochs=plan.epochs,
                                                      patience=plan.patience, lr=plan.lr):
                y = data.y[cv.index]
                cases = np.array(data.case_ids)[cv.index]
                cview = case_view(cases, y, cv.score)
                loc = [topk_in_planted(a, data.planted[k]) for k, a in cv.attention.items() if data.y[k]]
                loc = [v for v in loc if v is not None]
                fold_aucs = [stats.auc(y[cv.fold == f], cv.score[cv.fold == f]) for f in np.unique(cv.fold)]
                results.append({
                    "kind": "cv", "rate": rate, "model": model, "seed": seed,
                    "auc": stats.auc(y, cv.score), "case_auc": stats.auc(cview.target, cview.score),
                    "fold_auc_mean": float(np.nanmean(fold_aucs)) if not np.isnan(fold_aucs).all() else math.nan,
                    "topk_in_planted": float(np.mean([v[0] for v in loc])) if loc else math.nan,
                    "chance": float(np.mean([v[1] for v in loc])) if loc else math.nan,
                    "n_localised_slides": len(loc), "seconds": round(cv.seconds, 2), "cpu_seconds": round(cpu, 2)})
            for model in MODELS:
                r = [x for x in results if x.get("model") == model and x.get("rate") == rate]
                print(f"  {model:<16} AUC {np.mean([x['auc'] for x in r]):.3f}  "
                      f"top-k in planted {np.nanmean([x['topk_in_planted'] for x in r]):.2f}  "
                      f"({sum(x['cpu_seconds'] for x in r):.0f} CPU s)", flush=True)
        # the committed plots are the full plan's; a quick or partial run's go to the temp folder
        out_dir = HERE if not (quick or rates) else Path(tempfile.gettempdir()) / "histstore-bench-quick"
        results.append({"kind": "plots", "paths": [str(p) for p in plots(results, out_dir)]})
    return results


def summary(results: list[dict]) -> dict[tuple[str, float], dict]:
    """(model, rate) -> AUC mean / t interval over seeds, localisation and chance."""
    out = {}
    cv = [r for r in results if r.get("kind") == "cv"]
    for key in sorted({(r["model"], r["rate"]) for r in cv}):
        rs = [r for r in cv if (r["model"], r["rate"]) == key]
        loc = [r["topk_in_planted"] for r in rs if not math.isnan(r["topk_in_planted"])]
        out[key] = {"seeds": len(rs), "loc": float(np.mean(loc)) if loc else math.nan,
                    "chance": float(np.nanmean([r["chance"] for r in rs])),
                    "cpu_seconds": sum(r.get("cpu_seconds", 0.0) for r in rs)}
        for metric in ("fold_auc_mean", "auc", "case_auc"):
            out[key][metric] = _t([r[metric] for r in rs])
    return out


def _t(values) -> tuple[float, float, float]:
    """Mean over seeds and its 95 % t interval, clipped to [0, 1] (an AUC's range)."""
    from histstore.evaluation.stats import t_interval

    mean, lo, hi = t_interval(values)
    return mean, max(0.0, lo) if not math.isnan(lo) else lo, min(1.0, hi) if not math.isnan(hi) else hi


def rows(results: list[dict]) -> list[Row]:
    s = summary(results)
    rates = sorted({k[1] for k in s})
    out = []
    for rate in rates:
        g, m = s.get(("gated-attention", rate)), s.get(("mean", rate))
        others = ", ".join(f"{mod} {s[(mod, rate)][KEY][0]:.3f}" for mod in MODELS[1:]
                           if mod != "mean" and (mod, rate) in s)
        out.append(Row(f"MIL sweep: witness rate {rate:g}",
                       f"gated attention AUC {_fmt(g)} ({others})",
                       f"mean pooling AUC {_fmt(m)}", g[KEY][0] / m[KEY][0] if m and m[KEY][0] else None,
                       f"gated-attention / mean-pooling test AUC (mean over folds), {g['seeds']} seeds of "
                       f"{_plan(results)['folds']}-fold CV"))
    return out


def _plan(results):
    return next(r for r in results if r.get("kind") == "plan")


def _fmt(v: dict | None, metric: str = KEY) -> str:
    if v is None or math.isnan(v[metric][0]):
        return "-"
    mean, lo, hi = v[metric]
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" if not math.isnan(lo) else f"{mean:.3f}"


def details(results: list[dict]) -> list[str]:
    s = summary(results)
    rates = sorted({k[1] for k in s})
    plan = _plan(results)
    lines = []
    for metric, what in ((KEY, f"mean over the {plan['folds']} test folds, as `histstore train` reports it"),
                         ("auc", "pooled test predictions of the CV, every slide once"),
                         ("case_auc", "pooled, slide scores averaged per case and label")):
        lines += [f"Test AUC ({what}) against the witness rate; mean over {plan['seeds']} seeds with a 95 % t "
                  "interval over seeds:", "", "| model | " + " | ".join(f"{r:g}" for r in rates) + " |",
                  "|---|" + "---|" * len(rates)]
        lines += [f"| {model} | " + " | ".join(_fmt(s.get((model, r)), metric) for r in rates) + " |"
                  for model in MODELS]
        lines.append("")
    lines += ["Attention localisation (share of the top-k tiles >= 50 % in planted regions; chance in the "
              "last row):", "", "| model | " + " | ".join(f"{r:g}" for r in rates) + " |",
              "|---|" + "---|" * len(rates)]
    for model in MODELS:
        lines.append(f"| {model} | " + " | ".join(f"{s[(model, r)]['loc']:.2f}" if (model, r) in s else "-"
                                                  for r in rates) + " |")
    lines.append("| chance | " + " | ".join(f"{s[(MODELS[0], r)]['chance']:.3f}" for r in rates) + " |")
    cohorts = [r for r in results if r.get("kind") == "cohort"]
    lines += ["", "Cohorts: " + "; ".join(
        f"{c['rate']:g}: {c['n_slides']} slides / {c['n_cases']} cases, {c['tiles_per_slide']:.0f} tiles per slide, "
        f"measured witness rate {c['measured_witness_rate']:.3f}, {c['planted_tiles_per_tumour_slide']:.1f} "
        "planted tiles per tumour slide" for c in cohorts)]
    plots_ = next((r["paths"] for r in results if r.get("kind") == "plots"), [])
    if plots_:
        lines += ["", "Plots: " + ", ".join(Path(p).name for p in plots_)]
    return lines


def plots(results: list[dict], out_dir: Path) -> list[Path]:
    """AUC and attention localisation against the witness rate, one line per model."""
    from matplotlib.figure import Figure

    from benchmarks.evidence_data import save_plot

    s = summary(results)
    rates = sorted({k[1] for k in s})
    quick = " (quick run)" if _plan(results)["quick"] else ""
    paths = []
    for name, key, ylabel in (("mil_sweep", KEY, "test AUC, mean over folds (mean over seeds, 95 % t interval)"),
                              ("attention_localisation", "loc", "share of top-k attended tiles in planted regions")):
        fig = Figure(figsize=(7.2, 5.0), layout="constrained")
        ax = fig.add_subplot()
        for j, model in enumerate(MODELS):
            v = [s[(model, r)] for r in rates if (model, r) in s]
            x = [r for r in rates if (model, r) in s]
            y = [d[key][0] if key == KEY else d[key] for d in v]
            if key == KEY:
                err = np.array([[d[KEY][0] - d[KEY][1], d[KEY][2] - d[KEY][0]] for d in v]).T
                err = np.nan_to_num(err)
                ax.errorbar(np.array(x) * (1 + 0.03 * (j - 2.5)), y, yerr=err, marker="o", ms=4, capsize=2,
                            lw=1.4, label=model)
            else:
                ax.plot(x, y, marker="o", ms=4, lw=1.4, label=model)
        if key == "loc":
            ax.plot(rates, [s[(MODELS[0], r)]["chance"] for r in rates], ls="--", color="grey", label="chance")
        else:
            ax.axhline(0.5, ls="--", color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
        ax.minorticks_off()
        ax.set(xlabel="witness rate (share of a tumour slide's tissue that is tumour)", ylabel=ylabel,
               title=("MIL aggregators against the witness rate" if key == KEY else
                      "Where the models look: attention localisation") + quick)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(save_plot(fig, out_dir / f"{name}.png"))
    return paths


if __name__ == "__main__":
    from benchmarks.evidence_data import print_report

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir", help="keep the cohorts and stores here and reuse them when run again with the "
                                     "same settings (default: a temporary folder)")
    p.add_argument("--rates", type=float, nargs="+", help="only these witness rates (default: the plan's)")
    p.add_argument("--workers", type=int, default=2, help="processes for the cross-validations")
    a = p.parse_args()
    print_report("mil_sweep", run(a.quick, a.workdir, a.workers, a.rates), rows, details)
