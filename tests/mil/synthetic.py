"""Tiny synthetic MIL cohorts for tests (not library code).

`planted_cohort`: background tiles ~ N(0, I); a positive ("tumour") bag also holds a few
tumour tiles ~ N(mu, I), mu = `shift` on the first `n_signal` dims. The planted mask says which
tiles are tumour, so tests can check where attention goes.
`shifted_cohort` (regression): every tile of bag b is shifted by y_b along one direction; the
target is y_b.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Cohort:
    bags: list[torch.Tensor]       # [N_i, D] float32
    targets: np.ndarray            # [n] int (classification) or float (regression)
    case_ids: list[str]            # one per bag; some cases hold two bags
    planted: list[np.ndarray]      # [N_i] bool, tumour tiles (all False for regression)


def _cases(n_bags: int, rng: np.random.Generator) -> list[str]:
    """Cases of one or two consecutive bags."""
    out, case = [], 0
    while len(out) < n_bags:
        out += [f"case-{case:03d}"] * int(rng.integers(1, 3))
        case += 1
    return out[:n_bags]


def planted_cohort(n_bags: int = 80, n_range=(20, 60), dim: int = 32, n_tumour=(3, 6),
                   shift: float = 2.0, n_signal: int = 8, seed: int = 0) -> Cohort:
    rng = np.random.default_rng(seed)
    case_ids = _cases(n_bags, rng)
    # label per case, so both slides of a case agree (alternating keeps classes balanced)
    case_label = {c: i % 2 for i, c in enumerate(dict.fromkeys(case_ids))}
    bags, targets, planted = [], [], []
    for c in case_ids:
        n = int(rng.integers(n_range[0], n_range[1] + 1))
        x = rng.standard_normal((n, dim)).astype(np.float32)
        mask = np.zeros(n, dtype=bool)
        if case_label[c]:
            k = min(n, int(rng.integers(n_tumour[0], n_tumour[1] + 1)))
            rows = rng.choice(n, size=k, replace=False)
            x[rows, :n_signal] += shift
            mask[rows] = True
        bags.append(torch.from_numpy(x))
        targets.append(case_label[c])
        planted.append(mask)
    return Cohort(bags, np.array(targets, dtype=np.int64), case_ids, planted)


def shifted_cohort(n_bags: int = 60, n_range=(10, 40), dim: int = 16, strength: float = 1.0,
                   seed: int = 0) -> Cohort:
    rng = np.random.default_rng(seed)
    case_ids = _cases(n_bags, rng)
    direction = np.zeros(dim, dtype=np.float32)
    direction[:4] = 0.5  # unit vector
    bags, targets = [], []
    for _ in case_ids:
        y = float(rng.standard_normal())
        n = int(rng.integers(n_range[0], n_range[1] + 1))
        x = rng.standard_normal((n, dim)).astype(np.float32) + strength * y * direction
        bags.append(torch.from_numpy(x))
        targets.append(y)
    planted = [np.zeros(b.shape[0], dtype=bool) for b in bags]
    return Cohort(bags, np.array(targets), case_ids, planted)
