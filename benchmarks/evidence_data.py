"""Shared pieces of the evidence benchmarks (bench_mil_sweep, bench_encoder_probe): a
synthetic cohort made, ingested, labelled and embedded through histstore's library, its bags
read back with their tiles' ground truth, and MIL cross-validation through the same library
functions `histstore train` uses (mil.splits.make_splits, mil.cross_validation.run_cv).

Not a benchmark itself (no bench_ prefix): run_all does not run it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class CohortData:
    """One embedded cohort, in memory: per slide its features and tiles' planted fraction."""

    name: str
    slide_ids: list[str]
    case_ids: list[str]
    y: np.ndarray                     # 1 = tumour slide
    sites: list[str]
    features: list[np.ndarray]        # [n_tiles, dim] float32 per slide
    planted: list[np.ndarray]         # [n_tiles] fraction of each tile inside planted regions
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n_tiles(self) -> int:
        return int(sum(len(f) for f in self.features))


def make_store(workdir: Path, name: str, *, n_slides: int, seed: int, size: int, tile_size: int = 64,
               mpp: float = 1.0, **difficulty):
    """Synthesise a cohort with the given difficulty, ingest it (tile_size px at mpp um/px)
    into a new store as cohort `name`, import its tumour labels and sites. Returns (store,
    SynthCohort, seconds per step)."""
    from histstore.ingest import ingest
    from histstore.labels import import_labels
    from histstore.store import Store
    from histstore.wsi.synth import synth_cohort
    from histstore.wsi.tiling import TilingSpec

    t = {}
    t0 = time.perf_counter()
    cohort = synth_cohort(workdir / f"{name}-slides", n_slides=n_slides, seed=seed, size=(size, size),
                          **difficulty)
    t["synth_s"] = time.perf_counter() - t0
    store, _ = Store.init(workdir / f"{name}-store")
    t0 = time.perf_counter()
    ingest(store, cohort.manifest, TilingSpec(target_mpp=mpp, tile_size=tile_size), cohort=name, workers=2,
           show_progress=False)
    t["ingest_s"] = time.perf_counter() - t0
    import_labels(store, cohort.labels, "tumor")
    import_labels(store, cohort.sites, "site")
    return store, cohort, t


def _settings(**kw) -> dict:
    return json.loads(json.dumps(kw, sort_keys=True, default=list))


def mark_done(workdir: Path, name: str, settings: dict, tile_size: int = 64, mpp: float = 1.0) -> None:
    """Record that cohort `name` in workdir is made and embedded with these settings (reuse
    finds it then)."""
    (workdir / f"{name}-settings.json").write_text(json.dumps(_settings(tile_size=tile_size, mpp=mpp, **settings)))


def reuse(workdir: Path, name: str, settings: dict, tile_size: int = 64, mpp: float = 1.0):
    """(store, truth, embedding set, {}) of a cohort made before in workdir with the same
    settings (make_store's keywords) and embedded once (--workdir runs again without remaking
    it), else (None, None, None, {})."""
    from histstore.store import Store

    root = workdir / f"{name}-store"
    truth = workdir / f"{name}-slides" / "truth.json"
    made = workdir / f"{name}-settings.json"
    if not made.exists():  # never made, or interrupted before it was embedded: start again
        import shutil

        for partial in (root, workdir / f"{name}-slides"):
            shutil.rmtree(partial, ignore_errors=True)
        return None, None, None, {}
    if json.loads(made.read_text()) != _settings(tile_size=tile_size, mpp=mpp, **settings):
        raise SystemExit(f"{workdir}: cohort {name} was made with other settings; use another --workdir")
    store = Store.open(root)
    with store.read() as conn:
        sets = [r[0] for r in conn.exec_driver_sql("SELECT name FROM embedding_sets ORDER BY 1").all()]
    if len(sets) != 1:
        raise SystemExit(f"{root}: expected one embedding set, found {len(sets)}; use another --workdir")
    return store, json.loads(truth.read_text()), sets[0], {}


def embed_random(store, name: str, seed: int = 0) -> tuple[str, float]:
    """Embed the cohort with a random-init ResNet-18 (one fixed encoder, no pretraining), no
    stain normalisation. Returns (embedding set name, seconds)."""
    from histstore.embed import embed

    t0 = time.perf_counter()
    r = embed(store, "resnet18", name, allow_random=True, seed=seed, stain_norm="none", show_progress=False)
    return r.embedding_set, time.perf_counter() - t0


def load_cohort(store, name: str, embedding_set: str, truth: dict) -> CohortData:
    """The cohort's bags (features, tiles' planted fraction), labels, cases and sites."""
    from histstore.catalog.bulk import query_numpy
    from histstore.catalog.cohorts import cohort_slide_ids
    from histstore.embeddings.bags import load_bags
    from histstore.embeddings.sets import resolve_set
    from histstore.wsi.synth import tumor_fraction_of_tiles

    with store.read() as conn:
        slide_ids = sorted(cohort_slide_ids(conn, name))
        info = resolve_set(conn, embedding_set)
        bags = load_bags(store, conn, info, slide_ids)
        tiles = query_numpy(conn, "SELECT tile_id, x, y, size_l0 FROM tiles WHERE tile_id IN "
                                  "(SELECT unnest($1::BIGINT[]))", [np.concatenate([b.tile_ids for b in bags]).tolist()])
    where = {int(t): i for i, t in enumerate(tiles["tile_id"])}
    planted = []
    for b in bags:
        j = np.array([where[int(t)] for t in b.tile_ids])
        planted.append(tumor_fraction_of_tiles(truth["slides"][b.slide_id], tiles["x"][j], tiles["y"][j],
                                               int(tiles["size_l0"][j[0]])))
    meta = truth["slides"]
    return CohortData(name, slide_ids, [meta[s]["case_id"] for s in slide_ids],
                      np.array([int(meta[s]["tumor"]) for s in slide_ids]), [meta[s]["site"] for s in slide_ids],
                      [b.features.astype(np.float32) for b in bags], planted)


