"""Contrastive losses: AdCo's encoder loss and SimCLR's NT-Xent.

AdCo (Hu et al., CVPR 2021; HistCode arXiv 2204.11994): for queries q [N, d] and keys k [N, d]
(both L2-normalised; k from the EMA key encoder, no gradient) and the column-normalised bank
Wn [d, K], row n of the logits is [q_n . k_j for j = 1..N, q_n . Wn] / t, shape [N, N + K];
the target of row n is column n (its own key). t = 0.12 in HistCode.

NT-Xent (Chen et al., SimCLR, ICML 2020): 2N views, each view's positive is the other view of
the same image, negatives are the other 2N - 2 views; temperature ~0.1-0.5.
All losses are computed in fp32 (or fp64 if the inputs are fp64), also under autocast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_t(t: float) -> None:
    if not t > 0:
        raise ValueError(f"temperature must be > 0, got {t}")


def _dt(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def adco_logits(q: torch.Tensor, k: torch.Tensor, Wn: torch.Tensor, t: float) -> torch.Tensor:
    """[q.k_j (in-batch keys), q.Wn] / t: q [N, d], k [N, d], Wn [d, K] -> [N, N + K].

    Column n of row n is the positive. Keys are detached (the key encoder has no gradient);
    the bank is detached (it is updated by its own ascent step, not by autograd).
    """
    _check_t(t)
    dt = _dt(q)
    q = q.to(dt)
    return torch.cat([q @ k.detach().to(dt).T, q @ Wn.detach().to(dt)], dim=1) / t


def adco_loss(
    q: torch.Tensor, k: torch.Tensor, Wn: torch.Tensor, t: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of `adco_logits` with target = own key. Returns (loss, logits)."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = adco_logits(q, k, Wn, t)
        target = torch.arange(q.shape[0], device=q.device)
        return F.cross_entropy(logits, target), logits


def contrastive_accuracy(logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of rows whose argmax is the positive column (default: column n for row n)."""
    if targets is None:
        targets = torch.arange(logits.shape[0], device=logits.device)
    return (logits.argmax(dim=1) == targets).float().mean()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent over 2N views. z1, z2: [N, d] (normalised here). Returns (loss, logits [2N, 2N-1]).

    Row i of the logits is view i against the other 2N - 1 views (self removed); the positive
    of view i < N sits at column i + N - 1, of view i >= N at column i - N.
    """
    _check_t(t)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        dt = _dt(z1)
        z = F.normalize(torch.cat([z1, z2], dim=0).to(dt), dim=1)
        n2 = z.shape[0]
        sim = z @ z.T / t
        # drop the diagonal: keep the off-diagonal entries of each row, in order
        off = ~torch.eye(n2, dtype=torch.bool, device=z.device)
        logits = sim[off].view(n2, n2 - 1)
        return F.cross_entropy(logits, nt_xent_targets(n2 // 2, z.device)), logits


def nt_xent_targets(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Positive column per row of `nt_xent`'s logits for N = n images."""
    i = torch.arange(2 * n, device=device)
    return torch.where(i < n, i + n - 1, i - n)
