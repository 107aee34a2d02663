"""Encoders for tests that must not pass by accident of an untrained network."""
from __future__ import annotations

import torch

from histstore.encoders.backbones import build_backbone


def pretrained_like(arch: str, seed: int) -> torch.nn.Module:
    """A random-init backbone whose BatchNorm statistics and affine parameters are far from
    the identity, as after pretraining (a fresh network's BatchNorm is nearly a no-op)."""
    torch.manual_seed(seed)
    model, _ = build_backbone(arch, allow_random=True)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.3, 3.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.normal_(0, 0.2)
    return model
