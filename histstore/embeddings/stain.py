"""Macenko stain normalisation in torch: a fit per tile (vectorised over a batch), or one fit
on the pooled pixels of many tiles applied to others (a slide's; see slide_stain.py).

Macenko et al., "A method for normalizing histology slides for quantitative analysis",
ISBI 2009; HistCode (arXiv 2204.11994) stain-normalises tiles before encoding.

`macenko_normalize`: for each tile independently (nothing is shared across the batch);
`fit_stains` runs steps 1-5 once on the pooled pixels of its tiles and returns the stain
matrix and 99th-percentile concentrations; `apply_stain_fit` does steps 5-6 with such a fit:
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

from dataclasses import dataclass

import numpy as np
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
    est = _estimate(fit, alpha, beta, max(min_tissue_pixels, int(min_tissue_fraction * m)))
    valid = est.valid
    scale = MAX_C_REF.to(dev) / est.max_c.clamp_min(1e-2)  # [B, 2]
    out = _render(est.proj, od, scale, Io)  # [B, 3, N]
    # clamped values are finite unless NaN, so a tile's sum is NaN exactly when one value is
    valid &= ~torch.isnan(out.sum(dim=(1, 2)))
    res = torch.empty((b, n, 3), dtype=torch.uint8, device=dev)
    res.copy_(out.transpose(1, 2))  # one pass: transpose + uint8 (NaN tiles are replaced below)
    res = res.view(b, h, w, 3)
    if not bool(valid.all()):
        res[~valid] = tiles[~valid]
    return (res, valid) if return_mask else res


@dataclass(frozen=True)
class StainFit:
    """One Macenko fit shared by many tiles (a slide's): stain_matrix [2, 3] (rows haematoxylin,
    eosin; columns optical density in R, G, B) and max_c [2] (99th-percentile concentrations),
    or, when the fit failed, both None and `reason` saying why."""
    stain_matrix: np.ndarray | None
    max_c: np.ndarray | None
    n_pixels: int
    n_tissue_pixels: int
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.stain_matrix is not None


def fit_stains(tiles: torch.Tensor, Io: float = IO, alpha: float = ALPHA, beta: float = BETA,
               min_tissue_fraction: float = 0.02, min_tissue_pixels: int = 64,
               max_fit_pixels: int = 4096, max_pooled_pixels: int | None = 1 << 17) -> StainFit:
    """One Macenko fit on the pooled pixels of uint8 tiles [K, H, W, 3] (each tile subsampled to
    at most max_fit_pixels, as macenko_normalize does, then the pool to at most
    max_pooled_pixels by a regular subsample: 131,072 pixels pin the percentiles down well,
    and the fit's cost is in proportion): the same estimate as for one tile, on the optical
    densities of all of them together. Never raises for valid uint8 input; a
    failed fit (too little stained tissue, a single stain, no usable concentration scale) is
    returned with its reason."""
    if tiles.dtype != torch.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"expected uint8 tiles [K, H, W, 3], got {tuple(tiles.shape)} {tiles.dtype}")
    k, h, w, _ = tiles.shape
    n = h * w
    if k == 0 or n == 0:
        return StainFit(None, None, 0, 0, "no tiles to fit")
    px = tiles.reshape(k, n, 3)  # subsample the pixels first: optical density only where used
    if n > max_fit_pixels:
        px = px[:, torch.linspace(0, n - 1, max_fit_pixels, device=tiles.device).long()]
    px = px.reshape(1, -1, 3)
    if max_pooled_pixels is not None and px.shape[1] > max_pooled_pixels:
        px = px[:, torch.linspace(0, px.shape[1] - 1, max_pooled_pixels, device=tiles.device).long()]
    fit = _optical_density(px, Io)
    m = fit.shape[1]
    min_count = max(min_tissue_pixels, int(min_tissue_fraction * m))
    est = _estimate(fit, alpha, beta, min_count)
    n_tissue = int((fit >= beta).all(dim=-1).sum())
    if not bool(est.enough_tissue[0]):
        reason = f"too little stained tissue ({n_tissue} of {m} pixels, {min_count} needed)"
    elif not bool(est.distinct[0]):
        reason = "a single stain direction (haematoxylin and eosin vectors nearly parallel)"
    elif not bool(est.valid[0]):
        reason = "no usable concentration scale (99th percentile near zero)"
    elif not bool(torch.isfinite(est.he).all() and torch.isfinite(est.max_c).all()):
        reason = "non-finite stain estimate"
    else:
        return StainFit(est.he[0].T.double().cpu().numpy(), est.max_c[0].double().cpu().numpy(), m, n_tissue)
    return StainFit(None, None, m, n_tissue, reason)


def apply_stain_fit(tiles: torch.Tensor, stain_matrix, max_c, Io: float = IO) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 tiles [B, H, W, 3] -> (normalised uint8 tiles, normalised [B] bool), all with one
    fit (a StainFit's stain_matrix [2, 3] and max_c [2]): concentrations by least squares on
    that stain matrix, each stain scaled by MAX_C_REF / max_c, re-rendered with HE_REF. A
    tile whose result is not finite is returned unchanged (its flag False)."""
    if tiles.dtype != torch.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"expected uint8 tiles [B, H, W, 3], got {tuple(tiles.shape)} {tiles.dtype}")
    b, h, w, _ = tiles.shape
    dev = tiles.device
    if b == 0:
        return tiles.clone(), torch.zeros(0, dtype=torch.bool, device=dev)
    he = torch.as_tensor(np.asarray(stain_matrix, dtype=np.float32), device=dev).T  # [3, 2]
    proj = torch.linalg.solve(he.T @ he, he.T)  # [2, 3], as _estimate computes it
    scale = MAX_C_REF.to(dev) / torch.as_tensor(np.asarray(max_c, dtype=np.float32), device=dev).clamp_min(1e-2)
    n = h * w
    od = _optical_density(tiles.reshape(b, n, 3), Io)
    out = _render(proj.expand(b, 2, 3), od, scale.expand(b, 2), Io)
    valid = ~torch.isnan(out.sum(dim=(1, 2)))
    res = torch.empty((b, n, 3), dtype=torch.uint8, device=dev)
    res.copy_(out.transpose(1, 2))
    res = res.view(b, h, w, 3)
    if not bool(valid.all()):
        res[~valid] = tiles[~valid]
    return res, valid


