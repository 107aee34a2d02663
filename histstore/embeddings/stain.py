"""Macenko stain normalisation in torch, per tile, vectorised over a batch.

Macenko et al., "A method for normalizing histology slides for quantitative analysis",
ISBI 2009; HistCode (arXiv 2204.11994) stain-normalises tiles before encoding.

For each tile independently (nothing is shared across the batch):
1. optical density OD = -ln((I + 1) / Io) per pixel and channel, Io = 240;
2. tissue pixels: OD >= beta (0.15) in every channel;
3. the plane of the two largest eigenvectors of the tissue pixels' OD covariance
   (batched `torch.linalg.eigh` on [B, 3, 3]);
4. angles of the tissue pixels projected on that plane; the alpha-th and (100 - alpha)-th
   percentiles (alpha = 1) give the two stain vectors; hematoxylin = the one with the larger
   red OD component;
5. concentrations C = least squares of OD on the stain matrix, scaled so that each stain's
   99th-percentile concentration matches the reference;
6. re-rendered with the reference stain matrix: I = Io * exp(-HE_REF @ C).

Reference (the standard Macenko reference, as in the widely used implementations):

    HE_REF = [[0.5626, 0.2159],      columns: hematoxylin, eosin; rows: OD in R, G, B
              [0.7201, 0.8012],
              [0.4062, 0.5581]]
    MAX_C_REF = [1.9705, 1.0308]     99th-percentile concentrations of H and E

Robustness: a tile with too few tissue pixels (background-only, nearly empty), a degenerate
stain estimate (both stain vectors nearly parallel, e.g. a single-stain or grey tile), a
vanishing concentration scale, or any non-finite value is returned UNCHANGED (identity
fallback). Never NaN, never an exception for valid uint8 input. `return_mask=True` also returns
which tiles were normalised.
"""
from __future__ import annotations

import torch

