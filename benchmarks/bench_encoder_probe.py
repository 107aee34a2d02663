"""Tile encoders on a setting that does not saturate: AdCo against SimCLR against a
random-init ResNet-18, at equal pretraining compute, on low-contrast tumour with a stain and
scanner shift between the sites a model is trained on and the sites it is tested on.

The cohort (`histstore synth`): tumour contrast 0.3 (tumour nuclei only a little larger,
denser and darker than stroma's), witness rate 0.2-0.4, four sites with their own stain
vectors, intensities and scanner blur; cases (one tumour, one normal slide each) are spread
over the sites. Sites SA and SB are the training sites, SC and SD the test sites.

- AdCo and SimCLR pretrain `histstore pretrain` (as on main) on the training sites' tiles
  only, with the same steps x batch (equal compute); the random-init ResNet-18 has none.
- Each encoder embeds every tile (`histstore embed`, Macenko stain normalisation, the
  pipeline's default).
- Linear probe: logistic regression on tile embeddings (tiles >= 50 % in a planted region of
  a tumour slide = 1, tiles of normal slides = 0) trained on training-site tiles; test AUC on
  the test sites' tiles (and, for scale, on held-out cases of the training sites).
- MIL: gated attention trained on the training sites' slides (validation: a fifth of their
  cases), slide-level test AUC on the test sites; mean over seeds with a 95 % t interval.

The table's ratio is AdCo's AUC over the random-init encoder's.

    python -m benchmarks.bench_encoder_probe [--quick] [--workdir DIR]
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

TRAIN_SITES = ("SA", "SB")
ENCODERS = ("adco", "simclr", "random")


@dataclass(frozen=True)
class Plan:
    n_slides: int
    size: int
    contrast: float
    witness: tuple[float, float]
    steps: int
    batch: int
    mil_seeds: int
    epochs: int
    patience: int
    probe_tiles: int     # per class, training tiles of the probe


QUICK = Plan(16, 1536, 0.3, (0.2, 0.4), 20, 32, 2, 12, 4, 1500)
FULL = Plan(64, 2048, 0.3, (0.2, 0.4), 500, 64, 5, 30, 6, 5000)


def _pretrain(store, method: str, plan: Plan) -> tuple[str, float, float]:
    from histstore.pretrain import PretrainSettings, pretrain

    t0 = time.perf_counter()
    rep = pretrain(store, PretrainSettings(cohort="train_sites", method=method, steps=plan.steps,
                                           batch_size=plan.batch, lr=0.03, warmup_steps=max(1, plan.steps // 10),
                                           log_every=10, seed=0), show_progress=False)
    return rep.encoder, time.perf_counter() - t0, rep.img_per_s


def _tile_sets(data, slides: np.ndarray, per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Tile embeddings and labels of the given slides: tumour tiles of tumour slides (1) and
    tiles of normal slides (0), at most per_class of each."""
    X, y = [], []
    for k in slides:
        f, planted = data.features[k], data.planted[k]
        keep = planted >= 0.5 if data.y[k] else np.ones(len(f), bool)
        X.append(f[keep])
        y.append(np.full(int(keep.sum()), int(data.y[k])))
    X, y = np.concatenate(X), np.concatenate(y)
    idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in (0, 1)])
    return X[idx], y[idx]


def _probe(train, test) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from histstore.evaluation.stats import auc

    sc = StandardScaler().fit(train[0])
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(sc.transform(train[0]), train[1])
    return auc(test[1], clf.predict_proba(sc.transform(test[0]))[:, 1])


