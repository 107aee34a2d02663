"""All bags of a cohort as one device-resident tensor: features [T, D] + offsets.

Packing once removes the per-step host->device copy and the per-bag Python/data-loader work
of a plain loop: one bag is a view (`bag(i)`), a mini-batch of bags is one `index_select`
with the bag id of every tile computed on the device (`batch(idx)`), ready for
`MILModel.forward_segments`. PackedBags is the resident mode of a bag source (the interface
is described in mil/bag_source.py, which also has the streamed mode); `SubsetBags` is some
bags of any source, renumbered, without a copy.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from histstore.devices import resolve_device
from histstore.errors import InvalidInput

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PackedBags:
    """n bags of D-dim tiles: `features` [T, D] on one device, `lengths` [n], `offsets`
    [n + 1] (host numpy; bag i is rows offsets[i]:offsets[i+1])."""

    def __init__(self, features: Tensor, lengths: np.ndarray, names: Sequence[str] | None = None):
        self.features = features
        self.names = list(names) if names is not None else None
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        if self.offsets[-1] != features.shape[0]:
            raise ValueError("lengths do not add up to the number of tiles")
        self._lengths_t = torch.as_tensor(self.lengths, device=features.device)
        self._starts_t = torch.as_tensor(self.offsets[:-1], device=features.device)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def dtype(self) -> torch.dtype:
        return self.features.dtype

    def batches(self, parts: Iterable[Sequence[int]]) -> Iterator[tuple[Tensor, Tensor | None]]:
        """self.batch(p) for each part, in order (all resident: nothing to read ahead)."""
        for p in parts:
            yield self.batch(p)

    def subset(self, positions: Sequence[int]) -> "SubsetBags":
        return SubsetBags(self, positions)

    def bag(self, i: int) -> Tensor:
        """Bag i, a view [N_i, D]."""
        return self.features[self.offsets[i]:self.offsets[i + 1]]

    def batch(self, idx: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor | None]:
        """Bags idx (in that order) -> (x [T_b, D], seg [T_b] bag position in idx), or
        (view, None) for one bag."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 1:
            return self.bag(int(idx[0])), None
        dev = self.features.device
        idx_t = torch.as_tensor(idx, device=dev)
        lens = self._lengths_t[idx_t]
        total = int(self.lengths[idx].sum())  # from the host copy: no device sync
        seg = torch.repeat_interleave(torch.arange(len(idx), device=dev), lens,
                                      output_size=total)
        start_in_batch = torch.cumsum(lens, 0) - lens
        rows = self._starts_t[idx_t][seg] + torch.arange(total, device=dev) - start_in_batch[seg]
        return self.features.index_select(0, rows), seg


class SubsetBags:
    """Bags `positions` of a source (packed or streamed), renumbered 0..k-1 - e.g. one gene's
    slides out of the cohort's bags, which are read and packed once for every gene."""

    def __init__(self, source, positions: Sequence[int]):
        self.source = source
        self.positions = np.asarray(positions, dtype=np.int64)
        if len(self.positions) and (self.positions.min() < 0 or self.positions.max() >= len(source)):
            raise InvalidInput("subset positions out of range")
        self.lengths = source.lengths[self.positions]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        names = getattr(source, "names", None)
        self.names = [names[i] for i in self.positions] if names is not None else None

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def dim(self) -> int:
        return self.source.dim

    @property
    def device(self) -> torch.device:
        return self.source.device

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    def _map(self, idx) -> np.ndarray:
        return self.positions[np.asarray(idx, dtype=np.int64)]

    def bag(self, i: int) -> Tensor:
        return self.source.bag(int(self.positions[i]))

    def batch(self, idx) -> tuple[Tensor, Tensor | None]:
        return self.source.batch(self._map(idx))

    def batches(self, parts: Iterable[Sequence[int]]) -> Iterator[tuple[Tensor, Tensor | None]]:
        return self.source.batches(self._map(p) for p in parts)

    def subset(self, positions: Sequence[int]) -> "SubsetBags":
        return SubsetBags(self.source, self._map(positions))


def is_bag_source(bags) -> bool:
    """A bag source (PackedBags, StreamedBags, SubsetBags, or a wrapper of one), not a list of
    arrays to pack."""
    return hasattr(bags, "batch") and hasattr(bags, "lengths")


def iter_batches(bags, parts: Iterable[Sequence[int]]) -> Iterator[tuple[Tensor, Tensor | None]]:
    """bags.batch(p) for each part, in order: through `batches` (a streamed source reads ahead)
    where the source has it, else one `batch` at a time (a wrapper that only has `batch`)."""
    if hasattr(bags, "batches"):
        return bags.batches(parts)
    return (bags.batch(p) for p in parts)


def pack_bags(bags: Sequence, device: str | torch.device = "cpu",
              dtype: str = "float32") -> PackedBags:
    """Copy bags (tensors or arrays [N_i, D], N_i >= 1, one D) into one [T, D] tensor on
    `device`, stored as `dtype` ("float32", "float16" halves memory, "bfloat16")."""
    if dtype not in DTYPES:
        raise InvalidInput(f"unknown feature dtype {dtype!r}: {', '.join(DTYPES)}")
    if len(bags) == 0:
        raise InvalidInput("no bags to train on")
    shapes = [tuple(b.shape) for b in bags]
    bad = [i for i, s in enumerate(shapes) if len(s) != 2 or s[0] < 1]
    if bad:
        raise InvalidInput(f"bag {bad[0]} has shape {shapes[bad[0]]}: expected [N >= 1, D] "
                           f"({len(bad)} such bags)")
    dims = {s[1] for s in shapes}
    if len(dims) != 1:
        raise InvalidInput(f"bags have different feature dims {sorted(dims)}")
    lengths = np.array([s[0] for s in shapes], dtype=np.int64)
    dev = resolve_device(device)
    # preallocate and copy bag by bag: peak memory is the packed tensor plus one bag
    features = torch.empty((int(lengths.sum()), dims.pop()), dtype=DTYPES[dtype], device=dev)
    start = 0
    for b, n in zip(bags, lengths):
        features[start:start + n].copy_(torch.as_tensor(b))
        start += n
    return PackedBags(features, lengths)
