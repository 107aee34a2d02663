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
  `GlobalBatchNorm2d` all-reduces sums across ranks, with gradients (SyncBatchNorm's
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

    `all_reduce_sum`: a differentiable sum over ranks (see `distributed.DataParallel`); None
    (one process) makes this a plain BatchNorm2d.
    """

    def __init__(self, num_features: int, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None, **kw):
        super().__init__(num_features, **kw)
        self.all_reduce_sum = all_reduce_sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.all_reduce_sum is None:
            return super().forward(x)
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        stats = self.all_reduce_sum(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)  # biased, as BN normalises
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


def _replace_bn(module: nn.Module, make: Callable[[nn.BatchNorm2d], nn.BatchNorm2d]) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            new = make(child)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            new.to(device=child.weight.device if child.weight is not None else None)
            setattr(module, name, new)
        else:
            _replace_bn(child, make)
    return module


def _bn_kwargs(bn: nn.BatchNorm2d) -> dict:
    return dict(eps=bn.eps, momentum=bn.momentum, affine=bn.affine, track_running_stats=bn.track_running_stats)


def use_split_bn(module: nn.Module, splits: int = 1) -> nn.Module:
    """Every BatchNorm2d of `module` -> SplitBatchNorm2d (same state); sets `splits` on all."""
    _replace_bn(module, lambda bn: bn if isinstance(bn, SplitBatchNorm2d)
                else SplitBatchNorm2d(bn.num_features, **_bn_kwargs(bn)))
    set_bn_splits(module, splits)
    return module


def set_bn_splits(module: nn.Module, splits: int) -> None:
    if splits < 1:
        raise ValueError(f"BN splits must be >= 1, got {splits}")
    for m in module.modules():
        if isinstance(m, SplitBatchNorm2d):
            m.splits = int(splits)


def use_global_bn(module: nn.Module, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None) -> nn.Module:
    """Every BatchNorm2d of `module` -> GlobalBatchNorm2d over `all_reduce_sum` (same state)."""
    def make(bn):
        new = bn if isinstance(bn, GlobalBatchNorm2d) else GlobalBatchNorm2d(bn.num_features, **_bn_kwargs(bn))
        return new

    _replace_bn(module, make)
    for m in module.modules():
        if isinstance(m, GlobalBatchNorm2d):
            m.all_reduce_sum = all_reduce_sum
    return module


def bn_buffers(module: nn.Module) -> list[torch.Tensor]:
    """The running statistics (float buffers) of every BatchNorm of `module`."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            out += [m.running_mean, m.running_var]
    return out