def run(quick: bool = False, workdir: str | None = None) -> list[dict]:
    from benchmarks.evidence_data import load_cohort, make_store, train_test
    from histstore.cohorts import create_cohort
    from histstore.embed import embed
    from histstore.evaluation.stats import auc, t_interval

    plan = QUICK if quick else FULL
    out: dict = {"quick": quick, **asdict(plan), "train_sites": list(TRAIN_SITES)}
    with tempfile.TemporaryDirectory(prefix="encoder-probe-") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        store, cohort, t = make_store(work, "probe", n_slides=plan.n_slides, seed=77, size=plan.size,
                                      contrast=plan.contrast, witness_rate=plan.witness, sites=4)
        out.update({k: round(v, 1) for k, v in t.items()})
        sites = ", ".join(f"'{s}'" for s in TRAIN_SITES)
        create_cohort(store, "train_sites", from_cohort="probe",
                      where=f"slide_id IN (SELECT slide_id FROM slide_labels WHERE task = 'site' AND value IN ({sites}))")
        encoders = {}
        for method in ("adco", "simclr"):
            name, secs, ips = _pretrain(store, method, plan)
            encoders[method] = name
            out[f"{method}_pretrain_s"], out[f"{method}_img_per_s"] = round(secs, 1), round(ips, 1)
            print(f"{method}: {plan.steps} steps x {plan.batch} in {secs:.0f} s", flush=True)
        truth = cohort.truth()
        for enc in ENCODERS:
            t0 = time.perf_counter()
            if enc == "random":
                r = embed(store, "resnet18", "probe", allow_random=True, seed=0, show_progress=False)
            else:
                r = embed(store, encoders[enc], "probe", show_progress=False)
            out[f"{enc}_embed_s"] = round(time.perf_counter() - t0, 1)
            data = load_cohort(store, "probe", r.embedding_set, truth)
            is_train = np.array([s in TRAIN_SITES for s in data.sites])
            rng = np.random.default_rng(0)
            # held-out cases of the training sites: every third case
            case_no = {c: i for i, c in enumerate(sorted(set(data.case_ids)))}
            held = np.array([case_no[c] % 3 == 0 for c in data.case_ids]) & is_train
            tr = _tile_sets(data, np.flatnonzero(is_train & ~held), plan.probe_tiles, rng)
            out[f"{enc}_probe_test_sites_auc"] = _probe(tr, _tile_sets(data, np.flatnonzero(~is_train),
                                                                       10 * plan.probe_tiles, rng))
            out[f"{enc}_probe_same_sites_auc"] = _probe(tr, _tile_sets(data, np.flatnonzero(held),
                                                                       10 * plan.probe_tiles, rng))
            aucs = []
            test_idx = np.flatnonzero(~is_train)
            for seed in range(plan.mil_seeds):
                score = train_test(data, "gated-attention", seed, np.flatnonzero(is_train), test_idx,
                                   epochs=plan.epochs, patience=plan.patience, lr=5e-4)
                aucs.append(auc(data.y[test_idx], score))
            mean, lo, hi = t_interval(aucs)
            lo, hi = float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1))  # an AUC's range (NaN stays NaN)
            out.update({f"{enc}_mil_aucs": aucs, f"{enc}_mil_auc": mean, f"{enc}_mil_lo": lo, f"{enc}_mil_hi": hi})
            out["n_slides"], out["n_tiles"] = len(data.y), data.n_tiles
            out["n_test_slides"] = int((~is_train).sum())
            print(f"{enc}: probe AUC test sites {out[f'{enc}_probe_test_sites_auc']:.3f}, same sites "
                  f"{out[f'{enc}_probe_same_sites_auc']:.3f}; MIL AUC {mean:.3f}", flush=True)
    return [out]


def _ci(r: dict, enc: str) -> str:
    lo = r[f"{enc}_mil_lo"]
    return f"{r[f'{enc}_mil_auc']:.3f}" + ("" if lo is None or math.isnan(lo) else
                                          f" [{lo:.3f}, {r[f'{enc}_mil_hi']:.3f}]")


def rows(results: list[dict]) -> list[Row]:
    r = results[0]
    compute = f"{r['steps']} steps x {r['batch']} tiles"
    return [
        Row("encoder probe: linear probe, unseen sites",
            f"AdCo ({compute}) tile AUC {r['adco_probe_test_sites_auc']:.3f} (SimCLR, same compute: "
            f"{r['simclr_probe_test_sites_auc']:.3f})",
            f"random-init ResNet-18 {r['random_probe_test_sites_auc']:.3f}",
            r["adco_probe_test_sites_auc"] / r["random_probe_test_sites_auc"],
            "AdCo / random-init tile AUC on the test sites (contrast 0.3, stain + scanner shift)"),
        Row("encoder probe: gated-attention MIL, unseen sites",
            f"AdCo slide AUC {_ci(r, 'adco')} (SimCLR {_ci(r, 'simclr')})",
            f"random-init ResNet-18 {_ci(r, 'random')}",
            r["adco_mil_auc"] / r["random_mil_auc"] if r["random_mil_auc"] else None,
            f"AdCo / random-init slide AUC, {r['n_test_slides']} test-site slides, mean of {r['mil_seeds']} seeds"),
    ]


def details(results: list[dict]) -> list[str]:
    r = results[0]
    lines = ["| encoder | probe AUC, test sites | probe AUC, held-out cases of the training sites | "
             "MIL AUC, test sites (95 % t interval over seeds) |", "|---|---|---|---|"]
    for enc in ENCODERS:
        lines.append(f"| {enc} | {r[f'{enc}_probe_test_sites_auc']:.3f} | {r[f'{enc}_probe_same_sites_auc']:.3f} | "
                     f"{_ci(r, enc)} |")
    lines += ["", f"{r['n_slides']} slides ({r['n_tiles']} tiles), tumour contrast {r['contrast']}, witness rate "
              f"{r['witness'][0]}-{r['witness'][1]}, 4 sites (train {', '.join(r['train_sites'])}); pretraining "
              f"{r['steps']} steps x {r['batch']}: AdCo {r['adco_pretrain_s']:.0f} s, SimCLR {r['simclr_pretrain_s']:.0f} s."]
    return lines


if __name__ == "__main__":
    from benchmarks.evidence_data import print_report

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir", help="make the cohort and store in this new folder and keep them (default: a "
                                     "temporary folder)")
    a = p.parse_args()
    print_report("encoder_probe", run(a.quick, a.workdir), rows, details)
