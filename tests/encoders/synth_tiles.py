"""Tiny H&E-like tiles for tests: concentration maps (nuclei, stroma, background) rendered with
a stain matrix by Beer-Lambert, I = Io * exp(-HE @ C). Deterministic for a given seed."""
from __future__ import annotations

import numpy as np

HE_REF = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])


def concentrations(size: int = 64, seed: int = 0, n_nuclei: int = 12, background: float = 0.25) -> np.ndarray:
    """[2, size, size] H and E concentrations: stroma everywhere but a white corner region,
    nuclei as disks of strong hematoxylin."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    # smooth stroma texture for eosin
    e = 0.45 + 0.25 * np.sin(xx / (3 + 3 * rng.random()) + rng.random() * 6) * np.cos(yy / (4 + 3 * rng.random()))
    e += 0.1 * rng.random((size, size))
    h = 0.08 + 0.04 * rng.random((size, size))
    for _ in range(n_nuclei):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(size / 20, size / 9)
        d = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        h[d] = rng.uniform(1.3, 1.9) + 0.1 * rng.random(d.sum())
        e[d] = rng.uniform(0.05, 0.2)
    # background: a white band (no stain) on one side
    bg = xx + yy < background * 2 * size
    h[bg] = 0.0
    e[bg] = 0.0
    return np.stack([h, e]).clip(0, None)


def render(conc: np.ndarray, he: np.ndarray = HE_REF, Io: float = 240.0, noise: float = 1.0, seed: int = 0) -> np.ndarray:
    """[2, H, W] concentrations -> uint8 [H, W, 3] RGB."""
    rng = np.random.default_rng(seed)
    od = np.einsum("cs,shw->hwc", he, conc)
    img = Io * np.exp(-od) + noise * rng.standard_normal(od.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def he_tile(size: int = 64, seed: int = 0, he: np.ndarray = HE_REF, scale=(1.0, 1.0), **kw) -> np.ndarray:
    c = concentrations(size, seed, **kw) * np.asarray(scale, dtype=float).reshape(2, 1, 1)
    return render(c, he, seed=seed)


def perturbed_stains(seed: int, amount: float = 0.25) -> np.ndarray:
    """The reference stain vectors tilted at random (unit columns, positive)."""
    rng = np.random.default_rng(seed)
    he = HE_REF * (1 + amount * rng.uniform(-1, 1, HE_REF.shape))
    return he / np.linalg.norm(he, axis=0, keepdims=True)
