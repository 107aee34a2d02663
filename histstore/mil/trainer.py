"""Train one MIL model on one fold: the training loop, model selection and the loss.

HistCode trains only the pooling and the linear layer on frozen embeddings: Adam, lr 1e-4,
weight decay 1e-5, one slide per step. Model selection and early stopping use the
validation subset only; test bags are evaluated once, with the selected weights (the
authors' code stopped on the test fold). Test targets are blanked before the loop starts, so
nothing in training can read them.

Speed: bags come from a bag source (mil/bag_source.py) in their stored dtype, cast to float32
per batch: resident (`PackedBags`, all bags on the device as one tensor: no per-step
host->device copy, one-bag steps use views) or streamed from disk with read-ahead; the loop
asks for each epoch's steps at once (`batches`) so a streamed source reads ahead. A step of
several bags (`bags_per_step > 1`) has loss = mean of per-bag losses, i.e. the mean of the
bags' one-bag gradients, computed either by one concatenated forward (`forward_segments`, the
GPU default) or by accumulating one bag at a time (the CPU default: big concatenated
intermediates fall out of cache; benchmarks/bench_mil.py times both modes). The loss is
accumulated on the device and read once per epoch; evaluation forwards one bag at a time
(batch-invariant results, mil/evaluation.py). `bags_per_step=1` is the paper's setting;
larger values take fewer optimiser steps per epoch (a different schedule), for throughput on a
GPU.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from histstore.devices import autocast, resolve_device
from histstore.errors import InvalidInput
from histstore.mil.bags import PackedBags, is_bag_source, iter_batches, pack_bags
from histstore.mil.evaluation import autocast_dtype, evaluate, logits_to_metrics, logits_to_predictions
from histstore.mil.models import MILModel, MILOutput, build_model
from histstore.mil.results import EpochRecord, FoldResult
from histstore.mil.standardize import StandardizedBags, fit_feature_stats
from histstore.mil.thresholds import choose_threshold
from histstore.mil.train_config import Task, TrainConfig


def bag_losses(logits: Tensor, aux_logits: Tensor | None, aux_weight: float, y: Tensor,
               task: Task, class_weight: Tensor | None = None) -> Tensor:
    """Per-bag loss [B]: cross-entropy or squared error, (1 - w) main + w aux, times the
    bag's class weight. Per-bag, so a step of B bags (their mean) has the gradient of the
    mean of B one-bag steps; class weights act per bag (a weighted CE with reduction='mean'
    would cancel them in one-bag steps)."""
    def one(z: Tensor) -> Tensor:
        if task == "regression":
            return (z[:, 0].float() - y) ** 2
        return F.cross_entropy(z.float(), y, reduction="none")

    loss = one(logits)
    if aux_logits is not None and aux_weight > 0:
        loss = (1.0 - aux_weight) * loss + aux_weight * one(aux_logits)
    if class_weight is not None:
        loss = loss * class_weight[y]
    return loss


def train_fold(
    bags: Sequence | PackedBags,
    targets: Sequence,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    test_idx: Sequence[int],
    config: TrainConfig = TrainConfig(),
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress_cb: Callable[[EpochRecord], None] | None = None,
    fold: int | None = None,
    allow_no_test: bool = False,
) -> FoldResult:
    """Train on train_idx, select the epoch on val_idx, predict val and test bags.

    bags: list of [N_i, D] tensors/arrays, or a bag source (`PackedBags`: pack once for many
    folds; `StreamedBags`: read from disk per step).
    targets [n]: class index (classification) or float (regression), one per bag.
    Returns per-bag predictions, test-bag attention, per-epoch history, the selected epoch
    and its weights. Deterministic on the CPU for a given seed. allow_no_test: a model fit on
    every bag (a run's final model, mil/final_model.py) has no test bags.
    """
    t_start = time.perf_counter()
    dev = resolve_device(device)
    packed = bags if is_bag_source(bags) else pack_bags(bags, dev, config.feature_dtype)
    if packed.device != dev:
        raise InvalidInput(f"bags are packed on {packed.device} but device is {dev}")
    n = len(packed)
    y_all = check_targets(targets, n, config.task)
    tr, va, te = (_as_idx(i, n, name) for i, name in
                  ((train_idx, "train"), (val_idx, "val"), (test_idx, "test")))
    if len(tr) == 0 or (len(te) == 0 and not allow_no_test):
        raise InvalidInput("a fold needs at least one train and one test bag")
    if (len(np.intersect1d(tr, va)) or len(np.intersect1d(tr, te))
            or len(np.intersect1d(va, te))):
        raise InvalidInput("train, val and test bags overlap")
    feature_stats = None
    if config.standardize_features:  # training-fold statistics, applied per batch on the device
        feature_stats = fit_feature_stats(packed, tr)
        packed = StandardizedBags(packed, feature_stats)

    notes: list[str] = []
    # targets the loop may see: test positions blanked, so selection cannot use them
    y_seen = y_all.copy()
    y_seen[te] = 0
    if config.task == "classification":
        n_out = config.n_classes or int(y_all.max()) + 1
        if n_out < 2:
            raise InvalidInput("classification needs at least two classes")
        if y_all.max() >= n_out:
            raise InvalidInput(f"target {int(y_all.max())} >= n_classes {n_out}")
        counts = np.bincount(y_seen[tr].astype(np.int64), minlength=n_out)
        if (counts == 0).any():
            notes.append(f"train bags per class: {counts.tolist()}")
        class_w = None
        if config.class_weight == "balanced":
            w = len(tr) / (n_out * np.maximum(counts, 1))
            class_w = torch.as_tensor(w, dtype=torch.float32, device=dev)
        y_dev = torch.as_tensor(y_seen.astype(np.int64), device=dev)
        scale = None
    else:
        n_out, class_w = 1, None
        mu, sd = 0.0, 1.0
        if config.standardize_targets:
            mu = float(y_seen[tr].mean())
            sd = float(y_seen[tr].std()) or 1.0
        scale = (mu, sd)
        y_dev = torch.as_tensor((y_seen - mu) / sd, dtype=torch.float32, device=dev)

    select_on = config.select_on
    if len(va) == 0:
        notes.append("no validation bags: the last epoch is kept")
    elif select_on == "auc" and len(np.unique(y_seen[va])) < 2:
        notes.append("validation has one class: selecting on validation loss, not AUC")
        select_on = "loss"

    fork_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = build_model(config.model, packed.dim, n_out, **config.model_cfg).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr,
                               weight_decay=config.weight_decay,
                               **({"fused": True} if dev.type == "cuda" else {}))
        rng = np.random.default_rng(seed)
        history: list[EpochRecord] = []
        best_key, best_epoch, best_state = None, 0, None
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            train_loss = _train_epoch(model, opt, packed, y_dev, rng.permutation(tr), config,
                                      class_w)
            t1 = time.perf_counter()
            val_loss, val_metrics = math.nan, {}
            if len(va):
                ev = evaluate(model, packed, va, eval_tiles=config.eval_tiles, amp=config.amp)
                val_loss = float(bag_losses(ev.logits, ev.aux_logits, ev.aux_weight, y_dev[
                    torch.as_tensor(va, device=dev)], config.task, class_w).mean())
                val_metrics = logits_to_metrics(ev.logits, y_seen[va], config.task, scale, n_out)[0].values
            key = _selection_key(select_on, val_loss, val_metrics, epoch, len(va))
            improved = best_key is None or key < best_key
            if improved:
                best_key, best_epoch = key, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            rec = EpochRecord(fold, epoch, train_loss, val_loss, val_metrics, t1 - t0,
                              time.perf_counter() - t1, improved)
            history.append(rec)
            if progress_cb is not None:
                progress_cb(rec)
            if (config.patience is not None and len(va) and epoch >= config.min_epochs
                    and epoch - best_epoch >= config.patience):
                break
        model.load_state_dict(best_state)

    ev_val = evaluate(model, packed, va, eval_tiles=config.eval_tiles, amp=config.amp)
    threshold = None
    if config.task == "classification" and n_out == 2:
        threshold = _decision_threshold(config, model, packed, tr, va, y_seen, ev_val, notes)
    cut = None if config.decision_threshold == "0.5" else threshold  # "0.5": the argmax, as before
    # the only place test bags are seen: once, with the selected weights and threshold
    ev_test = evaluate(model, packed, te, eval_tiles=config.eval_tiles, amp=config.amp,
                       attention=True)
    val_pred = logits_to_predictions(ev_val.logits, va, y_all[va], config.task, scale, cut)
    test_pred = logits_to_predictions(ev_test.logits, te, y_all[te], config.task, scale, cut)
    m_val, _ = logits_to_metrics(ev_val.logits, y_all[va], config.task, scale, n_out, cut)
    m_test, _ = logits_to_metrics(ev_test.logits, y_all[te], config.task, scale, n_out, cut)
    return FoldResult(
        fold=fold, seed=seed, config=config, n_outputs=n_out,
        train_idx=tr, val_idx=va, test_idx=te, best_epoch=best_epoch, history=history,
        val=val_pred, test=test_pred,
        test_attention={int(i): a.astype(np.float32) for i, a in zip(te, ev_test.attention)},
        metrics={"val": m_val, "test": m_test},
        model_spec=model.spec(),
        model_state={k: v.detach().cpu() for k, v in model.state_dict().items()},
        target_scale=scale, attention_kind=model.attention_kind,
        seconds=time.perf_counter() - t_start, notes=notes, feature_stats=feature_stats,
        threshold=threshold)


def _decision_threshold(config: TrainConfig, model: MILModel, packed, tr: np.ndarray, va: np.ndarray,
                        y_seen: np.ndarray, ev_val, notes: list[str]) -> float:
    """The binary decision threshold by config.decision_threshold (see mil/thresholds.py),
    from validation or training bags only."""
    rule = config.decision_threshold
    if rule == "0.5":
        return 0.5
    idx = va if rule == "val" else tr
    if len(np.unique(y_seen[idx])) < 2:
        notes.append(f"the {rule} bags hold {'one class' if len(idx) else 'nothing'}: decision threshold 0.5")
        return 0.5
    ev = ev_val if rule == "val" else evaluate(model, packed, tr, eval_tiles=config.eval_tiles,
                                               amp=config.amp)
    prob = torch.softmax(ev.logits.float(), dim=1)[:, 1].cpu().numpy()
    return choose_threshold(y_seen[idx], prob)


def _train_epoch(model: MILModel, opt: torch.optim.Optimizer, packed, y_dev: Tensor,
                 order: np.ndarray, config: TrainConfig, class_w: Tensor | None) -> float:
    """One pass over `order` in steps of bags_per_step bags; mean per-bag loss."""
    model.train()
    dev = packed.device
    loss_sum = torch.zeros((), device=dev)  # read once per epoch: no per-step sync
    b = config.bags_per_step
    mode = config.batch_mode
    if mode == "auto":
        mode = "concat" if dev.type == "cuda" else "accumulate"
    # each step: parts (one concatenated forward, or one bag each) whose summed loss / n_bags
    # is the step's loss; all parts of the epoch are asked for at once so a streamed source
    # reads ahead
    steps = [order[s:s + b] for s in range(0, len(order), b)]
    parts = [(k, p) for k, idx in enumerate(steps)
             for p in ([idx] if len(idx) == 1 or mode == "concat" else [idx[j:j + 1] for j in range(len(idx))])]
    current = -1
    for (k, idx), (x, seg) in zip(parts, iter_batches(packed, (p for _, p in parts))):
        n_step = len(steps[k])
        if k != current:
            if current >= 0:
                opt.step()
            opt.zero_grad(set_to_none=True)
            current = k
        with autocast(dev.type, autocast_dtype(dev, config.amp)):
            out: MILOutput = model.forward_segments(x if config.amp else x.float(), seg, len(idx))
        losses = bag_losses(out.logits, out.aux_logits, out.aux_weight,
                            y_dev[torch.as_tensor(idx, device=dev)], config.task, class_w)
        loss = losses.sum() / n_step
        loss.backward()
        loss_sum += loss.detach() * n_step
    if current >= 0:
        opt.step()
    return float(loss_sum) / len(order)


def _selection_key(select_on: str, val_loss: float, val_metrics: dict, epoch: int,
                   n_val: int) -> tuple:
    """Smaller is better; ties keep the earlier epoch (strict improvement required)."""
    if n_val == 0 or select_on == "last":
        return (-epoch,)  # no validation, or a fixed schedule: the latest epoch wins
    loss = val_loss if not math.isnan(val_loss) else math.inf
    if select_on == "auc":
        auc = val_metrics.get("auc", math.nan)
        return (-auc if not math.isnan(auc) else math.inf, loss)
    return (loss,)


def check_targets(targets: Sequence, n: int, task: Task) -> np.ndarray:
    y = np.asarray(targets, dtype=np.float64)
    if y.shape != (n,):
        raise InvalidInput(f"{len(y)} targets for {n} bags")
    if np.isnan(y).any():
        raise InvalidInput("some targets are NaN: drop those bags first")
    if task == "classification":
        if (y < 0).any() or (y != np.round(y)).any():
            raise InvalidInput("classification targets must be class indices 0..C-1")
        return y.astype(np.int64)
    return y


def _as_idx(idx: Sequence[int], n: int, name: str) -> np.ndarray:
    a = np.asarray(idx, dtype=np.int64).reshape(-1)
    if len(a) and (a.min() < 0 or a.max() >= n):
        raise InvalidInput(f"{name} indices out of range for {n} bags")
    if len(np.unique(a)) != len(a):
        raise InvalidInput(f"{name} indices repeat a bag")
    return np.sort(a)
