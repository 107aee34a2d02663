"""Momentum (EMA) helpers for the key encoder (MoCo, He et al. 2020; AdCo, Hu et al. 2021).

k <- m * k + (1 - m) * q for every parameter; m = 0.999 in HistCode / AdCo.
Buffers (BatchNorm running statistics) are not averaged: the key encoder runs in train mode
and keeps its own statistics, as in MoCo.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def update_momentum(model: nn.Module, ema_model: nn.Module, m: float) -> None:
    """In place: ema_param = m * ema_param + (1 - m) * param, for matching parameters."""
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m}")
    ema = [p for p in ema_model.parameters()]
    src = [p.detach() for p in model.parameters()]
    if len(ema) != len(src):
        raise ValueError("model and ema_model have different parameter lists")
    torch._foreach_lerp_(ema, src, 1.0 - m)  # ema + (1-m)(src - ema) == m ema + (1-m) src


def copy_and_freeze(model: nn.Module) -> nn.Module:
    """Deep copy of `model` with requires_grad=False on every parameter (the key encoder)."""
    frozen = copy.deepcopy(model)
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen
