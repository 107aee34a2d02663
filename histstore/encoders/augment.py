"""Batched MoCo-v2 augmentations plus histology flips and 90-degree rotations.

MoCo-v2 (Chen et al. 2020), as used by AdCo and HistCode (arXiv 2204.11994): random resized
crop (scale 0.2-1, ratio 3/4-4/3), colour jitter 0.4/0.4/0.4/0.1 with p = 0.8 (the four ops
in random order), grayscale p = 0.2, Gaussian blur sigma 0.1-2 with p = 0.5, horizontal flip.
Tiles have no canonical orientation, so vertical flips and 90-degree rotations are added.

Everything runs on whole batches of tensors, on whatever device the batch is on, with
independent randomness per sample:
- crop + flips + rotation are one affine map per sample, applied by a single `grid_sample`
  (bilinear). With out_size equal to the tile size crops are only ever upsampled; when
  out_size is much smaller than the tile, downscaling is not antialiased.
- colour jitter factors and the order of the four ops are drawn per sample; the formulas are
  torchvision's (brightness/contrast/saturation blends, hue shift in HSV).
- blur: per-sample separable Gaussian kernels applied with one grouped convolution.
Random numbers come from a CPU `torch.Generator` (pass one for reproducibility). `draw` makes
a view's random choices and `apply` applies them: data-parallel training draws for the whole
global batch on every rank and applies each rank's rows (`rows=` of `augmented_view`), so a
sample is augmented the same way whatever the number of ranks.

Input x: float [B, 3, H, W] in [0, 1]. Output: float [B, 3, S, S] in [0, 1] (S = out_size or H).
`two_views` turns uint8 tiles [B, H, W, 3] into two ImageNet-normalised channels_last views.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from histstore.encoders.backbones import normalize


@dataclass(frozen=True)
class AugmentConfig:
    """MoCo-v2 settings (defaults) plus histology flips / rotations."""

    out_size: int | None = None  # None: same as input
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.5
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True

    def __post_init__(self):
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"bad crop_ratio {self.crop_ratio}")
        for name in ("jitter_p", "grayscale_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 0 <= self.hue <= 0.5:
            raise ValueError("hue must be in [0, 0.5]")
        if min(self.brightness, self.contrast, self.saturation) < 0:
            raise ValueError("jitter strengths must be >= 0")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"bad blur_sigma {self.blur_sigma}")
        if self.out_size is not None and self.out_size <= 0:
            raise ValueError("out_size must be > 0")


@dataclass
class AugmentDraw:
    """The random choices of one augmented view for `n` samples (CPU tensors, sample-first).

    Drawn for a whole global batch, so that every rank of a data-parallel run draws the same
    numbers and takes its own rows (`rows`): a sample's augmentation is then the same whatever
    the number of ranks, and the ranks' augmentations are independent of each other."""

    area: torch.Tensor
    log_ratio: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    hflip: torch.Tensor | None
    vflip: torch.Tensor | None
    rot_k: torch.Tensor | None
    jitter: torch.Tensor | None          # [n] bool: jitter applied
    jitter_factors: torch.Tensor | None  # [n, 4]: brightness, contrast, saturation, hue
    jitter_order: torch.Tensor | None    # [n, 4]: op at position p
    gray: torch.Tensor | None            # [n] bool
    blur: torch.Tensor | None            # [n] bool
    blur_sigma: torch.Tensor | None      # [n]

    def __len__(self) -> int:
        return int(self.area.shape[0])

    def rows(self, start: int, stop: int) -> "AugmentDraw":
        """The draws of samples [start, stop)."""
        def cut(t):
            return None if t is None else t[start:stop]
        return AugmentDraw(**{f: cut(getattr(self, f)) for f in self.__dataclass_fields__})


