"""AdCo's adversarial negative bank (Hu et al., "AdCo: Adversarial Contrast for Efficient
Learning of Unsupervised Representations from Self-Trained Negative Adversaries", CVPR 2021),
as used by HistCode (arXiv 2204.11994).

The bank holds K learnable negatives W = [W_1 ... W_K], W: [dim, K], kept unnormalised and
read column-normalised (w_k = W_k / |W_k|). It is not an optimiser parameter: it is updated in
closed form, once per step after the encoder step, by gradient ASCENT on the contrastive loss
at its own temperature t_mem, reusing that step's queries q [N, dim] (L2-normalised).

Row n of the logits is [q_n . k for the M key columns (M = 1, its own key, as in the paper; or
every key of the global batch in the official code's layout), q_n . w_k for the K bank columns]
/ t_mem, target = the own key's column. With P = softmax of that row, restricted to the bank
columns ([N, K]):

    g_k = -(1 / (t_mem |W_k|)) [ mean_n P_nk q_n - (mean_n P_nk (q_n . w_k)) w_k ]
    v  <- momentum * v + g + weight_decay * W          (momentum 0.9, wd 1e-4)
    W  <- W - lr * v                                   (lr 3 for ImageNet, 0.3 in HistCode)

g is minus the gradient of the mean cross-entropy with respect to W, so the step raises the
loss: the negatives move towards the queries they are confused with. In data-parallel
training each rank computes g from its own queries and g is averaged over ranks before the
update (as the official code's all_reduce(g) / world_size): with equal shares that is g of all
the global batch's queries, so the bank stays identical on every rank. The softmax runs in fp32
(fp64 stays fp64) with autocast disabled, because P at t_mem = 0.02 is very peaked.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-12


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 -> fp32; fp32 and fp64 unchanged."""
    return torch.promote_types(dtype, torch.float32)


