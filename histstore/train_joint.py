"""`histstore train --genes ... --joint`: one multi-output MIL model for a gene panel.

One model (the multi-output form of `--model`, mil/models.py `MULTI_OUTPUT`: a shared tile
embedding, one gated-attention branch and head per gene) is cross-validated on the cohort's
bags with ONE split for the whole panel (grouped by case, over every slide that has a target
for at least one gene), so every gene sees the same folds. A slide without a gene's target
(no fold change for its case, or left out of that gene's task) is masked out of that gene's
loss (mil/joint.py, which also documents the selection rule: mean validation loss over the
genes; thresholds are chosen per gene).

The results land as per-gene runs do (train.py `_train_genes`): a parent run (task `KIND:*`,
settings `joint: true`) with one child run per gene holding its splits (the panel's split
restricted to the gene's slides), predictions, metrics (slide and case level), test-tile
attention (the gene's own branch) and its cohort descriptors; the parent gets the
AUC-versus-fold-change analysis at the end. Each fold is written for all genes in one commit,
after its checkpoint: ONE file per fold, `checkpoints/runs/<parent>/fold<k>.pt`, with the keys
of a single-task checkpoint plus `outputs` (the child tasks in output order) and per-output
`decision_threshold` (and `target_scale`, `output_classes`) lists; every child registers a
`mil-checkpoint` artifact row for that file. `--final` adds one joint model fit on all of the
panel's slides (`final.pt`, fold NULL for every child), which `histstore predict` applies
gene by gene. `train --resume PARENT` continues with the folds (and final model) not yet
written.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np

from histstore.catalog.cohorts import require_cohort
from histstore.catalog.runs import has_final_model
from histstore.errors import HiststoreError, InvalidInput
from histstore.faults import fault_point
from histstore.jobs import Heartbeat, mark_running, record_progress
from histstore.progress import progress_bar
from histstore.runs import create_run, end_run, refuse_if_alive, run_outcome, write_metrics
from histstore.store import Store
from histstore.tasks import parse_task
from histstore.train import (CohortBags, Prepared, TrainReport, TrainSettings, _cohort_stats, _finished_folds,
                             _gene_list, _split_rows, _summary, _train_config, _write_fold, finish_gene_parent,
                             prepare)

GENE_KINDS = ("de", "up", "down", "fc")


def train(store: Store, s: TrainSettings, show_progress: bool = True,
          notify: Callable[[str], None] | None = None) -> TrainReport:
    """`histstore train`: a joint gene run (s.joint), else train.train."""
    from histstore import train as single

    if not s.joint:
        return single.train(store, s, show_progress, notify)
    single.check_settings(s)
    return train_joint(store, s, show_progress, notify)


def resume(store: Store, run_id: int, show_progress: bool = True,
           notify: Callable[[str], None] | None = None) -> TrainReport:
    """`histstore train --resume RUN`: a joint gene run (its parent), else train.resume."""
    from histstore import train as single
    from histstore.catalog.runs import require_run

    with store.read() as conn:
        run = require_run(conn, run_id)
    if run["kind"] != "train" or not run["settings"].get("joint"):
        return single.resume(store, run_id, show_progress, notify)
    if run["status"] == "finished":
        raise InvalidInput(f"run {run_id} already finished")
    return resume_joint(store, run, show_progress, notify)


@dataclass
class Panel:
    """The genes trained jointly and the union of their bags. targets [n, K]: class index
    (0 negative, 1 positive) or value per gene, NaN where a slide has no target for it."""

    specs: list
    preps: list[Prepared]
    slide_ids: list[str]
    case_ids: list[str]
    targets: np.ndarray
    positions: list[np.ndarray]  # per gene: the union position of each of its slides
    failed: list[tuple[str, str]]  # (task, why) of genes left out

    @property
    def tasks(self) -> list[str]:
        return [sp.name for sp in self.specs]


def _check(s: TrainSettings) -> str:
    """The gene kind; InvalidInput for settings --joint cannot take (nothing written yet)."""
    from histstore.mil.models import multi_output_name

    if not s.genes:
        raise InvalidInput("--joint needs --genes (the gene panel trained by one model)")
    kind = s.task.split(":")[0]
    if kind not in GENE_KINDS or ":" in s.task:
        raise InvalidInput("with --genes, --task is the gene task kind: de, up, down or fc")
    multi_output_name(s.model)
    return kind


def _panel(conn, s: TrainSettings, kind: str, genes: list[str], only: list[str] | None = None) -> Panel:
    """Prepare every gene (train.prepare's checks); a gene that cannot be trained (one class
    here, ...) is left out with its reason. only: the child tasks of a run being resumed."""
    specs, preps, failed = [], [], []
    for g in genes:
        spec = parse_task(f"{kind}:{g}", s.threshold, s.p_cut, s.fc_source)
        if only is not None and spec.name not in only:
            continue
        try:
            p = prepare(conn, s, spec)
            if not spec.is_regression and len(p.classes) != 2:
                raise InvalidInput(f"task {spec.name} has {len(p.classes)} classes: --joint trains one "
                                   "binary output per gene")
        except HiststoreError as exc:
            failed.append((spec.name, str(exc)))
            continue
        specs.append(spec)
        preps.append(p)
    if not preps:
        raise InvalidInput(f"no gene of the panel can be trained jointly: {failed[0][0]}: {failed[0][1]}")
    union: dict[str, int] = {}
    case_of: dict[str, str] = {}
    for p in preps:
        for sid, cid in zip(p.slide_ids, p.case_ids):
            union.setdefault(sid, len(union))
            case_of[sid] = cid
    slide_ids = list(union)
    y = np.full((len(slide_ids), len(preps)), np.nan)
    positions = []
    for k, p in enumerate(preps):
        pos = np.array([union[sid] for sid in p.slide_ids], dtype=np.int64)
        y[pos, k] = p.targets.astype(np.float64)
        positions.append(pos)
    return Panel(specs, preps, slide_ids, [case_of[x] for x in slide_ids], y, positions, failed)


def _panel_splits(panel: Panel, s: TrainSettings):
    """One split for the panel, grouped by case, stratified (make_splits' quantile bins of the
    case mean) by one score per slide: the mean of the genes' z-scored targets - for 0/1
    targets, how many of its genes a slide is positive for, relative to the others."""
    from histstore.mil.splits import make_splits

    return make_splits(panel.case_ids, _strata_score(panel), s.folds, seed=s.seed, task="regression",
                       val_fraction=s.val_fraction)


def _strata_score(panel: Panel) -> np.ndarray:
    y = panel.targets
    sd = np.nanstd(y, axis=0)
    return np.nanmean((y - np.nanmean(y, axis=0)) / np.where(sd > 0, sd, 1.0), axis=1)


def _gene_splits(splits, p: Prepared):
    from histstore.mil.splits import splits_from_rows

    return splits_from_rows(splits.rows(), p.case_ids, seed=splits.seed)


def _joint_config(s: TrainSettings, panel: Panel, dtype: str):
    from histstore.mil.models import multi_output_name

    base = _train_config(s, panel.specs[0], 2, dtype)
    return replace(base, model=multi_output_name(s.model), n_classes=None if base.task == "regression" else 2)


def train_joint(store: Store, s: TrainSettings, show_progress: bool = True,
                notify: Callable[[str], None] | None = None) -> TrainReport:
    from histstore.devices import resolve_device

    kind = _check(s)
    t0 = time.perf_counter()
    device = resolve_device(s.device)
    cohort_bags = CohortBags(store, s, device)
    with store.session():
        with store.read() as conn:
            require_cohort(conn, s.cohort)
            genes = _gene_list(conn, s.genes)
            panel = _panel(conn, s, kind, genes)
            info = panel.preps[0].info
            config = _joint_config(s, panel, str(info.dtype))
            index, plan = cohort_bags.prepare(conn, info, panel.slide_ids, config)
            stats = [_cohort_stats(conn, p, s) for p in panel.preps]
        splits = _panel_splits(panel, s)
        if notify is not None:
            notify(f"cohort {s.cohort}, {len(panel.specs)} genes ({kind}) in one model: {len(panel.slide_ids)} "
                   f"slides of {len(set(panel.case_ids))} cases in {s.folds} folds grouped by case"
                   + (f"; left out: {', '.join(t for t, _ in panel.failed)}" if panel.failed else ""))
        settings = s.to_dict() | {"genes": genes, "joint": True}
        with store.commit("a new joint gene run") as conn:
            parent = create_run(conn, kind="train", settings=settings | {
                                    "train_config": config.to_dict(), "outputs": panel.tasks,
                                    "bag_source": asdict(plan)},
                                seed=s.seed, cohort=s.cohort, task=f"{kind}:*", model=s.model,
                                embedding_set_id=info.embedding_set_id, encoder_id=info.encoder_id,
                                progress_total=splits.n_folds + s.final, progress_unit="fold")
            children = []
            for spec, p, st in zip(panel.specs, panel.preps, stats):
                child = create_run(conn, kind="train", settings=s.to_dict() | {
                                       "task": spec.name, "genes": None, "joint": True, "joint_parent": parent,
                                       "task_spec": spec.to_dict(), "train_config": config.to_dict(),
                                       "classes": p.classes, "bag_source": asdict(plan)},
                                   seed=s.seed, cohort=s.cohort, task=spec.name, model=s.model,
                                   embedding_set_id=info.embedding_set_id, encoder_id=info.encoder_id,
                                   parent_run_id=parent, progress_total=splits.n_folds + s.final,
                                   progress_unit="fold")
                insert_splits(conn, child, p, _gene_splits(splits, p))
                write_metrics(conn, child, st)
                children.append(child)
            for task, why in panel.failed:  # recorded, as a per-gene run records a gene it cannot train
                rid = create_run(conn, kind="train", settings=s.to_dict() | {"joint": True}, seed=s.seed,
                                 cohort=s.cohort, task=task, model=s.model, parent_run_id=parent)
                end_run(conn, rid, "failed", why)
        return _run_folds(store, s, kind, panel, splits, config, parent, children, set(), cohort_bags, index,
                          device, show_progress, t0, n_genes=len(genes))


def insert_splits(conn, child: int, p: Prepared, gene_splits) -> None:
    from histstore.catalog.bulk import insert_frame

    insert_frame(conn, "splits", _split_rows(child, p, gene_splits))


def resume_joint(store: Store, run: dict, show_progress: bool = True,
                 notify: Callable[[str], None] | None = None) -> TrainReport:
    """Continue a joint gene run (the parent's id) with the folds none of its genes wrote."""
    from histstore.devices import resolve_device
    from histstore.mil.splits import splits_from_rows

    run_id = int(run["run_id"])
    if run["parent_run_id"] is not None:
        raise InvalidInput(f"run {run_id} is one gene of joint run {run['parent_run_id']}: "
                           f"resume that run (`histstore train --resume {run['parent_run_id']}`)")
    st = {k: v for k, v in run["settings"].items()
          if k in TrainSettings.__dataclass_fields__}
    st["genes"] = tuple(st["genes"])
    s = TrainSettings(**st)
    kind = _check(s)
    t0 = time.perf_counter()
    device = resolve_device(s.device)
    cohort_bags = CohortBags(store, s, device)
    with store.session():
        with store.read() as conn:
            # the genes it trains: children with splits (those it could not train have none)
            trained = dict(conn.exec_driver_sql(
                "SELECT task, run_id FROM runs r WHERE parent_run_id = ? AND EXISTS "
                "(SELECT 1 FROM splits x WHERE x.run_id = r.run_id) ORDER BY run_id", (run_id,)).all())
            panel = _panel(conn, s, kind, list(s.genes), only=list(trained))
            if panel.failed or panel.tasks != [t for t in run["settings"].get("outputs", panel.tasks)]:
                raise InvalidInput(f"run {run_id}'s genes changed since it started (labels, fold changes or "
                                   "embeddings were changed): start a new run")
            children = [trained[t] for t in panel.tasks]
            stored = conn.exec_driver_sql(
                "SELECT DISTINCT fold, case_id, subset FROM splits WHERE run_id IN "
                "(SELECT unnest(?::BIGINT[]))", (children,)).all()
            for child, p in zip(children, panel.preps):
                have = {r[0] for r in conn.exec_driver_sql(
                    "SELECT DISTINCT slide_id FROM splits WHERE run_id = ?", (child,)).all()}
                if have != set(p.slide_ids):
                    raise InvalidInput(f"run {run_id}'s bags changed since it started (labels or embeddings "
                                       "were changed): start a new run")
            done = set.intersection(*[_finished_folds(conn, c) for c in children])
            info = panel.preps[0].info
            config = _joint_config(s, panel, str(info.dtype))
            index, _ = cohort_bags.prepare(conn, info, panel.slide_ids, config)
        refuse_if_alive(store, run_id)
        splits = splits_from_rows([{"fold": f, "case_id": c, "subset": sb} for f, c, sb in stored],
                                  panel.case_ids, seed=s.seed)
        if notify is not None:
            notify(f"run {run_id}: {len(done)} of {splits.n_folds} folds done, {len(panel.specs)} genes")
        with store.commit(f"the resume of run {run_id}") as conn:
            for rid in [run_id, *children]:
                mark_running(conn, rid)
                record_progress(conn, rid, done=len(done))
        return _run_folds(store, s, kind, panel, splits, config, run_id, children, done, cohort_bags, index,
                          device, show_progress, t0, n_genes=len(s.genes))


def _run_folds(store: Store, s: TrainSettings, kind: str, panel: Panel, splits, config, parent: int,
               children: list[int], done: set[int], cohort_bags: CohortBags, index, device,
               show_progress: bool, t0: float, n_genes: int) -> TrainReport:
    from histstore.mil.cross_validation import fold_seed
    from histstore.mil.joint import train_joint_fold

    bags = cohort_bags.source_for(panel.slide_ids)
    gene_tiles = [[index.tile_ids[u] for u in pos] for pos in panel.positions]
    # union position -> the gene's own position, per gene
    to_gene = [{int(u): j for j, u in enumerate(pos)} for pos in panel.positions]
    report = TrainReport(parent, f"{kind}:*", s.model, "running", n_bags=len(panel.slide_ids),
                         n_cases=len(set(panel.case_ids)),
                         notes=[f"{t}: {why}" for t, why in panel.failed])
    todo = [f for f in range(splits.n_folds) if f not in done]
    with store.read() as conn:
        need_final = s.final and not all(has_final_model(conn, c) for c in children)
    bar = progress_bar(total=(len(todo) + need_final) * s.epochs,
                       desc=f"train {kind}:* joint {s.model} (run {parent})", unit="epoch",
                       disable=not show_progress)

    def on_epoch(rec):
        bar.update(1)
        bar.set_postfix(fold=rec.fold, train=f"{rec.train_loss:.3f}", val=f"{rec.val_loss:.3f}", refresh=False)

    hint = f"`histstore train --resume {parent}` continues it"
    try:
        with ExitStack() as stack:
            beat = stack.enter_context(Heartbeat(store, parent, children=True))
            for rid in (parent, *children):
                stack.enter_context(run_outcome(store, rid, hint))
            for fold in todo:
                tr, va, te = splits.indices(fold)
                results = train_joint_fold(bags, panel.targets, tr, va, te, config, seed=fold_seed(s.seed, fold),
                                           device=device, progress_cb=on_epoch, fold=fold)
                ckpt_rel, ckpt_sha = save_joint_checkpoint(store, parent, fold, panel, results)
                fault_point("train.before_commit")
                with store.commit(f"fold {fold} of run {parent}") as conn:
                    for child, p, r, m, tiles in zip(children, panel.preps, results, to_gene, gene_tiles):
                        finished = _finished_folds(conn, child)
                        if fold not in finished:  # another resume may have written it
                            _write_fold(conn, child, p, tiles, _remap(r, m), ckpt_rel, ckpt_sha)
                            finished.add(fold)
                        record_progress(conn, child, done=len(finished))
                    record_progress(conn, parent, done=splits.n_folds - len(todo) + todo.index(fold) + 1)
                beat.touch()
                fault_point("train.after_fold")
                bar.update(max(0, s.epochs - len(results[0].history)))
            if need_final:
                _final_model(store, s, panel, splits.n_folds, config, parent, children, bags, device, on_epoch)
            with store.commit(f"the end of run {parent}") as conn:
                for child in children:
                    end_run(conn, child, "finished")
            finish_gene_parent(store, parent, kind, n_genes, report)
    finally:
        bar.close()
    with store.read() as conn:
        for child, spec, p in zip(children, panel.specs, panel.preps):
            report.children.append(TrainReport(child, spec.name, s.model, "finished", _summary(conn, child),
                                               n_bags=len(p.slide_ids), n_cases=len(set(p.case_ids)),
                                               n_without_target=p.n_without_target,
                                               n_without_embedding=p.n_without_embedding, notes=list(p.notes)))
    report.seconds = time.perf_counter() - t0
    return report


def _final_model(store: Store, s: TrainSettings, panel: Panel, n_folds: int, config, parent: int,
                 children: list[int], bags, device, progress_cb) -> None:
    """--final: one joint model fit on all of the panel's bags (as mil/final_model.py does for
    one task: ~10 % of the cases, grouped, for early stopping; seed after the last fold),
    saved as checkpoints/runs/<parent>/final.pt and registered by every gene run (fold NULL)
    with its metrics (subset 'final'), in one commit."""
    from histstore.mil.cross_validation import fold_seed
    from histstore.mil.final_model import FINAL_CHECKPOINT, FINAL_VAL_FRACTION, final_split
    from histstore.mil.joint import train_joint_fold

    train_idx, val_idx = final_split(panel.case_ids, _strata_score(panel), seed=s.seed, task="regression",
                                     val_fraction=FINAL_VAL_FRACTION if s.val_fraction > 0 else 0.0)
    results = train_joint_fold(bags, panel.targets, train_idx, val_idx, np.zeros(0, np.int64), config,
                               seed=fold_seed(s.seed, n_folds), device=device, progress_cb=progress_cb,
                               fold=None, allow_no_test=True)
    ckpt_rel, ckpt_sha = save_joint_checkpoint(store, parent, FINAL_CHECKPOINT, panel, results)
    with store.commit(f"the final model of run {parent}") as conn:
        for child, r in zip(children, results):
            if has_final_model(conn, child):
                continue
            rows = [{"subset": "final", "name": k, "value": v} for k, v in (
                ("n_train", len(r.train_idx)), ("n_val", len(r.val_idx)), ("best_epoch", r.best_epoch),
                ("decision_threshold", r.threshold), ("seconds_per_epoch", r.seconds_per_epoch)) if v is not None]
            rows += [{"subset": "final", "name": f"{part}_loss", "step": h.epoch, "value": getattr(h, f"{part}_loss")}
                     for h in r.history for part in ("train", "val")]
            write_metrics(conn, child, rows)
            conn.exec_driver_sql("INSERT INTO artifacts (kind, path, run_id, fold, description, sha256) VALUES "
                                 "('mil-checkpoint', ?, ?, NULL, ?, ?)",
                                 (ckpt_rel, child, f"{r.model_spec['name']} weights, final joint model", ckpt_sha))
            record_progress(conn, child, done=n_folds + 1)
        record_progress(conn, parent, done=n_folds + 1)


def _remap(r, to_gene: dict[int, int]):
    """A gene's FoldResult with bag positions in the panel turned into the gene's own."""
    def idx(a):
        return np.array([to_gene[int(i)] for i in a], dtype=np.int64)

    return replace(r, train_idx=idx(r.train_idx), val_idx=idx(r.val_idx), test_idx=idx(r.test_idx),
                   val=replace(r.val, index=idx(r.val.index)), test=replace(r.test, index=idx(r.test.index)),
                   test_attention={to_gene[i]: a for i, a in r.test_attention.items()})


def save_joint_checkpoint(store: Store, parent: int, fold: int | str, panel: Panel, results) -> tuple[str, str]:
    """The fold's one model for all genes, written (atomically) before its commit: the keys
    of train.py's single-task checkpoint, with `outputs` (child tasks, in output order) and
    per-output lists for decision_threshold, target_scale (regression; else None) and
    output_classes. (path, sha256)."""
    import os

    import torch

    from histstore.hashing import sha256_file
    from histstore.mil.standardize import CHECKPOINT_KEY

    r0 = results[0]
    classes = [p.classes for p in panel.preps]
    name = fold if isinstance(fold, str) else f"fold{int(fold)}"  # "final": the --final model
    ckpt_rel = f"checkpoints/runs/{parent}/{name}.pt"
    path = store.resolve(ckpt_rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save({"model_spec": r0.model_spec, "state_dict": r0.model_state,
                "classes": classes[0] if all(c == classes[0] for c in classes) else None,
                "output_classes": classes,
                # regression: one (mean, sd) per output; classification: None, as single-task
                "target_scale": [list(r.target_scale) for r in results] if r0.target_scale else None,
                "embedding_set": panel.preps[0].info.name,
                "decision_threshold": [r.threshold for r in results],
                "outputs": panel.tasks,
                CHECKPOINT_KEY: r0.feature_stats.to_checkpoint() if r0.feature_stats else None}, tmp)
    os.replace(tmp, path)
    return ckpt_rel, sha256_file(path)