@dataclass
class CVResult:
    """Pooled test predictions of one cross-validation (each slide once) and attention."""

    index: np.ndarray                 # slide positions
    score: np.ndarray                 # positive-class probability
    fold: np.ndarray
    attention: dict[int, np.ndarray]  # slide position -> per-tile values (test slides)
    seconds: float


def cross_validate(data: CohortData, model: str, seed: int, *, folds: int, epochs: int, patience: int,
                   lr: float, idx: np.ndarray | None = None) -> CVResult:
    """k-fold CV grouped by case (as `histstore train`): pooled test predictions."""
    from histstore.mil.cross_validation import run_cv
    from histstore.mil.splits import make_splits
    from histstore.mil.train_config import TrainConfig

    t0 = time.perf_counter()
    idx = np.arange(len(data.y)) if idx is None else np.asarray(idx)
    y = data.y[idx]
    cases = [data.case_ids[i] for i in idx]
    cfg = TrainConfig(model=model, epochs=epochs, patience=patience, lr=lr)
    splits = make_splits(cases, y.tolist(), folds, seed=seed)
    out_i, out_s, out_f, att = [], [], [], {}
    for res in run_cv([data.features[i] for i in idx], y, cases, cfg, n_folds=folds, seed=seed, splits=splits):
        out_i.append(idx[res.test.index])
        out_s.append(res.test.score)
        out_f.append(np.full(len(res.test.index), res.fold))
        att.update({int(idx[k]): np.asarray(v) for k, v in res.test_attention.items()})
    return CVResult(np.concatenate(out_i), np.concatenate(out_s), np.concatenate(out_f), att,
                    time.perf_counter() - t0)


_WORKER_DATA: CohortData | None = None


def _init_worker(data: CohortData) -> None:
    import torch

    global _WORKER_DATA
    torch.set_num_threads(1)  # small models: one thread per process, one process per core
    _WORKER_DATA = data


def _cv_task(args: tuple) -> tuple[tuple, CVResult, float]:
    model, seed, kw = args
    t0 = time.process_time()
    cv = cross_validate(_WORKER_DATA, model, seed, **kw)
    return (model, seed), cv, time.process_time() - t0


def parallel_cv(data: CohortData, tasks: list[tuple[str, int]], workers: int = 2, **kw):
    """cross_validate for each (model, seed), in `workers` processes of one torch thread
    each (the data is sent once per worker). Yields ((model, seed), CVResult, CPU seconds)
    as they finish."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if workers <= 1:
        _init_worker(data)
        for model, seed in tasks:
            yield _cv_task((model, seed, kw))
        return
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(data,)) as pool:
        futures = [pool.submit(_cv_task, (model, seed, kw)) for model, seed in tasks]
        for f in as_completed(futures):
            yield f.result()


def train_test(data: CohortData, model: str, seed: int, train_idx, test_idx, *, epochs: int, patience: int,
               lr: float, val_fraction: float = 0.2):
    """Train on train_idx (validation: a case-grouped share of it), predict test_idx.
    Returns the test positive-class probabilities in test_idx order."""
    from histstore.mil.trainer import train_fold
    from histstore.mil.train_config import TrainConfig

    train_idx, test_idx = np.asarray(train_idx), np.asarray(test_idx)
    rng = np.random.default_rng(seed)
    cases = np.array(data.case_ids)[train_idx]
    uniq = np.array(sorted(set(cases)))
    val_cases = set(rng.choice(uniq, max(2, int(round(val_fraction * len(uniq)))), replace=False))
    is_val = np.array([c in val_cases for c in cases])
    cfg = TrainConfig(model=model, epochs=epochs, patience=patience, lr=lr)
    res = train_fold(data.features, data.y, train_idx[~is_val], train_idx[is_val], test_idx, cfg, seed=seed)
    pos = {int(k): j for j, k in enumerate(res.test.index)}
    return np.array([res.test.score[pos[int(k)]] for k in test_idx])


def topk_in_planted(attention: np.ndarray, planted: np.ndarray, k_max: int = 10) -> tuple[float, float] | None:
    """(share of the top-k attended tiles that lie >= 50 % in planted regions, chance share),
    k = the slide's number of such tiles (at most k_max): 1.0 is perfect localisation. None
    for a slide without such a tile."""
    inside = planted >= 0.5
    n_in = int(inside.sum())
    if n_in == 0:
        return None
    k = min(k_max, n_in)
    top = np.argsort(-np.asarray(attention, np.float64), kind="stable")[:k]
    return float(inside[top].mean()), float(inside.mean())


def save_plot(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110, facecolor="white")
    return path


def print_report(name: str, results: list[dict], rows, details) -> None:
    """The benchmark's table as RESULTS.md shows it (benchmarks.common.report), else its rows,
    details and raw JSON."""
    try:
        from benchmarks.common import report
    except ImportError:  # a tree without the results.json renderer
        import json

        for r in rows(results):
            print(r)
        print("\n".join(details(results)))
        print(json.dumps(results, indent=1, default=str))
        return
    report(name, results)