def bank_logits(
    q: torch.Tensor, W: torch.Tensor, t_mem: float, key_sims: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logit rows at t_mem and the pieces the gradient needs.

    q: [N, dim] unit rows; W: [dim, K] unnormalised; key_sims: [N, M] raw similarities of the
    non-bank columns (q_n . k_j), or None for a bank-only row.
    Returns (logits [N, M+K] already divided by t_mem, Wn [dim, K], bank sims q.Wn [N, K]).
    """
    dt = _work_dtype(q.dtype)
    q, W = q.to(dt), W.to(dt)
    Wn = W / W.norm(dim=0, keepdim=True).clamp_min(_EPS)
    sims = q @ Wn
    parts = [sims] if key_sims is None else [key_sims.to(dt), sims]
    return torch.cat(parts, dim=1) / t_mem, Wn, sims


def closed_form_grad(
    q: torch.Tensor, W: torch.Tensor, t_mem: float, key_sims: torch.Tensor | None = None
) -> torch.Tensor:
    """g [dim, K] = minus d(mean_n CE_n)/dW for the loss described in the module docstring.

    q: [N, dim] unit rows; W: [dim, K]; key_sims: [N, M] or None. The target column does not
    matter here: bank columns are never targets, so dCE_n / dlogit_nk = P_nk / t_mem there.
    """
    return _grad_and_logits(q, W, t_mem, key_sims)[0]


def _grad_and_logits(
    q: torch.Tensor, W: torch.Tensor, t_mem: float, key_sims: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits, Wn, sims = bank_logits(q, W, t_mem, key_sims)
        P = torch.softmax(logits, dim=1)[:, logits.shape[1] - W.shape[1]:]  # [N, K]
        weighted_q = q.to(logits.dtype).T @ P / q.shape[0]  # [dim, K]: mean_n P_nk q_n
        coef = (P * sims).mean(dim=0)  # [K]: mean_n P_nk (q_n . w_k)
        norms = W.to(logits.dtype).norm(dim=0).clamp_min(_EPS)
        g = -(weighted_q - coef.unsqueeze(0) * Wn) / (t_mem * norms.unsqueeze(0))
        return g, logits


def bank_loss(
    q: torch.Tensor,
    W: torch.Tensor,
    t_mem: float,
    key_sims: torch.Tensor,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy at t_mem over rows [key_sims, q.Wn] (the loss the bank ascends).

    targets: [N] column index of each row's positive; default arange(N) (own key).
    Differentiable in W (used by the tests to check `closed_form_grad` with autograd).
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits, _, _ = bank_logits(q, W, t_mem, key_sims)
        if targets is None:
            targets = torch.arange(q.shape[0], device=q.device)
        return F.cross_entropy(logits, targets)


class AdversarialBank(nn.Module):
    """K adversarial negatives of dimension `dim` (buffers W [dim, K] and velocity v [dim, K]).

    size: K (HistCode: 318,193; AdCo ImageNet: 65,536).
    t_mem: bank temperature (0.02); lr: bank learning rate (0.3 in HistCode);
    momentum: 0.9; weight_decay: 1e-4.
    Before training, fill the bank with key embeddings (`init_from_keys`, repeated over batches
    until `is_full`): AdCo reports that this initialisation matters.
    """

    def __init__(
        self,
        dim: int,
        size: int,
        t_mem: float = 0.02,
        lr: float = 0.3,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
    ):
        super().__init__()
        if dim <= 0:
            raise ValueError(f"bank dim must be > 0, got {dim}")
        if size <= 0:
            raise ValueError(f"bank size K must be > 0, got {size}")
        if not t_mem > 0:
            raise ValueError(f"bank temperature t_mem must be > 0, got {t_mem}")
        if not lr >= 0:
            raise ValueError(f"bank lr must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"bank momentum must be in [0, 1), got {momentum}")
        if not weight_decay >= 0:
            raise ValueError(f"bank weight decay must be >= 0, got {weight_decay}")
        self.dim, self.size = dim, size
        self.t_mem, self.lr, self.momentum, self.weight_decay = t_mem, lr, momentum, weight_decay
        self.register_buffer("W", F.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("v", torch.zeros(dim, size))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def negatives(self) -> torch.Tensor:
        """Column-normalised bank Wn: [dim, K] (fp32)."""
        return F.normalize(self.W, dim=0)

    @property
    def is_full(self) -> bool:
        return int(self.filled) >= self.size

    @torch.no_grad()
    def init_from_keys(self, keys: torch.Tensor) -> int:
        """Copy key embeddings [N, dim] into the next unfilled columns; resets the velocity.

        Returns how many columns were filled by this call (0 once the bank is full).
        """
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must be [N, {self.dim}], got {tuple(keys.shape)}")
        start = int(self.filled)
        n = min(self.size - start, keys.shape[0])
        if n > 0:
            self.W[:, start:start + n] = F.normalize(keys[:n].to(self.W.dtype), dim=1).T
            self.filled += n
        self.v.zero_()
        return n

    @torch.no_grad()
    def step(
        self,
        q: torch.Tensor,
        key_sims: torch.Tensor,
        targets: torch.Tensor | None = None,
        average: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One ascent step. q: [N, dim] unit queries of this step (detached);
        key_sims: [N, M] raw similarities of the key columns; targets: [N] positive column per
        row (default arange(N)); average: in-place mean over ranks of g (data parallel).

        Returns {"bank_loss": CE at t_mem before the step (this rank's rows),
        "bank_grad_norm": |g|} (0-dim).
        """
        g, logits = _grad_and_logits(q.detach(), self.W, self.t_mem, key_sims.detach())
        if average is not None:
            g = average(g)
        if targets is None:
            targets = torch.arange(q.shape[0], device=q.device)
        loss = F.cross_entropy(logits, targets)
        # v <- momentum v + g + wd W ; W <- W - lr v   (in place)
        self.v.mul_(self.momentum).add_(g).add_(self.W, alpha=self.weight_decay)
        self.W.sub_(self.v, alpha=self.lr)
        return {"bank_loss": loss.detach(), "bank_grad_norm": g.norm().detach()}

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, size={self.size}, t_mem={self.t_mem}, lr={self.lr}, "
            f"momentum={self.momentum}, weight_decay={self.weight_decay}"
        )


def bank_step_bytes(size: int, dim: int, rows: int, key_columns: int = 1) -> int:
    """Rough peak bytes a bank of `size` negatives needs during one training step: W, v and
    their temporaries (about 6 [dim, K] fp32 arrays) plus the [rows, key_columns + K] logits of
    the encoder loss and of the bank step with their softmax and gradients (about 8 at once).
    rows: queries per step on this device (2 x batch when symmetric)."""
    return 4 * (6 * dim * size + 8 * rows * (size + key_columns))


def fit_bank_size(size: int, dim: int, rows: int, budget_bytes: int, key_columns: int = 1) -> int:
    """The largest bank <= size whose `bank_step_bytes` fits in budget_bytes (at least 1)."""
    if bank_step_bytes(size, dim, rows, key_columns) <= budget_bytes:
        return size
    per_column = 4 * (6 * dim + 8 * rows)
    return max(1, min(size, (budget_bytes - 4 * 8 * rows * key_columns) // per_column))