HE_REF = torch.tensor([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MAX_C_REF = torch.tensor([1.9705, 1.0308])
IO = 240.0
ALPHA = 1.0
BETA = 0.15


def macenko_normalize(
    tiles: torch.Tensor,
    Io: float = IO,
    alpha: float = ALPHA,
    beta: float = BETA,
    min_tissue_fraction: float = 0.02,
    min_tissue_pixels: int = 64,
    max_fit_pixels: int = 4096,
    return_mask: bool = False,
):
    """uint8 tiles [B, H, W, 3] -> Macenko-normalised uint8 [B, H, W, 3] (same device).

    min_tissue_fraction / min_tissue_pixels: below either, the tile is returned unchanged.
    max_fit_pixels: stain estimation uses at most this many pixels per tile (a fixed regular
    subsample; a 128x128 tile uses about every 4th pixel; speed: benchmarks/bench_encoders.py,
    difference from a fit on every pixel: tests/encoders/test_macenko.py); every pixel is
    re-rendered.
    With return_mask, returns (out, normalised [B] bool).

    Speed without changing a value (tests/encoders/test_macenko.py compares every output with
    the plain formulation): optical densities come from a 256-entry table of the same float32
    expression, percentiles from the few extreme values (topk) instead of full sorts, and the
    re-rendering runs in place.
    """
    if tiles.dtype != torch.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"expected uint8 tiles [B, H, W, 3], got {tuple(tiles.shape)} {tiles.dtype}")
    b, h, w, _ = tiles.shape
    if b == 0:
        return (tiles.clone(), torch.zeros(0, dtype=torch.bool, device=tiles.device)) if return_mask else tiles.clone()
    dev = tiles.device
    n = h * w
    od = _optical_density(tiles.reshape(b, n, 3), Io)  # [B, N, 3]

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

    # angle of each tissue pixel in the (v1, v2) plane; robust extremes by percentiles, which
    # need only the k smallest / largest angles (k covers the alpha-th percentile of m pixels)
    t1 = (fit * v1.unsqueeze(1)).sum(-1)
    t2 = (fit * v2.unsqueeze(1)).sum(-1)
    phi = torch.atan2(t2, t1)
    k = min(m, int(alpha / 100.0 * (m - 1)) + 3)
    lowest = phi.masked_fill(~mask, float("inf")).topk(k, dim=1, largest=False).values
    highest = phi.masked_fill(~mask, float("-inf")).topk(k, dim=1).values
    lo = _masked_percentile(lowest, cnt, alpha / 100.0)
    hi = _masked_percentile(highest, cnt, 1.0 - alpha / 100.0, descending=True)
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

    conc = (proj @ od.transpose(1, 2)).mul_(scale.unsqueeze(-1))  # [B, 2, N]
    # Io * exp(-(HE_REF @ C)); negating the matrix instead of the product is exact
    out = torch.matmul(-HE_REF.to(dev), conc).exp_().mul_(Io).clamp_(0, 255).round_()  # [B, 3, N]
    # clamped values are finite unless NaN, so a tile's sum is NaN exactly when one value is
    valid &= ~torch.isnan(out.sum(dim=(1, 2)))
    res = torch.empty((b, n, 3), dtype=torch.uint8, device=dev)
    res.copy_(out.transpose(1, 2))  # one pass: transpose + uint8 (NaN tiles are replaced below)
    res = res.view(b, h, w, 3)
    if not bool(valid.all()):
        res[~valid] = tiles[~valid]
    return (res, valid) if return_mask else res


_OD_TABLES: dict = {}


def _optical_density(pixels: torch.Tensor, Io: float) -> torch.Tensor:
    """-ln((I + 1) / Io) of uint8 pixels, looked up in a table of the same float32 expression
    (bit-identical to computing it per pixel, a fraction of the work)."""
    key = (float(Io), pixels.device)
    table = _OD_TABLES.get(key)
    if table is None:
        table = _OD_TABLES[key] = -torch.log((torch.arange(256, dtype=torch.float32, device=pixels.device) + 1.0) / Io)
    return table.index_select(0, pixels.reshape(-1).int()).view(pixels.shape)


def _masked_percentile(extreme: torch.Tensor, cnt: torch.Tensor, q: float, descending: bool = False) -> torch.Tensor:
    """Linear-interpolated q-quantile of each row's cnt[b] finite values, given the row's k
    smallest values in ascending order (or, with descending, its k largest in descending
    order) with non-finite padding after them; k must reach the two ranks that are read."""
    last = cnt.clamp_min(1) - 1
    pos = q * last.float()
    i0 = pos.floor().long()
    i1 = torch.minimum(i0 + 1, last)
    if descending:  # ascending rank r is position last - r from the top
        j0, j1 = (last - i0).clamp(0, extreme.shape[1] - 1), (last - i1).clamp(0, extreme.shape[1] - 1)
    else:
        j0, j1 = i0.clamp(max=extreme.shape[1] - 1), i1.clamp(max=extreme.shape[1] - 1)
    v0 = extreme.gather(1, j0.unsqueeze(1)).squeeze(1)
    v1 = extreme.gather(1, j1.unsqueeze(1)).squeeze(1)
    v0 = torch.where(torch.isfinite(v0), v0, torch.zeros_like(v0))
    v1 = torch.where(torch.isfinite(v1), v1, v0)
    return v0 + (v1 - v0) * (pos - i0.float())


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """q-quantile along the last dim, linear interpolation (no torch.quantile size limit);
    reads only the values above rank q (topk), which is what a full sort would give there."""
    size = x.shape[-1]
    pos = q * (size - 1)
    i0 = int(pos)
    i1 = min(i0 + 1, size - 1)
    top = x.topk(size - i0, dim=-1).values  # descending: ascending rank r is at size - 1 - r
    s0, s1 = top[..., size - 1 - i0], top[..., size - 1 - i1]
    return s0 + (s1 - s0) * (pos - i0)
