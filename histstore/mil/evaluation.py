"""Evaluating a MIL model on bags: batched forward passes in eval mode (`evaluate`), and
logits turned into per-bag predictions and metrics (probabilities for classification,
targets put back on their scale for regression)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from histstore.devices import autocast
from histstore.mil.bags import PackedBags, iter_batches
from histstore.mil.metrics import classification_metrics, regression_metrics
from histstore.mil.models import MILModel
from histstore.mil.results import Predictions
from histstore.mil.train_config import Task


@dataclass
class EvalOutput:
    logits: Tensor                    # [n, C] float32, on the device
    aux_logits: Tensor | None
    aux_weight: float
    attention: list[np.ndarray] | None


@torch.no_grad()
def evaluate(model: MILModel, bags: PackedBags, idx: Sequence[int], *, eval_tiles: int = 262_144,
             amp: bool = False, attention: bool = False) -> EvalOutput:
    """Forward bags idx in eval mode, one bag per forward pass, so a bag's output does not depend
    on which bags share its batch (matrix products of different heights round differently):
    results are the same whatever the memory budget or bag source. `bags`: any bag source
    (mil/bag_source.py); a streamed one reads the bags ahead. eval_tiles is kept for callers
    (evaluation used to batch bags up to that many tiles) and no longer changes anything."""
    was_training = model.training
    model.eval()
    idx = np.asarray(idx, dtype=np.int64)
    logits, aux, att = [], [], []
    aux_weight = 0.0
    chunks = [idx[j:j + 1] for j in range(len(idx))]
    for part, (x, seg) in zip(chunks, iter_batches(bags, chunks)):
        with autocast(bags.device.type, autocast_dtype(bags.device, amp)):
            out = model.forward_segments(x.float() if not amp else x, seg, len(part))
        logits.append(out.logits.float())
        aux_weight = out.aux_weight
        if out.aux_logits is not None:
            aux.append(out.aux_logits.float())
        if attention and out.attention is not None:
            a = out.attention.float().cpu().numpy()
            bounds = np.cumsum(bags.lengths[part])[:-1]
            att.extend(np.split(a, bounds))
    model.train(was_training)
    dim = model.config.n_outputs
    return EvalOutput(
        torch.cat(logits) if logits else torch.zeros((0, dim), device=bags.device),
        torch.cat(aux) if aux else None, aux_weight, att if attention else None)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """TrainConfig.amp: bf16 autocast on CUDA; full precision elsewhere."""
    return torch.bfloat16 if amp and device.type == "cuda" else None


def _probs_and_values(logits: Tensor, task: Task, scale) -> np.ndarray:
    z = logits.float().cpu()
    if task == "regression":
        mu, sd = scale
        return (z[:, 0] * sd + mu).numpy().astype(np.float64)
    return torch.softmax(z, dim=1).numpy().astype(np.float64)


def logits_to_predictions(logits: Tensor, idx: np.ndarray, target: np.ndarray, task: Task,
                 scale, threshold: float | None = None) -> Predictions:
    """threshold (binary): predict positive at probability >= threshold, else argmax."""
    out = _probs_and_values(logits, task, scale)
    if task == "regression":
        return Predictions(idx, target.astype(np.float64), out, out)
    pred = out.argmax(1) if len(out) else np.zeros(0, dtype=np.int64)
    if threshold is not None and out.shape[1] == 2:
        pred = (out[:, 1] >= threshold).astype(np.int64)
    score = out[:, 1] if out.shape[1] == 2 else out.max(1, initial=0.0)
    return Predictions(idx, target.astype(np.int64), score, pred, out)


def logits_to_metrics(logits: Tensor, target: np.ndarray, task: Task, scale, n_out: int,
                      threshold: float | None = None):
    out = _probs_and_values(logits, task, scale)
    if task == "regression":
        return regression_metrics(target, out), out
    return classification_metrics(target.astype(np.int64), out, n_out, threshold=threshold), out
