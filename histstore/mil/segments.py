"""Per-bag reductions over a batch of bags stored as one concatenated tile tensor.

A batch of B bags is `x: [T, ...]` (all their tiles, T = sum N_b) plus `seg: [T]` (long, the
bag of each tile, in [0, B)). Reducing with `index_add` / `scatter_reduce` costs the same as
one bag of T tiles and wastes nothing on padding, whereas padding bags of 2,000-10,000 tiles
to the longest one can double the work. `seg=None` means a single bag (B = 1) and takes the
plain dense path (softmax over dim 0, sum over dim 0), which is also what one-bag-per-step
training runs.

All functions are differentiable where the result is (softmax, sum, max values).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _check(seg: Tensor | None, n: int) -> None:
    if seg is None and n != 1:
        raise ValueError(f"seg=None means one bag, got n={n}")


def gather(values: Tensor, seg: Tensor | None) -> Tensor:
    """Per-bag values [B, ...] -> per-tile [T, ...]; with seg=None the [1, ...] tensor is
    returned as is (it broadcasts against [T, ...])."""
    return values if seg is None else values[seg]


def segment_sum(x: Tensor, seg: Tensor | None, n: int) -> Tensor:
    """x [T, ...] -> [B, ...]: sum over each bag's tiles."""
    _check(seg, n)
    if seg is None:
        return x.sum(0, keepdim=True)
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # index_add would accumulate thousands of tiles in half precision
    return x.new_zeros((n,) + x.shape[1:]).index_add(0, seg, x)


def segment_count(seg: Tensor | None, n: int, t: int, device=None) -> Tensor:
    """Number of tiles in each bag [B] (long)."""
    _check(seg, n)
    if seg is None:
        return torch.full((1,), t, dtype=torch.long, device=device)
    return torch.bincount(seg, minlength=n)


def segment_mean(x: Tensor, seg: Tensor | None, n: int) -> Tensor:
    """x [T, ...] -> [B, ...]: mean over each bag's tiles."""
    if seg is None:
        _check(seg, n)
        return x.mean(0, keepdim=True)
    count = segment_count(seg, n, x.shape[0]).to(x.dtype)
    return segment_sum(x, seg, n) / count.view((n,) + (1,) * (x.ndim - 1))


def segment_max(x: Tensor, seg: Tensor | None, n: int) -> Tensor:
    """x [T, ...] -> [B, ...]: max over each bag's tiles (gradient flows to the maxima)."""
    _check(seg, n)
    if seg is None:
        return x.amax(0, keepdim=True)
    index = seg.view((-1,) + (1,) * (x.ndim - 1)).expand_as(x)
    out = x.new_full((n,) + x.shape[1:], float("-inf"))
    return out.scatter_reduce(0, index, x, "amax", include_self=True)


def segment_softmax(a: Tensor, seg: Tensor | None, n: int) -> Tensor:
    """a [T] or [T, K] -> softmax over each bag's tiles, same shape (each column of each bag
    sums to 1)."""
    _check(seg, n)
    if seg is None:
        return torch.softmax(a.float(), dim=0)
    a = a.float()  # under bf16 autocast too: exp and the sums need float32
    # subtracting the per-bag max is for stability only: it needs no gradient
    m = segment_max(a.detach(), seg, n)
    e = torch.exp(a - m[seg])
    return e / segment_sum(e, seg, n)[seg]


def segment_argmax(x: Tensor, seg: Tensor | None, n: int) -> Tensor:
    """x [T, K] -> [B, K] long: index (into T) of each bag's maximum per column; the first
    such tile on ties, as torch.argmax does."""
    _check(seg, n)
    if seg is None:
        return x.argmax(0, keepdim=True)
    x = x.detach()
    t = x.shape[0]
    is_max = x == segment_max(x, seg, n)[seg]
    pos = torch.arange(t, device=x.device).view(-1, *([1] * (x.ndim - 1))).expand_as(x)
    pos = torch.where(is_max, pos, torch.full_like(pos, t))
    index = seg.view((-1,) + (1,) * (x.ndim - 1)).expand_as(x)
    out = torch.full((n,) + x.shape[1:], t, dtype=torch.long, device=x.device)
    return out.scatter_reduce(0, index, pos, "amin", include_self=True)


def segment_topk(score: Tensor, seg: Tensor | None, n: int, k: int) -> tuple[Tensor, Tensor]:
    """Top-k tiles of each bag by descending score (ties: lower tile index first).

    score [T] -> (index [B, k] long into T, valid [B, k] bool). A bag with N < k tiles fills
    its first N slots; the rest are valid=False with index 0 (a safe dummy to gather).
    """
    _check(seg, n)
    score = score.detach()
    t = score.shape[0]
    order = torch.argsort(score, descending=True, stable=True)
    if seg is None:
        index = order[:k]
        valid = torch.ones(index.shape[0], dtype=torch.bool, device=score.device)
        pad = k - index.shape[0]
        if pad:
            index = torch.cat([index, index.new_zeros(pad)])
            valid = torch.cat([valid, valid.new_zeros(pad)])
        return index[None], valid[None]
    # group by bag, keeping the score order inside each bag (stable sort)
    order = order[torch.argsort(seg[order], stable=True)]
    bag = seg[order]
    count = torch.bincount(seg, minlength=n)
    start = torch.cumsum(count, 0) - count
    rank = torch.arange(t, device=score.device) - start[bag]
    keep = rank < k
    index = torch.zeros((n, k), dtype=torch.long, device=score.device)
    valid = torch.zeros((n, k), dtype=torch.bool, device=score.device)
    index[bag[keep], rank[keep]] = order[keep]
    valid[bag[keep], rank[keep]] = True
    return index, valid
