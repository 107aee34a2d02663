"""One multi-output MIL model for a panel of targets (`train --joint`): the masked loss and the
training of one fold, split back into one `FoldResult` per output.

The model (`models.MULTI_OUTPUT`, e.g. gated-attention-multi) has a shared tile embedding and
one attention branch and head per output. Targets are a matrix Y [n_bags, K]: a binary class
index (0/1) per output for multi-label classification, or a value per output for multi-output
regression; NaN where a bag has no target for that output (its case has no fold change for
that gene, or the slide is not one of that gene's slides). Such entries are masked out of the
loss: they contribute exactly zero (and zero gradient), so each output learns only from the
bags that carry its target.

Loss of a step of B bags: sum over observed (bag, output) of l_bk / (B * K), with l the binary
cross-entropy on the output's log-odds (classification) or the squared error of z-scored
targets (regression, each output scaled by its own training targets). Class weights
(`balanced`) are per output.

Selection rule (one model, K outputs): the epoch with the lowest MEAN VALIDATION LOSS OVER
THE OUTPUTS (each output's masked mean loss on its validation bags; outputs without
validation targets left out), `select_on="auc"`: the highest mean validation AUC over the
outputs where it is defined (ties: the loss); "last": the last epoch. Early stopping watches
the same key. Decision thresholds are chosen per output (mil/thresholds.py) on that output's
validation (or training) bags.

Evaluation, predictions and metrics per output reuse mil/evaluation.py: output k's log-odds z
becomes the two-class logits [0, z], whose softmax is [1 - sigmoid(z), sigmoid(z)].
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
from histstore.mil.bags import iter_batches
from histstore.mil.evaluation import autocast_dtype, evaluate, logits_to_metrics, logits_to_predictions
from histstore.mil.metrics import classification_metrics
from histstore.mil.models import MILModel, build_model
from histstore.mil.results import EpochRecord, FoldResult
from histstore.mil.standardize import StandardizedBags, fit_feature_stats
from histstore.mil.thresholds import choose_threshold
from histstore.mil.train_config import TrainConfig


def masked_losses(logits: Tensor, y: Tensor, mask: Tensor, task: str,
                  weight: Tensor | None = None) -> Tensor:
    """Per (bag, output) loss [B, K], zero where mask is False (whatever y holds there, NaN
    included: the target is replaced before the loss, so no NaN reaches the gradient).

    logits, y [B, K]; mask [B, K] bool; weight [K, 2] per-output class weights or None."""
    y0 = torch.where(mask, y, torch.zeros_like(y))
    z = logits.float()
    if task == "regression":
        loss = (z - y0) ** 2
    else:
        loss = F.binary_cross_entropy_with_logits(z, y0, reduction="none")
        if weight is not None:
            loss = loss * weight.gather(1, y0.long().t()).t()
    return torch.where(mask, loss, torch.zeros_like(loss))


def per_output_mean(loss: Tensor, mask: Tensor) -> np.ndarray:
    """[K] masked mean loss of each output (NaN where an output has no observed bag)."""
    n = mask.sum(0).float()
    out = loss.sum(0) / n.clamp(min=1)
    return torch.where(n > 0, out, torch.full_like(out, math.nan)).cpu().numpy().astype(np.float64)


def train_joint_fold(
    bags,
    targets: np.ndarray,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    test_idx: Sequence[int],
    config: TrainConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress_cb: Callable[[EpochRecord], None] | None = None,
    fold: int | None = None,
    allow_no_test: bool = False,
) -> list[FoldResult]:
    """Train one multi-output model on one fold; one FoldResult per output (column of
    `targets`), whose val/test predictions and test attention cover only the bags that have
    that output's target. Bag positions in the results are positions in `bags`.

    bags: a bag source (mil/bag_source.py); targets [n, K] float with NaN for missing;
    config.model is the multi-output model's name; config.task classification (binary per
    output) or regression. Deterministic on the CPU for a given seed. allow_no_test: a model
    fit on every bag (a run's final model) has no test bags."""
    t_start = time.perf_counter()
    dev = resolve_device(device)
    y_all = np.asarray(targets, dtype=np.float64)
    n = len(bags)
    if y_all.ndim != 2 or y_all.shape[0] != n or y_all.shape[1] < 1:
        raise InvalidInput(f"targets must be [n_bags={n}, n_outputs], got {y_all.shape}")
    k_out = y_all.shape[1]
    task = config.task
    observed = ~np.isnan(y_all)
    if task == "classification" and not np.isin(y_all[observed], (0.0, 1.0)).all():
        raise InvalidInput("joint classification targets must be 0/1 per output (multi-label)")
    tr, va, te = (np.sort(np.asarray(i, dtype=np.int64)) for i in (train_idx, val_idx, test_idx))
    if len(tr) == 0 or (len(te) == 0 and not allow_no_test):
        raise InvalidInput("a fold needs at least one train and one test bag")
    feature_stats = None
    packed = bags
    if config.standardize_features:
        feature_stats = fit_feature_stats(bags, tr)
        packed = StandardizedBags(bags, feature_stats)

    notes: list[str] = []
    y_seen = y_all.copy()
    y_seen[te] = np.nan  # test targets never reach the loop
    seen = ~np.isnan(y_seen)
    scales: list[tuple[float, float] | None] = [None] * k_out
    class_w = None
    y_fit = y_seen.copy()
    if task == "regression":
        for k in range(k_out):
            v = y_seen[tr, k][~np.isnan(y_seen[tr, k])]
            mu, sd = (float(v.mean()), float(v.std()) or 1.0) if config.standardize_targets and len(v) else (0.0, 1.0)
            scales[k] = (mu, sd)
            y_fit[:, k] = (y_seen[:, k] - mu) / sd
    elif config.class_weight == "balanced":
        w = np.ones((k_out, 2))
        for k in range(k_out):
            v = y_seen[tr, k][~np.isnan(y_seen[tr, k])].astype(np.int64)
            counts = np.bincount(v, minlength=2)
            w[k] = len(v) / (2 * np.maximum(counts, 1)) if len(v) else 1.0
        class_w = torch.as_tensor(w, dtype=torch.float32, device=dev)
    for k in range(k_out):
        if not seen[tr, k].any():
            notes.append(f"output {k}: no training bag has a target")
    y_dev = torch.as_tensor(np.nan_to_num(y_fit), dtype=torch.float32, device=dev)
    m_dev = torch.as_tensor(seen, device=dev)

    select_on = config.select_on
    has_val = len(va) > 0 and seen[va].any()
    if not has_val:
        notes.append("no validation targets: the last epoch is kept")

    fork_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = build_model(config.model, packed.dim, k_out, **config.model_cfg).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                               **({"fused": True} if dev.type == "cuda" else {}))
        rng = np.random.default_rng(seed)
        histories: list[list[EpochRecord]] = [[] for _ in range(k_out)]
        best_key, best_epoch, best_state = None, 0, None
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            train_loss = _train_epoch(model, opt, packed, y_dev, m_dev, rng.permutation(tr), config, class_w)
            t1 = time.perf_counter()
            val_loss = np.full(k_out, math.nan)
            val_metrics: list[dict] = [{} for _ in range(k_out)]
            if has_val:
                ev = evaluate(model, packed, va, amp=config.amp)
                va_t = torch.as_tensor(va, device=dev)
                val_loss = per_output_mean(masked_losses(ev.logits, y_dev[va_t], m_dev[va_t], task, class_w),
                                           m_dev[va_t])
                if select_on == "auc":
                    val_metrics = [_val_auc(ev.logits[:, k], y_seen[va, k]) for k in range(k_out)]
            key = _selection_key(select_on if has_val else "last", val_loss, val_metrics, epoch)
            improved = best_key is None or key < best_key
            if improved:
                best_key, best_epoch = key, epoch
                best_state = {name: v.detach().clone() for name, v in model.state_dict().items()}
            for k in range(k_out):
                histories[k].append(EpochRecord(fold, epoch, float(train_loss[k]), float(val_loss[k]),
                                                val_metrics[k], t1 - t0, time.perf_counter() - t1, improved))
            if progress_cb is not None:
                mean_val = float(np.nanmean(val_loss)) if np.isfinite(val_loss).any() else math.nan
                progress_cb(EpochRecord(fold, epoch, float(np.nanmean(train_loss)), mean_val, {},
                                        t1 - t0, time.perf_counter() - t1, improved))
            if (config.patience is not None and has_val and epoch >= config.min_epochs
                    and epoch - best_epoch >= config.patience):
                break
        model.load_state_dict(best_state)

    ev_val = evaluate(model, packed, va, amp=config.amp)
    ev_tr = None
    ev_test = evaluate(model, packed, te, amp=config.amp, attention=True)
    results = []
    spec = model.spec()
    state = {name: v.detach().cpu() for name, v in model.state_dict().items()}
    for k in range(k_out):
        va_k, te_k = va[seen[va, k]], te[observed[te, k]]
        tr_k = tr[seen[tr, k]]
        z_val, z_test = ev_val.logits[seen[va, k], k], ev_test.logits[observed[te, k], k]
        threshold, cut = None, None
        if task == "classification":
            rule = config.decision_threshold
            threshold = 0.5
            if rule != "0.5":
                if rule == "train":
                    ev_tr = ev_tr or evaluate(model, packed, tr, amp=config.amp)
                    idx, z = tr_k, ev_tr.logits[seen[tr, k], k]
                else:
                    idx, z = va_k, z_val
                y_idx = y_seen[idx, k]
                if len(np.unique(y_idx)) < 2:
                    notes.append(f"output {k}: the {rule} bags hold {'one class' if len(idx) else 'nothing'}: "
                                 "decision threshold 0.5")
                else:
                    threshold = choose_threshold(y_idx, torch.sigmoid(z.float()).cpu().numpy())
                cut = threshold
            z_val, z_test = _two_class(z_val), _two_class(z_test)
            n_out = 2
        else:
            z_val, z_test = z_val.unsqueeze(1), z_test.unsqueeze(1)
            n_out = 1
        tv = y_all[va_k, k].astype(np.int64) if task == "classification" else y_all[va_k, k]
        tt = y_all[te_k, k].astype(np.int64) if task == "classification" else y_all[te_k, k]
        m_val, _ = logits_to_metrics(z_val, tv, task, scales[k], n_out, cut)
        m_test, _ = logits_to_metrics(z_test, tt, task, scales[k], n_out, cut)
        att = {int(i): a[:, k].astype(np.float32)
               for i, a, has in zip(te, ev_test.attention, observed[te, k]) if has}
        results.append(FoldResult(
            fold=fold, seed=seed, config=config, n_outputs=n_out, train_idx=tr_k, val_idx=va_k, test_idx=te_k,
            best_epoch=best_epoch, history=histories[k],
            val=logits_to_predictions(z_val, va_k, tv, task, scales[k], cut),
            test=logits_to_predictions(z_test, te_k, tt, task, scales[k], cut),
            test_attention=att, metrics={"val": m_val, "test": m_test}, model_spec=spec, model_state=state,
            target_scale=scales[k], attention_kind=model.attention_kind,
            seconds=time.perf_counter() - t_start, notes=list(notes), feature_stats=feature_stats,
            threshold=threshold))
    return results


