"""Batch normalisation that keeps the contrastive task honest.

With BatchNorm, a sample's output depends on the other samples normalised with it. If a query
and its positive key are normalised with the same samples, the encoder can recognise the pair
from those shared statistics instead of from the image ("BN leakage", He et al., MoCo, CVPR
2020, sec. 3.3). Two remedies, one per method:

- AdCo / MoCo (shuffle BN): BN statistics are computed over groups of the batch (one group per
  GPU in the official AdCo code); the key encoder's input is shuffled across the groups, so a
  query and its key are normalised with different samples. `SplitBatchNorm2d` makes those
  groups inside one process (as lightly's SplitBatchNorm emulates several GPUs on one): the
  batch is cut into `splits` contiguous chunks, each normalised with its own statistics.
  Contiguous chunks (not samples n mod s) so that one process with s groups computes exactly
  what s ranks with one group each compute, and so that channels-last inputs need no copy.
- SimCLR: statistics over the whole global batch (the SimCLR paper's "global BN");
  `GlobalBatchNorm2d` merges every rank's statistics, with gradients (SyncBatchNorm's
  semantics, usable on CPU/gloo where torch's SyncBatchNorm is not).

Both keep BatchNorm2d's parameters and buffers (weight, bias, running_mean, running_var,
num_batches_tracked), so state dicts load into a plain torchvision ResNet and the exported
backbone is unchanged. In eval mode both are plain BatchNorm2d. Running statistics are the
mean over groups (ranks) of what each group's BatchNorm would store; averaging them across
ranks (`average_bn_buffers`) gives what one process with all groups stores.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over `splits` contiguous chunks of the batch in training mode."""

    def __init__(self, num_features: int, splits: int = 1, **kw):
        super().__init__(num_features, **kw)
        self.splits = int(splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.splits == 1:
            return super().forward(x)
        if x.shape[0] < 2 * self.splits:
            raise ValueError(f"split batch norm: {x.shape[0]} samples cannot make {self.splits} groups of >= 2")
        factor = self._factor()
        outs, means, variances = [], [], []
        for chunk in x.tensor_split(self.splits):
            rm = self.running_mean.clone() if self.running_mean is not None else None
            rv = self.running_var.clone() if self.running_var is not None else None
            outs.append(F.batch_norm(chunk, rm, rv, self.weight, self.bias, True, factor, self.eps))
            means.append(rm)
            variances.append(rv)
        if self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.copy_(torch.stack(means).mean(0))
                self.running_var.copy_(torch.stack(variances).mean(0))
        return torch.cat(outs)

    def _factor(self) -> float:
        if self.num_batches_tracked is not None and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                return 1.0 / float(self.num_batches_tracked)
        return 0.0 if self.momentum is None else self.momentum

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, splits={self.splits}"


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole global batch.

    `all_gather`: a differentiable gather over ranks (`distributed.DataParallel.
    all_gather_with_grad`); None (one process) makes this a plain BatchNorm2d. Each rank sends
    its count, mean and sum of squared deviations, merged as Chan et al.'s parallel variance
    (what SyncBatchNorm does): no cancellation from E[x^2] - E[x]^2.
    """

    def __init__(self, num_features: int, all_gather: Callable[[torch.Tensor], torch.Tensor] | None = None, **kw):
        super().__init__(num_features, **kw)
        self.all_gather = all_gather

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.all_gather is None:
            return super().forward(x)
        c = x.shape[1]
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        n_local = x.numel() // c
        mean_local = xf.mean((0, 2, 3))
        m2_local = ((xf - mean_local.view(1, c, 1, 1)) ** 2).sum((0, 2, 3))
        count = torch.full((1,), float(n_local), device=x.device, dtype=xf.dtype)
        parts = self.all_gather(torch.cat([count, mean_local, m2_local]).unsqueeze(0))  # [world, 1 + 2c]
        counts, means, m2s = parts[:, :1], parts[:, 1:1 + c], parts[:, 1 + c:]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = ((m2s + counts * (means - mean) ** 2).sum(0) / n)  # biased, as BN normalises
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp_min(1)), alpha=m)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.bias is not None else 0.0)
        y = xf * scale.view(1, c, 1, 1) + shift.view(1, c, 1, 1)
        return y.to(x.dtype)


def _convert_bn(module: nn.Module, cls: type, **attrs) -> nn.Module:
    """Every BatchNorm2d of `module` becomes a `cls` in place: the same module object with the
    same Parameter and buffer objects (so an optimiser that holds them keeps working, and
    dtype and device stay), only its forward changes."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            if type(m) not in (nn.BatchNorm2d, cls):
                raise TypeError(f"cannot make a {type(m).__name__} a {cls.__name__}")
            m.__class__ = cls
            for k, v in attrs.items():
                setattr(m, k, v)
    return module


def use_split_bn(module: nn.Module, splits: int = 1) -> nn.Module:
    """Every BatchNorm2d of `module` -> SplitBatchNorm2d with `splits` groups (in place)."""
    if splits < 1:
        raise ValueError(f"BN splits must be >= 1, got {splits}")
    return _convert_bn(module, SplitBatchNorm2d, splits=int(splits))


def set_bn_splits(module: nn.Module, splits: int) -> None:
    if splits < 1:
        raise ValueError(f"BN splits must be >= 1, got {splits}")
    for m in module.modules():
        if isinstance(m, SplitBatchNorm2d):
            m.splits = int(splits)


def use_global_bn(module: nn.Module, all_gather: Callable[[torch.Tensor], torch.Tensor] | None) -> nn.Module:
    """Every BatchNorm2d of `module` -> GlobalBatchNorm2d over `all_gather` (in place)."""
    return _convert_bn(module, GlobalBatchNorm2d, all_gather=all_gather)


def bn_buffers(module: nn.Module) -> list[torch.Tensor]:
    """The running statistics (float buffers) of every BatchNorm of `module`."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            out += [m.running_mean, m.running_var]
    return out