class BatchAugment:
    """Callable: x float [B, 3, H, W] in [0, 1] -> augmented [B, 3, S, S] in [0, 1].

    `draw(n, generator)` makes the random choices, `apply(x, draw)` applies them; calling the
    object does both (the same numbers in the same order)."""

    def __init__(self, config: AugmentConfig = AugmentConfig()):
        self.config = config

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_input(x)
        return self.apply(x, self.draw(x.shape[0], generator))

    def draw(self, n: int, generator: torch.Generator | None = None) -> AugmentDraw:
        c, g = self.config, generator
        area = _uniform(n, *c.crop_scale, g)
        log_r = _uniform(n, math.log(c.crop_ratio[0]), math.log(c.crop_ratio[1]), g)
        cx, cy = _rand(n, g), _rand(n, g)
        hflip = _rand(n, g) < 0.5 if c.hflip else None
        vflip = _rand(n, g) < 0.5 if c.vflip else None
        rot_k = torch.randint(0, 4, (n,), generator=g) if c.rot90 else None
        jitter = factors = order = None
        if c.jitter_p > 0:
            jitter = _rand(n, g) < c.jitter_p
            factors = torch.stack([
                _uniform(n, max(0.0, 1 - c.brightness), 1 + c.brightness, g),
                _uniform(n, max(0.0, 1 - c.contrast), 1 + c.contrast, g),
                _uniform(n, max(0.0, 1 - c.saturation), 1 + c.saturation, g),
                _uniform(n, -c.hue, c.hue, g),
            ], dim=1)
            order = torch.argsort(_rand((n, 4), g), dim=1)
        gray = _rand(n, g) < c.grayscale_p if c.grayscale_p > 0 else None
        blur = sigma = None
        if c.blur_p > 0:
            blur = _rand(n, g) < c.blur_p
            sigma = _uniform(n, *c.blur_sigma, g)
        return AugmentDraw(area, log_r, cx, cy, hflip, vflip, rot_k, jitter, factors, order, gray, blur, sigma)

    def apply(self, x: torch.Tensor, d: AugmentDraw) -> torch.Tensor:
        _check_input(x)
        if len(d) != x.shape[0]:
            raise ValueError(f"{len(d)} draws for {x.shape[0]} samples")
        x = self._geometry(x, d)
        if d.jitter is not None:
            x = self._jitter(x, d)
        if d.gray is not None:
            idx = _where(d.gray, x.device)
            if idx.numel():
                x[idx] = TF.rgb_to_grayscale(x[idx], num_output_channels=3)
        if d.blur is not None:
            x = self._blur(x, d)
        return x.clamp_(0.0, 1.0)

    # -- geometry: random resized crop, flips, rot90 as one affine grid per sample ----------
    def _geometry(self, x: torch.Tensor, d: AugmentDraw) -> torch.Tensor:
        c = self.config
        b, _, h, w = x.shape
        s = c.out_size or h
        ratio = torch.exp(d.log_ratio)
        # crop size as a fraction of the tile side (area fraction * aspect), clipped to fit
        cw = torch.sqrt(d.area * ratio).clamp(max=1.0)
        ch = torch.sqrt(d.area / ratio).clamp(max=1.0)
        # centre in normalised coords [-1, 1]: crop stays inside the tile
        cx = (1 - cw) * (2 * d.cx - 1)
        cy = (1 - ch) * (2 * d.cy - 1)
        # R: orthogonal 2x2 (flips and quarter turns) applied to the output grid first
        R = torch.eye(2).repeat(b, 1, 1)
        if d.hflip is not None:
            R[:, 0, 0] = torch.where(d.hflip, -1.0, 1.0)
        if d.vflip is not None:
            R[:, 1, 1] = torch.where(d.vflip, -1.0, 1.0)
        if d.rot_k is not None:
            cos = torch.tensor([1.0, 0.0, -1.0, 0.0])[d.rot_k]
            sin = torch.tensor([0.0, 1.0, 0.0, -1.0])[d.rot_k]
            rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
            R = rot @ R
        theta = torch.zeros(b, 2, 3)
        theta[:, :, :2] = torch.diag_embed(torch.stack([cw, ch], 1)) @ R
        theta[:, 0, 2], theta[:, 1, 2] = cx, cy
        grid = F.affine_grid(theta.to(x.device, x.dtype), [b, 3, s, s], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # -- colour jitter, per-sample factors and per-sample order ---------------------------
    def _jitter(self, x: torch.Tensor, d: AugmentDraw) -> torch.Tensor:
        c = self.config
        active = [c.brightness > 0, c.contrast > 0, c.saturation > 0, c.hue > 0]
        ops = (_brightness, _contrast, _saturation, _hue)
        for p in range(4):
            for j, op in enumerate(ops):
                if not active[j]:
                    continue
                sel = d.jitter & (d.jitter_order[:, p] == j)
                idx = _where(sel, x.device)
                if idx.numel():
                    f = d.jitter_factors[sel, j].to(x.device, x.dtype).view(-1, 1, 1, 1)
                    x[idx] = op(x[idx], f)
        return x

    # -- Gaussian blur with per-sample sigma -----------------------------------------------
    def _blur(self, x: torch.Tensor, d: AugmentDraw) -> torch.Tensor:
        hi = self.config.blur_sigma[1]
        idx = _where(d.blur, x.device)
        if not idx.numel():
            return x
        sig = d.blur_sigma[d.blur].to(x.device, x.dtype)
        n, (h, w) = idx.numel(), x.shape[2:]
        radius = min(math.ceil(3 * hi), (min(h, w) - 1) // 2)
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-0.5 * (t.view(1, -1) / sig.view(-1, 1)) ** 2)
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, dim=0)  # [n*3, 2r+1]
        y = x[idx].reshape(1, n * 3, h, w)
        y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(n * 3, 1, 1, -1), groups=n * 3)
        y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(n * 3, 1, -1, 1), groups=n * 3)
        x[idx] = y.view(n, 3, h, w)
        return x


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"expected float [B, 3, H, W], got {tuple(x.shape)} {x.dtype}")


