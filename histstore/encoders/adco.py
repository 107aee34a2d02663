"""AdCo: adversarial contrastive pretraining of the tile encoder (Hu et al., CVPR 2021),
with HistCode's settings (arXiv 2204.11994; see docs method-reference).

Query encoder f_q = backbone + projection MLP (L2-normalised q); key encoder f_k = EMA copy of
f_q (m = 0.999, no gradient); adversarial bank W of K negatives. One training step:

1. q = f_q(x1) [N, 128], k = f_k(x2) [N, 128] (and the swapped pair if symmetric);
2. encoder loss = CE over [q.k_j (all in-batch keys), q.Wn] / t, t = 0.12, target own key;
   SGD step on f_q only;
3. EMA update of f_k;
4. bank ascent step at t_mem = 0.02 reusing this step's (detached) q and q.k similarities.

Before training, `init_bank_step` is called on batches until the bank is full of keys.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from histstore.devices import autocast
from histstore.encoders.backbones import build_backbone
from histstore.encoders.bank import AdversarialBank
from histstore.encoders.contrastive import check_encoder_settings, optimizer_step
from histstore.encoders.heads import ProjectedEncoder, ProjectionHead
from histstore.encoders.losses import adco_loss, contrastive_accuracy
from histstore.encoders.momentum import copy_and_freeze, update_momentum


@dataclass(frozen=True)
class AdCoConfig:
    """Defaults are HistCode's (authors' code) except bank_size, which HistCode sets to about
    a fifth of all tiles (318,193 there); AdCo on ImageNet used 65,536."""

    arch: str = "resnet50-layer3"
    proj_hidden: int | None = None  # None: backbone dim (1024 -> 1024 -> 128 in HistCode)
    proj_dim: int = 128
    key_momentum: float = 0.999
    t: float = 0.12
    t_mem: float = 0.02
    bank_size: int = 65536
    lr_mem: float = 0.3
    mem_momentum: float = 0.9
    mem_wd: float = 1e-4
    symmetric: bool = False

    def __post_init__(self):
        check_encoder_settings(self.arch, self.proj_hidden, self.proj_dim)
        if not 0 <= self.key_momentum <= 1:
            raise ValueError(f"key_momentum must be in [0, 1], got {self.key_momentum}")
        if not (self.t > 0 and self.t_mem > 0):
            raise ValueError(f"temperatures must be > 0, got t={self.t}, t_mem={self.t_mem}")
        if self.bank_size <= 0:
            raise ValueError(f"bank_size must be > 0, got {self.bank_size}")
        if self.lr_mem < 0 or self.mem_wd < 0 or not 0 <= self.mem_momentum < 1:
            raise ValueError("bank lr / weight decay must be >= 0 and momentum in [0, 1)")


class AdCo(nn.Module):
    """AdCo model. weights_path: optional local torchvision weights to initialise the backbone
    (HistCode starts from ImageNet weights); without it the backbone starts at random init."""

    method = "adco"

    def __init__(self, config: AdCoConfig = AdCoConfig(), weights_path: str | None = None):
        super().__init__()
        self.config = config
        backbone, dim = build_backbone(config.arch, weights_path, allow_random=weights_path is None)
        self.feature_dim = dim
        head = ProjectionHead(dim, config.proj_hidden or dim, config.proj_dim)
        self.encoder_q = ProjectedEncoder(backbone.train(), head)
        self.encoder_k = copy_and_freeze(self.encoder_q)
        self.bank = AdversarialBank(
            config.proj_dim, config.bank_size, config.t_mem, config.lr_mem,
            config.mem_momentum, config.mem_wd,
        )

    @property
    def backbone(self) -> nn.Module:
        return self.encoder_q.backbone

    def encoder_parameters(self):
        """Parameters the SGD optimiser updates (the query encoder only)."""
        return self.encoder_q.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> q [B, proj_dim], unit rows."""
        return self.encoder_q(x)

    @torch.no_grad()
    def init_bank_step(self, x: torch.Tensor, amp_dtype: torch.dtype | None = None) -> int:
        """Fill the next bank columns with keys f_k(x); returns how many were filled."""
        with autocast(x.device.type, amp_dtype):
            k = self.encoder_k(x)
        return self.bank.init_from_keys(k.float())

    def training_step(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scaler=None,
        amp_dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """One AdCo step on two views [N, 3, H, W]. Returns detached 0-dim tensors:
        loss, contrastive_acc, bank_loss (CE at t_mem before the ascent), bank_grad_norm,
        pos_sim (mean q.k own), bank_sim_max (mean over rows of max q.Wn)."""
        cfg = self.config
        n = x1.shape[0]
        with autocast(x1.device.type, amp_dtype):
            q1 = self.encoder_q(x1)
            q2 = self.encoder_q(x2) if cfg.symmetric else None
            with torch.no_grad():
                k2 = self.encoder_k(x2)
                k1 = self.encoder_k(x1) if cfg.symmetric else None
        Wn = self.bank.negatives()
        loss, logits = adco_loss(q1, k2, Wn, cfg.t)
        if cfg.symmetric:
            loss2, logits2 = adco_loss(q2, k1, Wn, cfg.t)
            loss = 0.5 * (loss + loss2)
        optimizer_step(loss, optimizer, scaler)
        update_momentum(self.encoder_q, self.encoder_k, cfg.key_momentum)

        # bank ascent, reusing this step's queries (before the encoder update)
        with torch.no_grad():
            if cfg.symmetric:
                q = torch.cat([q1, q2]).detach()
                key_sims = torch.cat([q1 @ k2.T, q2 @ k1.T]).detach()
                targets = torch.arange(n, device=q.device).repeat(2)
                acc = 0.5 * (contrastive_accuracy(logits) + contrastive_accuracy(logits2))
            else:
                q, key_sims, targets = q1.detach(), (q1 @ k2.T).detach(), None
                acc = contrastive_accuracy(logits)
            bank_out = self.bank.step(q, key_sims, targets)
            pos = logits.diagonal()[:n] * cfg.t
            bank_max = logits[:, n:].max(dim=1).values.mean() * cfg.t
        return {
            "loss": loss.detach(),
            "contrastive_acc": acc,
            **bank_out,
            "pos_sim": pos.mean(),
            "bank_sim_max": bank_max,
        }
