"""SimCLR (Chen et al., ICML 2020): the comparison method in HistCode (arXiv 2204.11994).

Encoder = backbone + projection MLP; loss = NT-Xent over the 2N views of a batch (in-batch
negatives only, no bank, no momentum encoder). Both views go through one forward so that
BatchNorm sees all 2N views, as SimCLR's global BN does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from histstore.devices import autocast
from histstore.encoders.backbones import build_backbone
from histstore.encoders.contrastive import check_encoder_settings, optimizer_step
from histstore.encoders.heads import ProjectedEncoder, ProjectionHead
from histstore.encoders.losses import contrastive_accuracy, nt_xent, nt_xent_targets


@dataclass(frozen=True)
class SimCLRConfig:
    arch: str = "resnet50-layer3"
    proj_hidden: int | None = None  # None: backbone dim
    proj_dim: int = 128
    temperature: float = 0.2

    def __post_init__(self):
        check_encoder_settings(self.arch, self.proj_hidden, self.proj_dim)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class SimCLR(nn.Module):
    method = "simclr"

    def __init__(self, config: SimCLRConfig = SimCLRConfig(), weights_path: str | None = None):
        super().__init__()
        self.config = config
        backbone, dim = build_backbone(config.arch, weights_path, allow_random=weights_path is None)
        self.feature_dim = dim
        self.encoder = ProjectedEncoder(backbone.train(), ProjectionHead(dim, config.proj_hidden or dim, config.proj_dim))

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def encoder_parameters(self):
        return self.encoder.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def training_step(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scaler=None,
        amp_dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """One SimCLR step on two views [N, 3, H, W] -> {loss, contrastive_acc} (detached)."""
        n = x1.shape[0]
        with autocast(x1.device.type, amp_dtype):
            z = self.encoder(torch.cat([x1, x2]))
        loss, logits = nt_xent(z[:n], z[n:], self.config.temperature)
        optimizer_step(loss, optimizer, scaler)
        acc = contrastive_accuracy(logits.detach(), nt_xent_targets(n, logits.device))
        return {"loss": loss.detach(), "contrastive_acc": acc}
