"""All bags of a cohort as one device-resident tensor: features [T, D] + offsets.

Packing once removes the per-step host->device copy and the per-bag Python/data-loader work
of a plain loop: one bag is a view (`bag(i)`), a mini-batch of bags is one `index_select`
with the bag id of every tile computed on the device (`batch(idx)`), ready for
`MILModel.forward_segments`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from histstore.devices import resolve_device
from histstore.errors import InvalidInput

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PackedBags:
    """n bags of D-dim tiles: `features` [T, D] on one device, `lengths` [n], `offsets`
    [n + 1] (host numpy; bag i is rows offsets[i]:offsets[i+1])."""

    def __init__(self, features: Tensor, lengths: np.ndarray):
        self.features = features
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
