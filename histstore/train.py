"""`histstore train`: a cohort's bags -> k-fold cross-validated MIL models, every result in
the catalog.

Bags are the cohort's slides that have both a target for the task and an array in the
embedding set (the others are counted and reported). Folds are grouped by case and
stratified by label; inside a fold the non-test cases are split ~8:1 into train and
validation (HistCode's 80/10/10), and epochs are selected on validation only. Each finished
fold is written in one short commit (predictions, test-tile attention, metrics, curves, the
fold's checkpoint row with its sha256), so an interrupted run keeps its finished folds, is
marked `interrupted`, and `--resume RUN` continues it with the splits it started with. The
catalog is read at the start and not held while models train.

Bags stay in their stored dtype (float16) from zarr to the model. `--memory-budget` decides
where they live (mil/bag_source.py): resident (the cohort packed once) when it fits, else
streamed from zarr with read-ahead; both give the same results for a seed. A gene sweep reads
the cohort's bag index and packs it once, and every gene trains on its slides out of it.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import sqlalchemy as sa

from histstore.catalog.bulk import insert_frame, query_numpy
from histstore.catalog.cohorts import cohort_slide_ids, require_cohort
from histstore.embeddings.sets import EmbeddingSetInfo, resolve_set, sets_covering
from histstore.errors import EmptyCohort, HiststoreError, InvalidInput, MissingStep
from histstore.faults import fault_point
from histstore.jobs import Heartbeat, mark_running, record_progress
from histstore.evaluation.case_level import case_metric_rows
from histstore.progress import progress_bar
from histstore.catalog.runs import has_final_model, require_run
from histstore.runs import create_run, end_run, refuse_if_alive, run_outcome, write_metrics
from histstore.store import Store
from histstore.tasks import (GENE_SLIDES, TUMOUR_TASK, TaskSpec, gene_task_slides, parse_task, positive_class,
                             task_targets)


@dataclass(frozen=True)
class TrainSettings:
    cohort: str
    task: str
    embeddings: str | None = None
    model: str = "gated-attention"
    folds: int = 5
    seed: int = 0
    epochs: int = 50
    patience: int | None = 10
    lr: float = 1e-4
    weight_decay: float = 1e-5
    dropout: float = 0.0
    bags_per_step: int = 1
    class_weight: str = "none"
    select_on: str = "loss"
    device: str = "auto"
    threshold: float = 1.0
    p_cut: float | None = None
    fc_source: str | None = None
    positive: str | None = None
    genes: tuple[str, ...] | None = None  # multi-gene run: task is the kind (de, up, down, fc)
    gene_slides: str = "tumour"  # gene tasks: the case's tumour slides, or all its slides
    standardize: bool = True  # z-score features with each fold's training statistics
    min_epochs: int = 1  # no early stop before this epoch
    hidden_dim: int | None = None  # model size (None: the model's default, e.g. HistCode's 512)
    attn_dim: int | None = None
    decision_threshold: str = "0.5"  # binary tasks: "0.5", or chosen on the "val" or "train" bags
    val_fraction: float = 1 / 9  # of each fold's non-test cases (HistCode's 80/10/10); 0: none
    memory_budget: str | None = None  # bytes for bags ("6GB"); None/"auto": half the free memory
    final: bool = False  # after CV, fit one model on all slides (mil/final_model.py): `histstore predict`
    joint: bool = False  # with genes: one multi-output model for the panel (train_joint.py)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["genes"] = list(self.genes) if self.genes else None
        return d


@dataclass
class Prepared:
    spec: TaskSpec
    info: EmbeddingSetInfo
    slide_ids: list[str]
    case_ids: list[str]
    labels: list  # class names (classification) or floats
    targets: np.ndarray  # class index or float
    classes: list[str]
    n_without_target: int
    n_without_embedding: int
    notes: list[str] = field(default_factory=list)
    n_not_tumour: int = 0  # gene tasks: slides left out for not being tumour slides


@dataclass
class TrainReport:
    run_id: int
    task: str
    model: str
    status: str
    summary: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_bags: int = 0
    n_cases: int = 0
    n_without_target: int = 0
    n_without_embedding: int = 0
    seconds: float = 0.0
    children: list["TrainReport"] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _choose_set(conn: sa.Connection, slide_ids: list[str], ref: str | None) -> EmbeddingSetInfo:
    if ref is not None:
        return resolve_set(conn, ref)
    covering = sets_covering(conn, slide_ids)
    if not covering:
        raise MissingStep("no embeddings for this cohort",
                          hint="run `histstore embed --encoder ENCODER --cohort COHORT` first")
    if len(covering) > 1:
        listing = ", ".join(f"{i.name} ({n} slides)" for i, n in covering)
        raise InvalidInput(f"the cohort has several embedding sets: {listing}; choose one with --embeddings")
    return covering[0][0]


def prepare(conn: sa.Connection, s: TrainSettings, spec: TaskSpec) -> Prepared:
    """Everything validated before anything is written."""
    require_cohort(conn, s.cohort)
    members = cohort_slide_ids(conn, s.cohort)
    if not members:
        raise EmptyCohort(f"cohort {s.cohort!r} has no slides")
    info = _choose_set(conn, members, s.embeddings)
    tt = task_targets(conn, spec, members)
    have = set(query_numpy(conn, "SELECT slide_id FROM embedding_arrays WHERE embedding_set_id = $1",
                           [info.embedding_set_id])["slide_id"].tolist())
    notes = []
    n_not_tumour = 0
    if spec.gene is not None:
        gene_slides = gene_task_slides(conn, [str(x) for x in tt.slide_ids], s.gene_slides)
        n_not_tumour = len(gene_slides.left_out)
        if n_not_tumour:
            notes.append(f"{n_not_tumour} slides that are not labelled tumour (task {TUMOUR_TASK}) left out: "
                         "fold changes are measured on the tumour sample (--gene-slides all includes them)")
        elif s.gene_slides == "tumour" and not gene_slides.labelled:
            notes.append(f"no {TUMOUR_TASK} labels for these slides: every slide carries its case's fold change")
        chosen = set(gene_slides.keep)
        tt_keep = [i for i, sid in enumerate(tt.slide_ids) if sid in chosen]
    else:
        tt_keep = range(len(tt.slide_ids))
    keep = [i for i in tt_keep if tt.slide_ids[i] in have]
    n_no_emb = len(tt_keep) - len(keep)
    if not keep:
        raise MissingStep(f"no slide of cohort {s.cohort!r} has both a {spec.name} target and an "
                          f"array in embedding set {info.name!r}",
                          hint=f"run `histstore embed` for the cohort, or import labels for {spec.name}")
    slide_ids = [str(tt.slide_ids[i]) for i in keep]
    case_ids = [str(tt.case_ids[i]) for i in keep]
    values = [tt.values[i] for i in keep]
    if spec.is_regression:
        targets = np.asarray(values, dtype=np.float64)
        classes: list[str] = []
        if np.ptp(targets) == 0:
            raise InvalidInput(f"task {spec.name} has a constant target in cohort {s.cohort!r}")
    else:
        present = sorted(set(map(str, values)))
        if len(present) < 2:
            raise InvalidInput(f"task {spec.name} has a single class ({present[0]}) in cohort "
                               f"{s.cohort!r}: nothing to learn")
        if len(present) == 2:
            pos = positive_class(present, s.positive)
            classes = [c for c in present if c != pos] + [pos]
        else:
            classes = present
        index = {c: i for i, c in enumerate(classes)}
        targets = np.asarray([index[str(v)] for v in values], dtype=np.int64)
    if spec.gene is not None and s.gene_slides == "all":
        # fold changes are measured per case on the tumour sample; a normal slide given its
        # case's value teaches the model to find tumour expression where there is no tumour
        normal = conn.exec_driver_sql(
            f"SELECT count(*) FROM slide_labels WHERE task = '{TUMOUR_TASK}' AND value = 'normal' "
            "AND slide_id IN (SELECT unnest(?::VARCHAR[]))", (slide_ids,)).scalar()
        if normal:
            notes.append(f"{normal} of {len(slide_ids)} slides are labelled normal (task {TUMOUR_TASK}) but "
                         "carry their case's fold change (--gene-slides all)")
    n_cases = len(set(case_ids))
    if n_cases < s.folds:
        raise InvalidInput(f"{n_cases} cases in cohort {s.cohort!r} with a {spec.name} target and "
                           f"embeddings: fewer than --folds {s.folds}")
    return Prepared(spec, info, slide_ids, case_ids, values, targets, classes, len(tt.missing), n_no_emb,
                    notes, n_not_tumour)


def _train_config(s: TrainSettings, spec: TaskSpec, n_classes: int, feature_dtype: str = "float32"):
    from histstore.mil.train_config import TrainConfig

    cfg = {"dropout": s.dropout} if s.dropout else {}
    cfg |= {k: v for k, v in (("hidden_dim", s.hidden_dim), ("attn_dim", s.attn_dim)) if v is not None}
    return TrainConfig(model=s.model, model_cfg=cfg,
                       task="regression" if spec.is_regression else "classification",
                       n_classes=None if spec.is_regression else n_classes, epochs=s.epochs,
                       patience=s.patience, min_epochs=s.min_epochs, lr=s.lr, weight_decay=s.weight_decay,
                       bags_per_step=s.bags_per_step, class_weight=s.class_weight, select_on=s.select_on,
                       standardize_features=s.standardize,
                       decision_threshold=s.decision_threshold if not spec.is_regression else "0.5",
                       feature_dtype=feature_dtype)


class CohortBags:
    """A run's bags, read once: the bag index (tile ids, lengths; no features) of every slide
    a run may train on, and the bag source opened on it (resident or streamed by the memory
    budget). A gene sweep keeps one for all genes; each gene takes its slides as a subset."""

    def __init__(self, store: Store, s: TrainSettings, device, whole_cohort: bool = False):
        self.store, self.settings, self.device = store, s, device
        self.whole_cohort = whole_cohort  # index every cohort slide with an array (gene sweeps)
        self.index = self.plan = self.source = None
        self.set_id: int | None = None

    def prepare(self, conn: sa.Connection, info: EmbeddingSetInfo, slide_ids: list[str], config):
        """Index the slides (with whole_cohort: every cohort slide that has an array in the
        set) once per embedding set and choose the mode, refusing a budget too small for a
        bag before anything is written. Returns (index, plan) for slide_ids. A short read."""
        from histstore.embeddings.bags import bag_index, missing_slides
        from histstore.mil.bag_source import choose_mode, parse_budget

        if self.index is None or self.set_id != info.embedding_set_id \
                or not set(slide_ids) <= set(self.index.slide_ids):
            wanted = list(slide_ids)
            if self.whole_cohort:
                members = cohort_slide_ids(conn, self.settings.cohort)
                gone = set(missing_slides(conn, info, members))
                wanted = [m for m in members if m not in gone]
                have = set(wanted)
                wanted += [m for m in slide_ids if m not in have]
            self.index = bag_index(conn, info, wanted)
            self.set_id, self.source = info.embedding_set_id, None
            budget = parse_budget(self.settings.memory_budget, self.device)
            self.plan = choose_mode(self.index.lengths, self.index.dim,
                                    np.dtype(self.index.dtype).itemsize, budget,
                                    names=self.index.slide_ids, bags_per_step=config.bags_per_step)
        return self.index.subset(slide_ids), self.plan

    def source_for(self, slide_ids: list[str]):
        """The bag source of these slides (opened, i.e. packed if resident, on first use; reads
        zarr only, no catalog connection)."""
        from histstore.mil.bag_source import open_bag_source

        if self.source is None:
            ix = self.index
            self.source = open_bag_source(ix.reader(self.store), ix.lengths, ix.dim, ix.dtype, self.plan,
                                          self.device, names=ix.slide_ids)
        if list(slide_ids) == self.index.slide_ids:
            return self.source
        return self.source.subset(self.index.positions(slide_ids))


def _save_fold_checkpoint(store: Store, run_id: int, p: Prepared, result, name: str | None = None) -> tuple[str, str]:
    """The fold's model (name: the file's stem, default fold<k>), written (atomically) before
    its commit; (store-relative path, sha256)."""
    import os

    import torch

    from histstore.hashing import sha256_file
    from histstore.mil.standardize import CHECKPOINT_KEY

    ckpt_rel = f"checkpoints/runs/{run_id}/{name or f'fold{int(result.fold)}'}.pt"
    path = store.resolve(ckpt_rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save({"model_spec": result.model_spec, "state_dict": result.model_state,
                "classes": p.classes, "target_scale": list(result.target_scale) if result.target_scale else None,
                "embedding_set": p.info.name, "decision_threshold": result.threshold,
                # (x - mean) / std before the model; None when the run did not standardise
                CHECKPOINT_KEY: result.feature_stats.to_checkpoint() if result.feature_stats else None}, tmp)
    os.replace(tmp, path)
    return ckpt_rel, sha256_file(path)


def _write_fold(conn: sa.Connection, run_id: int, p: Prepared, tile_ids: list[np.ndarray], result,
                ckpt_rel: str, ckpt_sha256: str) -> None:
    fold = int(result.fold)
    rows = []
    for subset, preds in (("val", result.val), ("test", result.test)):
        for j, pos in enumerate(preds.index.tolist()):
            if p.spec.is_regression:
                label, target, predicted = None, float(p.targets[pos]), f"{float(preds.pred[j]):.6g}"
            else:
                label, target, predicted = p.classes[p.targets[pos]], float(p.targets[pos]), p.classes[int(preds.pred[j])]
            rows.append({"run_id": run_id, "fold": fold, "slide_id": p.slide_ids[pos], "subset": subset,
                         "label": label, "target": target, "score": float(preds.score[j]),
                         "predicted": predicted})
    insert_frame(conn, "predictions", pd.DataFrame(rows))
    if result.test_attention:
        tiles = np.concatenate([tile_ids[pos] for pos in result.test_attention])
        scores = np.concatenate([np.asarray(a, dtype=np.float32) for a in result.test_attention.values()])
        insert_frame(conn, "attention", {"run_id": np.full(len(tiles), run_id, np.int64),
                                         "fold": np.full(len(tiles), fold, np.int32),
                                         "tile_id": tiles, "score": scores})
    metric_rows = [{"fold": fold, "subset": subset, "name": k, "value": v}
                   for subset, m in result.metrics.items() for k, v in m.values.items()]
    # patient level: slide scores averaged per case (case_auc, case_accuracy, ...)
    metric_rows += case_metric_rows(fold, {"val": result.val, "test": result.test}, p.case_ids,
                                    p.spec.is_regression, None if p.spec.is_regression else len(p.classes))
    metric_rows.append({"fold": fold, "subset": "val", "name": "best_epoch", "value": result.best_epoch})
    if result.threshold is not None:
        metric_rows.append({"fold": fold, "subset": "val", "name": "decision_threshold", "value": result.threshold})
    metric_rows.append({"fold": fold, "subset": "train", "name": "seconds_per_epoch",
                        "value": result.seconds_per_epoch})
    for h in result.history:
        metric_rows.append({"fold": fold, "subset": "train", "name": "loss", "step": h.epoch, "value": h.train_loss})
        metric_rows.append({"fold": fold, "subset": "val", "name": "loss", "step": h.epoch, "value": h.val_loss})
    write_metrics(conn, run_id, metric_rows)
    fault_point("train.mid_commit")
    conn.exec_driver_sql("INSERT INTO artifacts (kind, path, run_id, fold, description, sha256) VALUES "
                         "('mil-checkpoint', ?, ?, ?, ?, ?)",
                         (ckpt_rel, run_id, fold, f"{result.model_spec['name']} weights", ckpt_sha256))


def _final_model(store: Store, run_id: int, p: Prepared, bags, config, s: TrainSettings, device,
                 n_folds: int, progress_cb) -> None:
    """--final: one model fit on all of the run's bags (mil/final_model.py), committed with its
    checkpoint (artifact fold NULL) and metrics (fold NULL, subset 'final'); skipped when the
    run has it already (a resume after it was written)."""
    from histstore.mil.final_model import FINAL_CHECKPOINT, FINAL_VAL_FRACTION, fit_final

    with store.read() as conn:
        if has_final_model(conn, run_id):
            return
    result = fit_final(bags, p.targets, p.case_ids, p.targets if p.spec.is_regression else p.labels, config,
                       seed=s.seed, n_folds=n_folds, device=device, progress_cb=progress_cb,
                       val_fraction=FINAL_VAL_FRACTION if s.val_fraction > 0 else 0.0)
    ckpt_rel, ckpt_sha = _save_fold_checkpoint(store, run_id, p, result, name=FINAL_CHECKPOINT)
    rows = [{"subset": "final", "name": k, "value": v} for k, v in (
        ("n_train", len(result.train_idx)), ("n_val", len(result.val_idx)), ("best_epoch", result.best_epoch),
        ("decision_threshold", result.threshold), ("seconds_per_epoch", result.seconds_per_epoch)) if v is not None]
    rows += [{"subset": "final", "name": f"{part}_loss", "step": h.epoch, "value": getattr(h, f"{part}_loss")}
             for h in result.history for part in ("train", "val")]
    with store.commit(f"the final model of run {run_id}") as conn:
        if not has_final_model(conn, run_id):
            write_metrics(conn, run_id, rows)
            conn.exec_driver_sql("INSERT INTO artifacts (kind, path, run_id, fold, description, sha256) VALUES "
                                 "('mil-checkpoint', ?, ?, NULL, ?, ?)",
                                 (ckpt_rel, run_id, f"{result.model_spec['name']} weights, final model",
                                  ckpt_sha))
        record_progress(conn, run_id, done=n_folds + 1)


def _finished_folds(conn: sa.Connection, run_id: int) -> set[int]:
    return set(r[0] for r in conn.exec_driver_sql(
        "SELECT DISTINCT fold FROM metrics WHERE run_id = ? AND subset = 'test' AND step IS NULL "
        "AND fold IS NOT NULL", (run_id,)).all())


def _split_rows(run_id: int, p: Prepared, splits) -> pd.DataFrame:
    rows = []
    for fold in range(splits.n_folds):
        per_item = splits.subset[fold][splits.item_case]
        for sid, cid, sub in zip(p.slide_ids, p.case_ids, per_item):
            rows.append((run_id, fold, sid, cid, str(sub)))
    return pd.DataFrame(rows, columns=["run_id", "fold", "slide_id", "case_id", "subset"])


def _cohort_stats(conn: sa.Connection, p: Prepared, s: TrainSettings) -> list[dict]:
    """Per-gene descriptors for the AUC-versus-fold-change analysis (subset 'cohort')."""
    out = []
    if p.spec.gene is not None:
        lfc = conn.exec_driver_sql(
            "SELECT avg(abs(log2_fold_change)) FROM fold_changes WHERE gene = ? AND case_id IN "
            "(SELECT unnest(?::VARCHAR[]))" + (" AND source = ?" if s.fc_source else ""),
            (p.spec.gene, sorted(set(p.case_ids)), *([s.fc_source] if s.fc_source else []))).scalar()
        out.append({"subset": "cohort", "name": "mean_abs_log2fc", "value": lfc})
    if not p.spec.is_regression:
        out.append({"subset": "cohort", "name": "positive_fraction", "value": float(np.mean(p.targets == len(p.classes) - 1))})
    if p.spec.gene is not None:
        out.append({"subset": "cohort", "name": "n_not_tumour_left_out", "value": float(p.n_not_tumour)})
    out.append({"subset": "cohort", "name": "n_bags", "value": float(len(p.slide_ids))})
    out.append({"subset": "cohort", "name": "n_cases", "value": float(len(set(p.case_ids)))})
    return out


def _run_single(store: Store, s: TrainSettings, spec: TaskSpec, parent_run_id: int | None = None,
                resume_run: dict | None = None, show_progress: bool = True,
                notify: Callable[[str], None] | None = None,
                cohort_bags: CohortBags | None = None) -> TrainReport:
    from histstore.devices import resolve_device
    from histstore.mil.splits import make_splits, splits_from_rows
    from histstore.mil.cross_validation import run_cv

    t0 = time.perf_counter()
    device = resolve_device(s.device)
    cohort_bags = cohort_bags or CohortBags(store, s, device)
    with store.read() as conn:
        p = prepare(conn, s, spec)
        config = _train_config(s, spec, max(2, len(p.classes)), str(p.info.dtype))
        index, plan = cohort_bags.prepare(conn, p.info, p.slide_ids, config)
        stats = _cohort_stats(conn, p, s) if resume_run is None else None
        if resume_run is not None:
            stored = conn.exec_driver_sql(
                "SELECT DISTINCT fold, case_id, subset FROM splits WHERE run_id = ?", (resume_run["run_id"],)).all()
            stored_slides = set(r[0] for r in conn.exec_driver_sql(
                "SELECT DISTINCT slide_id FROM splits WHERE run_id = ?", (resume_run["run_id"],)).all())
            done = _finished_folds(conn, resume_run["run_id"])
    n_cases = len(set(p.case_ids))
    if notify is not None:
        notify(f"cohort {s.cohort}, task {spec.name}: {len(p.slide_ids)} slides of {n_cases} cases "
               f"in {s.folds} folds grouped by case"
               + (f" ({p.n_without_target} without a target, {p.n_without_embedding} without embeddings "
                  "left out)" if p.n_without_target or p.n_without_embedding else ""))
    if resume_run is None:
        splits = make_splits(p.case_ids, p.labels if not spec.is_regression else p.targets, s.folds,
                             seed=s.seed, task=config.task, val_fraction=s.val_fraction)
        with store.commit("a new training run") as conn:
            run_id = create_run(conn, kind="train", settings={**s.to_dict(), "task": spec.name, "genes": None,
                                                              "task_spec": spec.to_dict(),
                                                              "train_config": config.to_dict(),
                                                              "classes": p.classes,
                                                              "bag_source": asdict(plan)},
                                seed=s.seed, cohort=s.cohort, task=spec.name, model=s.model,
                                embedding_set_id=p.info.embedding_set_id, encoder_id=p.info.encoder_id,
                                parent_run_id=parent_run_id, progress_total=splits.n_folds + s.final,
                                progress_unit="fold")
            insert_frame(conn, "splits", _split_rows(run_id, p, splits))
            write_metrics(conn, run_id, stats)
        done: set[int] = set()
    else:
        run_id = resume_run["run_id"]
        refuse_if_alive(store, run_id)
        if stored_slides != set(p.slide_ids):
            raise InvalidInput(f"run {run_id}'s bags changed since it started (labels or embeddings "
                               "were changed): start a new run")
        splits = splits_from_rows([{"fold": f, "case_id": c, "subset": sb} for f, c, sb in stored],
                                  p.case_ids, seed=s.seed)
        with store.commit(f"the resume of run {run_id}") as conn:
            mark_running(conn, run_id)
            record_progress(conn, run_id, done=len(done), total=splits.n_folds + s.final, unit="fold")
    report = TrainReport(run_id, spec.name, s.model, "running", n_bags=len(p.slide_ids), n_cases=n_cases,
                         n_without_target=p.n_without_target, n_without_embedding=p.n_without_embedding,
                         notes=list(p.notes) + ([plan.describe()] if plan.mode == "streamed" else []))
    bags = cohort_bags.source_for(p.slide_ids)
    remaining = splits.n_folds - len(done)
    bar = progress_bar(total=(remaining + s.final) * s.epochs, desc=f"train {spec.name} {s.model} (run {run_id})",
                       unit="epoch", disable=not show_progress)

    def on_epoch(rec):
        bar.update(1)
        bar.set_postfix(fold=rec.fold, train=f"{rec.train_loss:.3f}", val=f"{rec.val_loss:.3f}", refresh=False)

    try:
        with Heartbeat(store, run_id) as beat, \
                run_outcome(store, run_id, f"`histstore train --resume {run_id}` continues it"):
            folds = run_cv(bags, p.targets, p.case_ids, config, n_folds=s.folds,
                           seed=s.seed, device=device, splits=splits, skip_folds=done, progress_cb=on_epoch)
            for result in folds:
                ckpt_rel, ckpt_sha = _save_fold_checkpoint(store, run_id, p, result)
                fault_point("train.before_commit")
                with store.commit(f"fold {result.fold} of run {run_id}") as conn:
                    finished = _finished_folds(conn, run_id)
                    if int(result.fold) not in finished:  # another resume may have written it
                        _write_fold(conn, run_id, p, index.tile_ids, result, ckpt_rel, ckpt_sha)
                        finished.add(int(result.fold))
                    record_progress(conn, run_id, done=len(finished))
                beat.touch()
                fault_point("train.after_fold")
                # early-stopped folds leave epochs unused: keep the bar honest
                bar.update(max(0, s.epochs - len(result.history)))
            if s.final:
                _final_model(store, run_id, p, bags, config, s, device, splits.n_folds, on_epoch)
                beat.touch()
            with store.commit(f"the end of run {run_id}") as conn:
                end_run(conn, run_id, "finished")
            report.status = "finished"
    finally:
        bar.close()
    with store.read() as conn:
        report.summary = _summary(conn, run_id)
    report.seconds = time.perf_counter() - t0
    return report


def _summary(conn: sa.Connection, run_id: int) -> dict[str, tuple[float, float]]:
    rows = conn.exec_driver_sql(
        "SELECT metric, mean, sd FROM run_summary WHERE run_id = ? AND subset = 'test' ORDER BY 1",
        (run_id,)).all()
    # a metric undefined in every fold (e.g. AUC with one class per test fold) is NaN, not absent
    return {m: (math.nan if mean is None else mean, math.nan if sd is None else sd) for m, mean, sd in rows}


def _gene_list(conn: sa.Connection, genes: tuple[str, ...]) -> list[str]:
    if list(genes) == ["drivers"]:
        out = [r[0] for r in conn.exec_driver_sql(
            "SELECT symbol FROM genes WHERE is_driver ORDER BY 1").all()]
        if not out:
            raise MissingStep("no driver genes in the catalog", hint="run `histstore genes import FILE --drivers`")
        return out
    return list(dict.fromkeys(genes))


def train(store: Store, s: TrainSettings, show_progress: bool = True,
          notify: Callable[[str], None] | None = None) -> TrainReport:
    """notify(line): told how many slides and cases the cohort gives, before training."""
    check_settings(s)
    if s.joint:  # train_joint.py builds on this module: it runs them (and the CLI calls it)
        raise InvalidInput("joint gene runs are trained by histstore.train_joint.train")
    with store.session():
        if not s.genes:
            spec = parse_task(s.task, s.threshold, s.p_cut, s.fc_source)
            _train_config(s, spec, 2)  # settings validated before anything runs
            return _run_single(store, s, spec, show_progress=show_progress, notify=notify)
        return _train_genes(store, s, show_progress, notify)


def check_settings(s: TrainSettings) -> None:
    """The checks every training run makes before anything is read or written."""
    from histstore.mil.models import model_names

    if s.model not in model_names():
        raise InvalidInput(f"unknown model {s.model!r}; choose one of {', '.join(model_names())}")
    if s.folds < 2:
        raise InvalidInput("--folds must be >= 2")
    if not 0.0 <= s.val_fraction < 1.0:
        raise InvalidInput(f"--val-fraction must be in [0, 1), got {s.val_fraction}")
    if s.gene_slides not in GENE_SLIDES:
        raise InvalidInput(f"--gene-slides must be one of {', '.join(GENE_SLIDES)}, got {s.gene_slides!r}")
    from histstore.mil.bag_source import parse_budget

    parse_budget(s.memory_budget)  # a malformed budget is refused before anything runs


def _train_genes(store: Store, s: TrainSettings, show_progress: bool,
                 notify: Callable[[str], None] | None = None) -> TrainReport:
    """One model per gene under one parent run; the parent stores the per-gene analysis."""
    kind = s.task.split(":")[0]
    if kind not in ("de", "up", "down", "fc"):
        raise InvalidInput("with --genes, --task is the gene task kind: de, up, down or fc")
    with store.read() as conn:
        require_cohort(conn, s.cohort)
        genes = _gene_list(conn, s.genes)
    specs = [parse_task(f"{kind}:{g}", s.threshold, s.p_cut, s.fc_source) for g in genes]
    from histstore.devices import resolve_device

    # every gene trains on the cohort's bags, indexed and packed once for all of them; the
    # memory budget is checked against them before the parent run is written
    cohort_bags = CohortBags(store, s, resolve_device(s.device), whole_cohort=True)
    with store.read() as conn:
        members = cohort_slide_ids(conn, s.cohort)
        if members:
            info = _choose_set(conn, members, s.embeddings)
            cohort_bags.prepare(conn, info, [], _train_config(s, specs[0], 2, str(info.dtype)))
    with store.commit("a new gene run") as conn:
        parent = create_run(conn, kind="train", settings=s.to_dict() | {"genes": genes}, seed=s.seed,
                            cohort=s.cohort, task=f"{kind}:*", model=s.model, progress_total=len(specs),
                            progress_unit="gene")
    report = TrainReport(parent, f"{kind}:*", s.model, "running")
    with Heartbeat(store, parent) as beat, \
            run_outcome(store, parent, "train the remaining genes in a new run"):
        for i, spec in enumerate(specs):
            try:
                report.children.append(_run_single(store, s, spec, parent_run_id=parent,
                                                   show_progress=show_progress, notify=notify,
                                                   cohort_bags=cohort_bags))
            except HiststoreError as exc:  # e.g. a gene with one class here: recorded, others go on
                with store.commit(f"gene {spec.name} of run {parent}") as conn:
                    rid = create_run(conn, kind="train", settings=s.to_dict(), seed=s.seed, cohort=s.cohort,
                                     task=spec.name, model=s.model, parent_run_id=parent)
                    end_run(conn, rid, "failed", str(exc))
                report.notes.append(f"{spec.name}: {exc}")
            with store.commit(f"progress of run {parent}") as conn:
                record_progress(conn, parent, done=i + 1)
            beat.touch()
        finish_gene_parent(store, parent, kind, len(genes), report)
    return report


def finish_gene_parent(store: Store, parent: int, kind: str, n_genes: int, report: TrainReport) -> None:
    """The parent's per-gene analysis (test AUC or Pearson of each finished gene run against
    the gene's mean |log2FC|: Spearman), written with the parent's end."""
    from scipy import stats

    with store.read() as conn:
        rows = conn.exec_driver_sql("""
            SELECT r.task, s.mean, m.value FROM runs r
            JOIN run_summary s ON s.run_id = r.run_id AND s.subset = 'test' AND s.metric = ?
            JOIN metrics m ON m.run_id = r.run_id AND m.subset = 'cohort' AND m.name = 'mean_abs_log2fc'
            WHERE r.parent_run_id = ? AND r.status = 'finished' AND s.mean IS NOT NULL""",
            ("pearson" if kind == "fc" else "auc", parent)).all()
    parent_metrics = [{"name": "n_genes", "value": float(n_genes)},
                      {"name": "n_genes_trained", "value": float(len(rows))}]
    metric_vals, lfc_vals = [r[1] for r in rows], [r[2] for r in rows]
    if len(rows) >= 3 and np.ptp(metric_vals) > 0 and np.ptp(lfc_vals) > 0:
        rho, pval = stats.spearmanr(metric_vals, lfc_vals)
        parent_metrics += [{"name": "spearman_metric_vs_mean_abs_log2fc", "value": float(rho)},
                           {"name": "spearman_p", "value": float(pval)}]
    with store.commit(f"the end of run {parent}") as conn:
        write_metrics(conn, parent, [{**m, "subset": "genes"} for m in parent_metrics])
        end_run(conn, parent, "finished")
    report.status = "finished"
    report.summary = {m["name"]: (m["value"], math.nan) for m in parent_metrics}


def resume(store: Store, run_id: int, show_progress: bool = True,
           notify: Callable[[str], None] | None = None) -> TrainReport:
    with store.read() as conn:
        run = require_run(conn, run_id)
    if run["kind"] != "train":
        raise InvalidInput(f"run {run_id} is a {run['kind']} run, not a train run")
    if run["status"] == "finished":
        raise InvalidInput(f"run {run_id} already finished")
    if run["settings"].get("joint"):
        raise InvalidInput(f"run {run_id} is a joint gene run: histstore.train_joint.resume continues it")
    if run["parent_run_id"] is None and run["task"] and run["task"].endswith(":*"):
        raise InvalidInput("resume the gene runs one by one (their run ids are in `histstore runs show`)")
    st = dict(run["settings"])
    for k in ("task_spec", "train_config", "classes", "bag_source"):
        st.pop(k, None)
    st["genes"] = None
    # runs started before these choices existed used every slide, unstandardised features
    st.setdefault("gene_slides", "all")
    st.setdefault("standardize", False)
    s = TrainSettings(**st)
    spec = parse_task(s.task, s.threshold, s.p_cut, s.fc_source)
    with store.session():
        return _run_single(store, s, spec, parent_run_id=run["parent_run_id"], resume_run=run,
                           show_progress=show_progress, notify=notify)
