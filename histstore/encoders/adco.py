"""AdCo: adversarial contrastive pretraining of the tile encoder (Hu et al., CVPR 2021), with
HistCode's settings (arXiv 2204.11994; see docs method-reference).

Query encoder f_q = backbone + projection MLP (L2-normalised q); key encoder f_k = EMA copy of
f_q (m = 0.999, no gradient); adversarial bank W of K negatives. One training step:

1. q = f_q(x1) [N, 128]; k = f_k(x2) with shuffle BN (below); the swapped pair too if
   symmetric (the official code's `--sym`: the two directions' losses averaged);
2. encoder loss = CE over [q_n . k_n, q_n . Wn] / t, t = 0.12, target the own key: the
   paper's loss (eq. 1-2), the own key against the K adversarial negatives. The official
   code also puts the other images' keys in the row (`in_batch_negatives=True`, see losses);
   SGD step on f_q only;
3. EMA update of f_k;
4. bank ascent step at t_mem = 0.02 reusing this step's (detached) queries and key
   similarities; in data-parallel training its gradient is averaged over ranks first.

Shuffle BN (MoCo / the official AdCo code's `_batch_shuffle_ddp`): BatchNorm statistics are
computed over `bn_splits` groups of the global batch (contiguous chunks; one group per GPU in
the official code, `batchnorm.SplitBatchNorm2d` inside one process), and the key encoder's input
is permuted across the groups (the permutation drawn from the run's generator, broadcast from
rank 0), then its output is put back in order. So a query and its key are never normalised
with the same set of samples, and the pair cannot be recognised from shared BN statistics.
Under data parallelism each rank holds bn_splits / world groups and the key encoder's input
is gathered from all ranks before the permutation, as in the official code.

Before training, `init_bank_step` is called on batches until the bank is full of keys (every
rank's keys, gathered, in global order: the bank is identical on every rank). The official
code's initialisation pass (`init_memory`) also takes SGD steps of the query encoder against
the partly filled bank and then copies it into the key encoder; here that pass only fills the
bank (the two encoders start equal, as they do there after the copy).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from histstore.devices import autocast
from histstore.encoders.backbones import build_backbone
from histstore.encoders.bank import AdversarialBank
from histstore.encoders.batchnorm import set_bn_splits, use_split_bn
from histstore.encoders.contrastive import check_encoder_settings, optimizer_step, wrap_data_parallel
from histstore.encoders.distributed import SINGLE, DataParallel
from histstore.encoders.heads import ProjectedEncoder, ProjectionHead
from histstore.encoders.losses import adco_key_sims, adco_loss, contrastive_accuracy
from histstore.encoders.momentum import copy_and_freeze, update_momentum


@dataclass(frozen=True)
class AdCoConfig:
    """Defaults are AdCo's / HistCode's: t 0.12 and t_mem 0.02 (paper and both codes), bank lr
    0.3 (HistCode's Adco/ops/argparser.py; AdCo's ImageNet setting is 3), bank momentum 0.9 and
    weight decay 1e-4, key momentum 0.999. bank_size: `histstore pretrain` asks for a fifth of
    the cohort's tiles by default (HistCode used 318,193; AdCo ImageNet 65,536).
    bn_splits: BatchNorm groups of the global batch for shuffle BN (8, as AdCo's 8 GPUs).
    in_batch_negatives: the official code's layout (other images' keys as extra negatives)."""

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
    bn_splits: int = 8
    in_batch_negatives: bool = False

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
        if self.bn_splits < 1:
            raise ValueError(f"bn_splits must be >= 1, got {self.bn_splits}")


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
        self.encoder_q = use_split_bn(ProjectedEncoder(backbone.train(), head), config.bn_splits)
        self.encoder_k = copy_and_freeze(self.encoder_q)
        self.bank = AdversarialBank(
            config.proj_dim, config.bank_size, config.t_mem, config.lr_mem,
            config.mem_momentum, config.mem_wd,
        )
        self.dp: DataParallel = SINGLE
        self.__dict__["_query_forward"] = None  # the DDP wrapper, kept out of the state dict

    @property
    def backbone(self) -> nn.Module:
        return self.encoder_q.backbone

    def encoder_parameters(self):
        """Parameters the SGD optimiser updates (the query encoder only)."""
        return self.encoder_q.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> q [B, proj_dim], unit rows."""
        return self.encoder_q(x)

    def distribute(self, dp: DataParallel, device: torch.device) -> None:
        """Take part in data-parallel training (call after moving to `device`): rank 0's
        state everywhere, bn_splits / world BN groups on each rank, the query encoder's
        gradients averaged over ranks by DistributedDataParallel."""
        if self.config.bn_splits % dp.world_size:
            raise ValueError(f"bn_splits {self.config.bn_splits} is not a multiple of the {dp.world_size} ranks")
        set_bn_splits(self, self.config.bn_splits // dp.world_size)
        self.dp = dp
        dp.broadcast_state(self)
        self.__dict__["_query_forward"] = wrap_data_parallel(self.encoder_q, dp, device)

    def _queries(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fwd = self.__dict__["_query_forward"]
        if fwd is not None:
            return fwd(*views)
        return tuple(self.encoder_q(v) for v in views)

    @torch.no_grad()
    def init_bank_step(self, x: torch.Tensor, amp_dtype: torch.dtype | None = None) -> int:
        """Fill the next bank columns with keys f_k(x) of every rank (global order); returns
        how many were filled."""
        with autocast(x.device.type, amp_dtype):
            k = self.encoder_k(x)
        return self.bank.init_from_keys(self.dp.all_gather(k))

    @torch.no_grad()
    def shuffled_keys(
        self, x: torch.Tensor, generator: torch.Generator | None = None, amp_dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Keys f_k(x) [N, proj_dim] of this rank's views, computed with shuffle BN: the global
        batch's views are permuted before the key encoder (BN groups = contiguous chunks of the
        permuted batch) and its outputs are put back in order. Returns the keys of the whole
        global batch in global order ([world * N, proj_dim]; this rank's rows at rank * N)."""
        dp = self.dp
        n = x.shape[0]
        total = n * dp.world_size
        perm = dp.broadcast_cpu_(torch.randperm(total, generator=generator))
        if dp.world_size > 1 and amp_dtype is not None:
            x = x.to(amp_dtype)  # the first convolution casts to it anyway: half the traffic
        xs = dp.all_gather(x)
        mine = perm[dp.rank * n:(dp.rank + 1) * n].to(x.device)
        with autocast(x.device.type, amp_dtype):
            k_mine = self.encoder_k(xs[mine].contiguous(memory_format=torch.channels_last))
        slots = dp.all_gather(k_mine)  # slot i holds the key of global row perm[i]
        k = torch.empty_like(slots)
        k[perm.to(slots.device)] = slots
        return k

    def training_step(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scaler=None,
        amp_dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """One AdCo step on this rank's two views [N, 3, H, W] (rows rank * N.. of the global
        batch). `generator` draws the shuffle-BN permutations. Returns detached 0-dim tensors
        (this rank's means): loss, contrastive_acc, bank_loss (CE at t_mem before the ascent),
        bank_grad_norm, pos_sim (mean q.k own), bank_sim_max (mean over rows of max q.Wn)."""
        cfg, dp = self.config, self.dp
        n = x1.shape[0]
        lo = dp.rank * n
        splits = cfg.bn_splits // dp.world_size
        if n < 2 * splits:
            raise ValueError(f"shuffle BN: {n} samples per process cannot make {splits} BatchNorm groups of >= 2 "
                             f"(bn_splits {cfg.bn_splits} over {dp.world_size} process(es)); lower bn_splits or "
                             "raise the batch size")
        with autocast(x1.device.type, amp_dtype):
            qs = self._queries(x1, x2) if cfg.symmetric else self._queries(x1)
        q1 = qs[0]
        k2_all = self.shuffled_keys(x2, generator, amp_dtype)
        k2 = k2_all[lo:lo + n]
        k2_cols = k2_all if cfg.in_batch_negatives else None
        Wn = self.bank.negatives()
        loss, logits, targets = adco_loss(q1, k2, Wn, cfg.t, k2_cols, lo)
        if cfg.symmetric:
            q2 = qs[1]
            k1_all = self.shuffled_keys(x1, generator, amp_dtype)
            k1 = k1_all[lo:lo + n]
            k1_cols = k1_all if cfg.in_batch_negatives else None
            loss2, logits2, _ = adco_loss(q2, k1, Wn, cfg.t, k1_cols, lo)
            loss = 0.5 * (loss + loss2)
        optimizer_step(loss, optimizer, scaler)
        update_momentum(self.encoder_q, self.encoder_k, cfg.key_momentum)

        # bank ascent, reusing this step's queries (before the encoder update)
        with torch.no_grad():
            if cfg.symmetric:
                q = torch.cat([q1, q2]).detach()
                key_sims = torch.cat([adco_key_sims(q1, k2, k2_cols), adco_key_sims(q2, k1, k1_cols)])
                bank_targets = torch.cat([targets, targets])
                acc = 0.5 * (contrastive_accuracy(logits, targets) + contrastive_accuracy(logits2, targets))
            else:
                q, key_sims, bank_targets = q1.detach(), adco_key_sims(q1, k2, k2_cols), targets
                acc = contrastive_accuracy(logits, targets)
            average = dp.all_reduce_mean_ if dp.world_size > 1 else None
            bank_out = self.bank.step(q, key_sims.detach(), bank_targets, average=average)
            m = logits.shape[1] - Wn.shape[1]  # key columns
            pos = logits[torch.arange(n, device=logits.device), targets] * cfg.t
            bank_max = logits[:, m:].max(dim=1).values.mean() * cfg.t
        return {
            "loss": loss.detach(),
            "contrastive_acc": acc,
            **bank_out,
            "pos_sim": pos.mean(),
            "bank_sim_max": bank_max,
        }
