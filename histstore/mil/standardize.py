"""Feature standardisation with training-fold statistics.

Features made elsewhere (CLAM, TRIDENT, a foundation model, a public MIL data set) come on
arbitrary scales: raw counts in the hundreds next to features near zero. A MIL model trained
with one learning rate on such inputs is dominated by the large features and learns the others
slowly or not at all. So each fold standardises every feature, x' = (x - mean) / std, with the
mean and standard deviation of the tiles of its TRAINING bags only (validation and test bags
never shape the statistics), and the fold's checkpoint carries them so that prediction applies
the same transform (`FeatureStats.to_checkpoint`, key CHECKPOINT_KEY).

The statistics come from one streaming pass over the training bags (`fit_feature_stats`): per
bag count, mean and sum of squared deviations, merged in float64 (Chan et al.'s pairwise
update, exact and stable for large offsets), so no bag is copied or concatenated. The
transform runs per batch on the device (`StandardizedBags` wraps any bag source with
`bag(i)` / `batch(idx)`), so a float16 source stays float16 in memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from histstore.mil.bags import iter_batches

CHECKPOINT_KEY = "feature_standardization"
# a feature whose training sd is below this (relative to its scale) is constant: it is
# centred and left unscaled (sd 1) instead of being blown up
MIN_RELATIVE_SD = 1e-6


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature mean and sd [D] (float32 tensors, CPU) and the tiles they came from."""

    mean: Tensor
    std: Tensor
    n_tiles: int

    def to_checkpoint(self) -> dict[str, Any]:
        """What a fold's checkpoint stores under CHECKPOINT_KEY (loads with weights_only)."""
        return {"mean": self.mean.clone(), "std": self.std.clone(), "n_tiles": int(self.n_tiles),
                "fit_on": "train", "transform": "(x - mean) / std, per feature, before the model"}

    @classmethod
    def from_checkpoint(cls, d: dict[str, Any]) -> FeatureStats:
        return cls(torch.as_tensor(d["mean"], dtype=torch.float32),
                   torch.as_tensor(d["std"], dtype=torch.float32), int(d["n_tiles"]))

    def apply(self, x: Tensor) -> Tensor:
        """(x - mean) / std as float32, on x's device."""
        mean = self.mean.to(x.device)
        inv = (1.0 / self.std).to(x.device)
        return (x.float() - mean) * inv


@torch.no_grad()
def fit_feature_stats(bags, idx: Sequence[int]) -> FeatureStats:
    """Mean and sd of every feature over all tiles of bags idx, in one pass over the bags.

    bags: a bag source (mil/bag_source.py; a streamed one reads the bags ahead).
    """
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) == 0:
        raise ValueError("no training bags to standardise with")
    n_total = 0
    mean = m2 = None
    for x, _ in iter_batches(bags, [[int(i)] for i in idx.tolist()]):
        x = x.double()
        n = x.shape[0]
        mu = x.mean(0)
        dev = ((x - mu) ** 2).sum(0)
        if mean is None:
            n_total, mean, m2 = n, mu, dev
            continue
        delta = mu - mean
        total = n_total + n
        mean = mean + delta * (n / total)
        m2 = m2 + dev + delta ** 2 * (n_total * n / total)
        n_total = total
    var = m2 / n_total  # population sd over training tiles
    sd = var.sqrt()
    tiny = sd <= MIN_RELATIVE_SD * torch.clamp(mean.abs(), min=1.0)
    sd = torch.where(tiny, torch.ones_like(sd), sd)
    return FeatureStats(mean.float().cpu(), sd.float().cpu(), int(n_total))


class StandardizedBags:
    """A bag source whose bags come out standardised (float32), computed per bag/batch on
    the device. Same interface as the source: len, lengths, offsets, dim, device, bag(i),
    batch(idx), batches(parts) (the source's read-ahead kept)."""

    def __init__(self, source, stats: FeatureStats):
        self.source = source
        self.stats = stats
        self._mean = stats.mean.to(source.device)
        self._inv_std = (1.0 / stats.std).to(source.device)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def lengths(self) -> np.ndarray:
        return self.source.lengths

    @property
    def offsets(self) -> np.ndarray:
        return self.source.offsets

    @property
    def dim(self) -> int:
        return self.source.dim

    @property
    def device(self) -> torch.device:
        return self.source.device

    def _apply(self, x: Tensor) -> Tensor:
        return (x.float() - self._mean) * self._inv_std

    def bag(self, i: int) -> Tensor:
        return self._apply(self.source.bag(i))

    def batch(self, idx) -> tuple[Tensor, Tensor | None]:
        x, seg = self.source.batch(idx)
        return self._apply(x), seg

    def batches(self, parts) -> Iterator[tuple[Tensor, Tensor | None]]:
        for x, seg in iter_batches(self.source, parts):
            yield self._apply(x), seg