def tiles_to_float(tiles: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 tiles [B, H, W, 3] -> float [B, 3, H, W] in [0, 1] (moved to `device` as uint8
    first: 4x less to transfer than float)."""
    if tiles.dtype != torch.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"expected uint8 tiles [B, H, W, 3], got {tuple(tiles.shape)} {tiles.dtype}")
    if device is not None:
        tiles = tiles.to(device, non_blocking=True)
    return tiles.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def augmented_view(
    x: torch.Tensor,
    augment: BatchAugment,
    generator: torch.Generator | None = None,
    rows: tuple[int, int] | None = None,
) -> torch.Tensor:
    """float [B, 3, H, W] in [0, 1] -> one augmented, ImageNet-normalised channels_last view.

    rows=(start, total): x holds rows [start, start + B) of a global batch of `total` samples
    (one rank's share in data-parallel training): the draws are made for all `total` samples
    and this share's are applied, so every rank consumes the generator identically."""
    if rows is None:
        d = augment.draw(x.shape[0], generator)
    else:
        start, total = rows
        if not 0 <= start <= total - x.shape[0]:
            raise ValueError(f"rows {start}..{start + x.shape[0]} are not inside a batch of {total}")
        d = augment.draw(total, generator).rows(start, start + x.shape[0])
    return normalize(augment.apply(x, d)).contiguous(memory_format=torch.channels_last)


def two_views(
    tiles: torch.Tensor,
    augment: BatchAugment,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    rows: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 tiles [B, H, W, 3] -> two independently augmented, ImageNet-normalised,
    channels_last views [B, 3, S, S] on `device` (`rows` as in `augmented_view`)."""
    x = tiles_to_float(tiles, device)
    return augmented_view(x, augment, generator, rows), augmented_view(x, augment, generator, rows)


# -- vectorised colour ops (torchvision formulas, per-sample factor f: [n, 1, 1, 1]) ----------
def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f).clamp_(0.0, 1.0)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = TF.rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1 - f) * mean).clamp_(0.0, 1.0)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    gray = TF.rgb_to_grayscale(x)
    return (f * x + (1 - f) * gray).clamp_(0.0, 1.0)


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(torch.remainder(h + f[:, 0], 1.0), s, v)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    d = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # (r, g, b) per sector i = 0..5
    table = torch.stack(
        [
            torch.stack([v, q, p, p, t, v], 0),
            torch.stack([t, v, v, q, p, p], 0),
            torch.stack([p, p, t, v, v, q], 0),
        ],
        0,
    )  # [3, 6, n, H, W]
    return table.gather(1, i.unsqueeze(0).unsqueeze(0).expand(3, 1, *i.shape)).squeeze(1).permute(1, 0, 2, 3)


# -- random helpers (CPU generator, small tensors) ---------------------------------------------
def _rand(shape, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape if isinstance(shape, tuple) else (shape,), generator=g)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * _rand(n, g)


def _where(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Indices of a CPU mask, on `device` (computed on the CPU: no device-to-host sync)."""
    return torch.nonzero(mask).flatten().to(device)
