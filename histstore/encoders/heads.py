"""Projection head and the query encoder (backbone + head).

HistCode (arXiv 2204.11994, authors' code), as MoCo-v2 / AdCo: a two-layer MLP
dim -> hidden -> ReLU -> out (1024 -> 1024 -> 128 on ResNet-50-layer3), output L2-normalised.
The head is used only for pretraining and dropped afterwards.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """[B, in_dim] -> L2-normalised [B, out_dim] (normalised in fp32, also under autocast;
    fp64 stays fp64)."""

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128):
        super().__init__()
        hidden_dim = in_dim if hidden_dim is None else hidden_dim
        if min(in_dim, hidden_dim, out_dim) <= 0:
            raise ValueError(f"head dims must be > 0, got {in_dim}, {hidden_dim}, {out_dim}")
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.net(h)
        return F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)


class ProjectedEncoder(nn.Module):
    """backbone + projection head: x [B, 3, H, W] -> z [B, out_dim], |z| = 1.

    `features(x)` gives the backbone output [B, dim] (what is kept for embedding).
    """

    def __init__(self, backbone: nn.Module, head: ProjectionHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