def _two_class(z: Tensor) -> Tensor:
    """A binary log-odds [n] as two-class logits [n, 2] = [0, z]."""
    z = z.float()
    return torch.stack([torch.zeros_like(z), z], dim=1)


def _val_auc(z: Tensor, y: np.ndarray) -> dict[str, float]:
    has = ~np.isnan(y)
    if len(np.unique(y[has])) < 2:
        return {"auc": math.nan}
    p = torch.sigmoid(z.float()).cpu().numpy()[has]
    return {"auc": classification_metrics(y[has].astype(np.int64), p, 2).values["auc"]}


def _selection_key(select_on: str, val_loss: np.ndarray, val_metrics: list[dict], epoch: int) -> tuple:
    """Smaller is better (the module docstring's rule); ties keep the earlier epoch."""
    if select_on == "last":
        return (-epoch,)
    loss = float(np.nanmean(val_loss)) if np.isfinite(val_loss).any() else math.inf
    if select_on == "auc":
        aucs = [m.get("auc", math.nan) for m in val_metrics]
        aucs = [a for a in aucs if not math.isnan(a)]
        return (-float(np.mean(aucs)) if aucs else math.inf, loss)
    return (loss,)


def _train_epoch(model: MILModel, opt: torch.optim.Optimizer, packed, y_dev: Tensor, m_dev: Tensor,
                 order: np.ndarray, config: TrainConfig, class_w: Tensor | None) -> np.ndarray:
    """One pass over `order` in steps of bags_per_step bags (one concatenated forward each);
    returns each output's mean masked training loss [K]."""
    model.train()
    dev = packed.device
    k_out = y_dev.shape[1]
    loss_sum = torch.zeros(k_out, device=dev)
    n_sum = torch.zeros(k_out, device=dev)
    b = config.bags_per_step
    steps = [order[s:s + b] for s in range(0, len(order), b)]
    for idx, (x, seg) in zip(steps, iter_batches(packed, steps)):
        opt.zero_grad(set_to_none=True)
        with autocast(dev.type, autocast_dtype(dev, config.amp)):
            out = model.forward_segments(x if config.amp else x.float(), seg, len(idx))
        it = torch.as_tensor(idx, device=dev)
        mask = m_dev[it]
        losses = masked_losses(out.logits, y_dev[it], mask, config.task, class_w)
        (losses.sum() / (len(idx) * k_out)).backward()
        opt.step()
        loss_sum += losses.detach().sum(0)
        n_sum += mask.sum(0)
    out = loss_sum / n_sum.clamp(min=1)
    return torch.where(n_sum > 0, out, torch.full_like(out, math.nan)).cpu().numpy()
