"""Contrastive losses: AdCo's encoder loss and SimCLR's NT-Xent.

AdCo (Hu et al., CVPR 2021, eq. 1-2; HistCode arXiv 2204.11994): for queries q [N, d] and
their own keys k [N, d] (both L2-normalised; k from the EMA key encoder, no gradient) and the
column-normalised bank Wn [d, K], row n of the logits is [q_n . k_n, q_n . Wn] / t, shape
[N, 1 + K], target column 0: a query is contrasted with its own key and the bank's K
adversarial negatives only, as the paper writes the loss. t = 0.12.

The official code (maple-research-lab/AdCo, training/train.py `update_network`) differs: it
puts every key of the global batch in the row, [q_n . k_j for all j, q_n . Wn] / t, target the
own key's column, so the other images' keys act as extra negatives (HistCode's copy does the
same within one GPU). `all_keys=` gives that layout, as an explicit option.

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


def adco_key_sims(q: torch.Tensor, k: torch.Tensor, all_keys: torch.Tensor | None = None) -> torch.Tensor:
    """The key columns of an AdCo row before the temperature (no gradient to keys):
    [N, 1] = q_n . k_n (the paper), or [N, M] = q_n . all_keys_j (the official code's layout)."""
    dt = _dt(q)
    q = q.to(dt)
    if all_keys is None:
        return (q * k.detach().to(dt)).sum(dim=1, keepdim=True)
    return q @ all_keys.detach().to(dt).T


def adco_logits(
    q: torch.Tensor, k: torch.Tensor, Wn: torch.Tensor, t: float, all_keys: torch.Tensor | None = None
) -> torch.Tensor:
    """[key columns, q.Wn] / t: q [N, d], k [N, d] own keys, Wn [d, K] -> [N, 1 + K]
    (or [N, M + K] with all_keys [M, d]).

    Keys are detached (the key encoder has no gradient); the bank is detached (it is updated
    by its own ascent step, not by autograd)."""
    _check_t(t)
    dt = _dt(q)
    return torch.cat([adco_key_sims(q, k, all_keys), q.to(dt) @ Wn.detach().to(dt)], dim=1) / t


def adco_targets(n: int, offset: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Positive column of each row: 0 (own key only), or offset + arange(n) when the row holds
    all keys of the global batch and this process's queries are rows offset.. of it (the
    GLOBAL row: the official code uses the GPU index within one node, wrong beyond one node)."""
    if offset is None:
        return torch.zeros(n, dtype=torch.long, device=device)
    return torch.arange(offset, offset + n, device=device)


def adco_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    Wn: torch.Tensor,
    t: float,
    all_keys: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy of `adco_logits` with target = own key. Returns (loss, logits, targets).
    offset: global row of q's first query (used with all_keys)."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = adco_logits(q, k, Wn, t, all_keys)
        targets = adco_targets(q.shape[0], None if all_keys is None else offset, q.device)
        return F.cross_entropy(logits, targets), logits, targets


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


def nt_xent_rows(
    z1: torch.Tensor, z2: torch.Tensor, offset: int, n: int, t: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NT-Xent of the rows of n images [offset, offset + n) of a global batch of B images.

    z1, z2: [B, d] both views of the whole global batch (gathered from every rank with
    gradient). Returns (mean loss over the 2n rows, logits [2n, 2B] with each row's own view
    at -inf, targets [2n]). With offset 0 and n = B it is `nt_xent` (same loss); a rank's mean
    over its rows, averaged over ranks, is the global loss."""
    _check_t(t)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        dt = _dt(z1)
        b = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2], dim=0).to(dt), dim=1)
        own = torch.arange(offset, offset + n, device=z.device)
        rows = torch.cat([own, own + b])
        self_col = torch.zeros(2 * n, 2 * b, dtype=torch.bool, device=z.device)
        self_col[torch.arange(2 * n, device=z.device), rows] = True
        logits = (z[rows] @ z.T / t).masked_fill(self_col, float("-inf"))
        targets = torch.cat([own + b, own])
        return F.cross_entropy(logits, targets), logits, targets