@dataclass
class _Estimate:
    """Batched Macenko estimate: stain matrices he [B, 3, 2] (columns H, E), their least-squares
    projections proj [B, 2, 3], 99th-percentile concentrations max_c [B, 2], and which rows
    passed each check (enough tissue, distinct stains, a usable concentration scale)."""
    he: torch.Tensor
    proj: torch.Tensor
    max_c: torch.Tensor
    enough_tissue: torch.Tensor
    distinct: torch.Tensor
    valid: torch.Tensor


def _estimate(fit: torch.Tensor, alpha: float, beta: float, min_count: int) -> _Estimate:
    """Macenko's stain estimate from optical densities fit [B, m, 3], one per row."""
    b, m, _ = fit.shape
    dev = fit.device
    mask = (fit >= beta).all(dim=-1)  # [B, m] tissue pixels
    cnt = mask.sum(dim=1)
    valid = cnt >= min_count
    enough_tissue = valid.clone()
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
    distinct = det > 1e-3  # |sin(angle between stains)| > ~0.03
    valid &= distinct
    gram = torch.where(valid.view(b, 1, 1), gram, torch.eye(2, device=dev).expand(b, 2, 2))
    proj = torch.linalg.solve(gram, he.transpose(1, 2))  # [B, 2, 3]

    c_fit = proj @ fit.transpose(1, 2)  # [B, 2, m]
    max_c = _quantile(c_fit, 0.99)  # [B, 2]
    valid &= (max_c > 1e-2).all(dim=-1)
    return _Estimate(he, proj, max_c, enough_tissue, distinct, valid)


def _render(proj: torch.Tensor, od: torch.Tensor, scale: torch.Tensor, Io: float) -> torch.Tensor:
    """Concentrations proj @ OD [B, N, 3] scaled per stain by scale [B, 2], re-rendered with
    the reference stains: float [B, 3, N] in 0..255, rounded (NaN where the input was)."""
    conc = (proj @ od.transpose(1, 2)).mul_(scale.unsqueeze(-1))  # [B, 2, N]
    # Io * exp(-(HE_REF @ C)); negating the matrix instead of the product is exact
    return torch.matmul(-HE_REF.to(od.device), conc).exp_().mul_(Io).clamp_(0, 255).round_()


_OD_TABLES: dict = {}


def _optical_density(pixels: torch.Tensor, Io: float) -> torch.Tensor:
    """-ln((I + 1) / Io) of uint8 pixels, looked up in a table of the same float32 expression
    (bit-identical to computing it per pixel, a fraction of the work; on a CPU with OpenCV's
    LUT, a few times faster than a torch gather)."""
    key = (float(Io), pixels.device)
    table = _OD_TABLES.get(key)
    if table is None:
        table = _OD_TABLES[key] = -torch.log((torch.arange(256, dtype=torch.float32, device=pixels.device) + 1.0) / Io)
    if pixels.device.type == "cpu" and pixels.numel() > 0:
        import cv2

        px = np.ascontiguousarray(pixels.numpy()).reshape(-1, pixels.shape[-1])
        return torch.from_numpy(cv2.LUT(px, table.numpy())).view(pixels.shape)
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
