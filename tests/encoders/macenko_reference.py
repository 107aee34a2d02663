"""Macenko stain normalisation written the plain way: the formulation histstore shipped first,
kept here as the reference that the faster one in histstore.embeddings.stain must match bit
for bit (tests/encoders/test_macenko.py)."""
from __future__ import annotations

import torch

from histstore.embeddings.stain import ALPHA, BETA, HE_REF, IO, MAX_C_REF


def plain_macenko(
    tiles: torch.Tensor,
    Io: float = IO,
    alpha: float = ALPHA,
    beta: float = BETA,
    min_tissue_fraction: float = 0.02,
    min_tissue_pixels: int = 64,
    max_fit_pixels: int = 4096,
    return_mask: bool = False,
):
    """The straightforward formulation (full sorts, log per pixel, out-of-place)."""
    if tiles.dtype != torch.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"expected uint8 tiles [B, H, W, 3], got {tuple(tiles.shape)} {tiles.dtype}")
    b, h, w, _ = tiles.shape
    if b == 0:
        return (tiles.clone(), torch.zeros(0, dtype=torch.bool, device=tiles.device)) if return_mask else tiles.clone()
    dev = tiles.device
    n = h * w
    od = -torch.log((tiles.reshape(b, n, 3).float() + 1.0) / Io)  # [B, N, 3]

    fit = od if n <= max_fit_pixels else od[:, torch.linspace(0, n - 1, max_fit_pixels, device=dev).long()]
    m = fit.shape[1]
    mask = (fit >= beta).all(dim=-1)  # [B, m] tissue pixels
    cnt = mask.sum(dim=1)
    valid = cnt >= max(min_tissue_pixels, int(min_tissue_fraction * m))
    cntf = cnt.clamp_min(2).float()

    # masked OD covariance per tile -> eigenvectors of the two largest eigenvalues
    wgt = mask.unsqueeze(-1).float()
    mean = (fit * wgt).sum(dim=1) / cntf.unsqueeze(-1)
    cen = (fit - mean.unsqueeze(1)) * wgt
    cov = cen.transpose(1, 2) @ cen / (cntf - 1).view(b, 1, 1)
    eye = torch.eye(3, device=dev).expand(b, 3, 3)
    cov = torch.where(valid.view(b, 1, 1), cov, eye)  # keep eigh well-posed for skipped tiles
    _, evecs = torch.linalg.eigh(cov)
    v1, v2 = evecs[..., 2], evecs[..., 1]  # largest, second
    v1 = v1 * torch.where(v1.sum(-1, keepdim=True) < 0, -1.0, 1.0)  # tissue projects positively

    # angle of each tissue pixel in the (v1, v2) plane; robust extremes by percentiles
    t1 = (fit * v1.unsqueeze(1)).sum(-1)
    t2 = (fit * v2.unsqueeze(1)).sum(-1)
    phi = torch.atan2(t2, t1).masked_fill(~mask, float("inf"))
    phi_sorted, _ = phi.sort(dim=1)
    lo = _masked_percentile(phi_sorted, cnt, alpha / 100.0)
    hi = _masked_percentile(phi_sorted, cnt, 1.0 - alpha / 100.0)
    v_min = torch.cos(lo).unsqueeze(-1) * v1 + torch.sin(lo).unsqueeze(-1) * v2
    v_max = torch.cos(hi).unsqueeze(-1) * v1 + torch.sin(hi).unsqueeze(-1) * v2
    h_first = (v_min[:, 0] > v_max[:, 0]).unsqueeze(-1)
    he = torch.stack([torch.where(h_first, v_min, v_max), torch.where(h_first, v_max, v_min)], dim=-1)  # [B,3,2]

    # least squares C = (HE^T HE)^-1 HE^T OD ; degenerate stain pairs are skipped
    gram = he.transpose(1, 2) @ he  # [B, 2, 2]
    det = gram[:, 0, 0] * gram[:, 1, 1] - gram[:, 0, 1] * gram[:, 1, 0]
    valid &= det > 1e-3  # |sin(angle between stains)| > ~0.03
    gram = torch.where(valid.view(b, 1, 1), gram, torch.eye(2, device=dev).expand(b, 2, 2))
    proj = torch.linalg.solve(gram, he.transpose(1, 2))  # [B, 2, 3]

    c_fit = proj @ fit.transpose(1, 2)  # [B, 2, m]
    max_c = _quantile(c_fit, 0.99)  # [B, 2]
    valid &= (max_c > 1e-2).all(dim=-1)
    scale = MAX_C_REF.to(dev) / max_c.clamp_min(1e-2)  # [B, 2]

    conc = (proj @ od.transpose(1, 2)) * scale.unsqueeze(-1)  # [B, 2, N]
    out = Io * torch.exp(-(HE_REF.to(dev) @ conc))  # [B, 3, N]
    out = out.clamp(0, 255).round().transpose(1, 2).reshape(b, h, w, 3)
    valid &= torch.isfinite(out).flatten(1).all(dim=1)
    out = torch.where(valid.view(b, 1, 1, 1), torch.nan_to_num(out).to(torch.uint8), tiles)
    return (out, valid) if return_mask else out


def _masked_percentile(sorted_vals: torch.Tensor, cnt: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolated q-quantile of the first cnt[b] entries of each sorted row."""
    pos = q * (cnt.clamp_min(1) - 1).float()
    i0 = pos.floor().long()
    i1 = torch.minimum(i0 + 1, (cnt.clamp_min(1) - 1))
    v0 = sorted_vals.gather(1, i0.unsqueeze(1)).squeeze(1)
    v1 = sorted_vals.gather(1, i1.unsqueeze(1)).squeeze(1)
    v0 = torch.where(torch.isfinite(v0), v0, torch.zeros_like(v0))
    v1 = torch.where(torch.isfinite(v1), v1, v0)
    return v0 + (v1 - v0) * (pos - i0.float())


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """q-quantile along the last dim, linear interpolation (no torch.quantile size limit)."""
    s, _ = x.sort(dim=-1)
    pos = q * (x.shape[-1] - 1)
    i0 = int(pos)
    i1 = min(i0 + 1, x.shape[-1] - 1)
    return s[..., i0] + (s[..., i1] - s[..., i0]) * (pos - i0)
