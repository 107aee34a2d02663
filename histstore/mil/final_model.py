"""A run's final model: after cross-validation, one model fit on all of the run's bags.

Cross-validation estimates how well the method does; the model one applies to new slides is
fit on every slide (`histstore train --final`). Early stopping still needs held-out bags, so
about FINAL_VAL_FRACTION of the cases (grouped by case, stratified like the CV folds) are the
validation bags and the rest train; the epoch is selected on them exactly as in a fold, and
the decision threshold is chosen by the run's rule (mil/thresholds.py). There are no test
bags: the CV folds are the run's estimate.

Seeds follow the CV folds: the split comes from `make_splits(seed=run seed)` with
1 / FINAL_VAL_FRACTION folds (its fold 0 is the validation part), and the model is trained
with `fold_seed(run seed, n_folds)`, the seed a fold numbered after the last CV fold would
get, so the final model is reproducible and distinct from every fold model.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from histstore.mil.cross_validation import fold_seed
from histstore.mil.results import EpochRecord, FoldResult
from histstore.mil.splits import make_splits
from histstore.mil.train_config import TrainConfig
from histstore.mil.trainer import train_fold

FINAL_VAL_FRACTION = 0.1
FINAL_CHECKPOINT = "final"  # checkpoints/runs/<run>/final.pt


def final_split(case_ids: Sequence, labels: Sequence, *, seed: int, task: str,
                val_fraction: float = FINAL_VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) over all items, grouped by case and stratified by label;
    val_fraction 0: every item trains (the last epoch is kept)."""
    n = len(case_ids)
    if val_fraction <= 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    n_cases = len(set(map(str, case_ids)))
    k = max(2, min(int(round(1 / val_fraction)), n_cases))
    splits = make_splits(case_ids, labels, k, seed=seed, val_fraction=0.0, task=task)
    train, _, val = splits.indices(0)
    return train, val


def fit_final(bags, targets: Sequence, case_ids: Sequence, labels: Sequence, config: TrainConfig, *,
              seed: int, n_folds: int, device: str | torch.device = "cpu",
              val_fraction: float = FINAL_VAL_FRACTION,
              progress_cb: Callable[[EpochRecord], None] | None = None) -> FoldResult:
    """Fit the final model on every bag of `bags` (a bag source, as for run_cv); labels:
    class names (classification) or the targets (regression), for stratification. The
    result's fold is None and its test part empty."""
    train, val = final_split(case_ids, labels, seed=seed, task=config.task, val_fraction=val_fraction)
    return train_fold(bags, targets, train, val, np.zeros(0, dtype=np.int64), config,
                      seed=fold_seed(seed, n_folds), device=device, progress_cb=progress_cb, fold=None,
                      allow_no_test=True)
