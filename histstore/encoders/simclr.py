"""SimCLR (Chen et al., ICML 2020): the comparison method in HistCode (arXiv 2204.11994).

Encoder = backbone + projection MLP; loss = NT-Xent over the 2N views of a batch (in-batch
negatives only, no bank, no momentum encoder). Both views go through one forward so that
BatchNorm sees all 2N views, as SimCLR's global BN does. In data-parallel training the
embeddings of every rank are gathered (with gradient) so each view is contrasted with the
whole global batch, and BatchNorm statistics are those of the global batch
(`batchnorm.GlobalBatchNorm2d`): a rank's views could otherwise be told apart by their
rank-local statistics (the SimCLR paper's reason for global BN).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from histstore.devices import autocast
from histstore.encoders.backbones import build_backbone
from histstore.encoders.batchnorm import use_global_bn
from histstore.encoders.contrastive import check_encoder_settings, optimizer_step, wrap_data_parallel
from histstore.encoders.distributed import SINGLE, DataParallel
from histstore.encoders.heads import ProjectedEncoder, ProjectionHead
from histstore.encoders.losses import contrastive_accuracy, nt_xent, nt_xent_rows, nt_xent_targets


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
        self.dp: DataParallel = SINGLE
        self.__dict__["_forward"] = None  # the DDP wrapper, kept out of the state dict

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def encoder_parameters(self):
        return self.encoder.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def distribute(self, dp: DataParallel, device: torch.device) -> None:
        """Take part in data-parallel training (call after moving to `device`): rank 0's state
        everywhere, global-batch BN, gradients averaged over ranks by DDP."""
        if dp.world_size > 1:
            use_global_bn(self.encoder, dp.all_gather_with_grad)
        self.dp = dp
        dp.broadcast_state(self)
        self.__dict__["_forward"] = wrap_data_parallel(self.encoder, dp, device)

    def training_step(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scaler=None,
        amp_dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """One SimCLR step on this rank's two views [N, 3, H, W] -> {loss, contrastive_acc}
        (detached, this rank's rows). `generator` is unused (the signature is AdCo's)."""
        n, dp = x1.shape[0], self.dp
        fwd = self.__dict__["_forward"]
        with autocast(x1.device.type, amp_dtype):
            x = torch.cat([x1, x2])
            z = fwd(x)[0] if fwd is not None else self.encoder(x)
        if dp.world_size > 1:
            z1, z2 = dp.all_gather_with_grad(z[:n]), dp.all_gather_with_grad(z[n:])
            loss, logits, targets = nt_xent_rows(z1, z2, dp.rank * n, n, self.config.temperature)
        else:
            loss, logits = nt_xent(z[:n], z[n:], self.config.temperature)
            targets = nt_xent_targets(n, logits.device)
        optimizer_step(loss, optimizer, scaler)
        acc = contrastive_accuracy(logits.detach(), targets)
        return {"loss": loss.detach(), "contrastive_acc": acc}
