"""Cross-validation of a MIL model: splits grouped by case, one `train_fold` per fold."""
from __future__ import annotations

from typing import Callable, Collection, Iterator, Sequence

import numpy as np
import torch

from histstore.devices import resolve_device
from histstore.errors import InvalidInput
from histstore.mil.bags import PackedBags, is_bag_source, pack_bags
from histstore.mil.results import EpochRecord, FoldResult
from histstore.mil.splits import Splits, make_splits
from histstore.mil.train_config import TrainConfig
from histstore.mil.trainer import check_targets, train_fold


def fold_seed(seed: int, fold: int) -> int:
    """Distinct, reproducible seed for each (run seed, fold)."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


def run_cv(
    bags: Sequence | PackedBags,  # or any bag source (mil/bag_source.py)
    targets: Sequence,
    case_ids: Sequence,
    config: TrainConfig = TrainConfig(),
    *,
    n_folds: int = 5,
    seed: int = 0,
    val_fraction: float = 1 / 9,
    device: str | torch.device = "cpu",
    splits: Splits | None = None,
    skip_folds: Collection[int] = (),
    progress_cb: Callable[[EpochRecord], None] | None = None,
) -> Iterator[FoldResult]:
    """Cross-validate: make_splits (grouped by case, stratified), then train_fold per fold.

    Inputs are validated and bags packed when called (bad input raises here, before any
    fold); folds are trained lazily as the returned iterator is consumed, so the caller can
    store each fold as it finishes. skip_folds: folds already stored (resume). To store the
    splits before training, call make_splits yourself and pass splits=.
    """
    dev = resolve_device(device)
    if splits is None:
        splits = make_splits(case_ids, targets, n_folds, seed=seed, val_fraction=val_fraction,
                             task=config.task)
    if len(splits.item_case) != len(targets) or len(targets) != len(bags):
        raise InvalidInput(f"{len(bags)} bags, {len(targets)} targets and "
                           f"{len(splits.item_case)} split items differ")
    check_targets(targets, len(targets), config.task)
    packed = bags if is_bag_source(bags) else pack_bags(bags, dev, config.feature_dtype)

    def folds() -> Iterator[FoldResult]:
        for fold in range(splits.n_folds):
            if fold in skip_folds:
                continue
            tr, va, te = splits.indices(fold)
            yield train_fold(packed, targets, tr, va, te, config, seed=fold_seed(seed, fold),
                             device=dev, progress_cb=progress_cb, fold=fold)

    return folds()
