"""What training one fold returns: per-epoch records, per-bag predictions and the fold's
result (selected epoch, weights, metrics, test attention)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from histstore.mil.metrics import Metrics
from histstore.mil.standardize import FeatureStats
from histstore.mil.train_config import TrainConfig


@dataclass
class EpochRecord:
    fold: int | None
    epoch: int                  # 1-based
    train_loss: float
    val_loss: float             # training objective on val bags (z-scored targets for
                                # regression); NaN without a validation subset
    val_metrics: dict[str, float]
    train_seconds: float        # the training pass only
    eval_seconds: float         # the validation pass
    improved: bool              # best so far by the selection rule


@dataclass
class Predictions:
    """One row per bag of a subset. score: positive-class probability (binary), the predicted
    class's probability (multi-class), the prediction (regression). pred: predicted class, or
    the predicted value. probs [n, C] for classification."""

    index: np.ndarray           # bag positions in the input list
    target: np.ndarray
    score: np.ndarray
    pred: np.ndarray
    probs: np.ndarray | None = None


@dataclass
class FoldResult:
    fold: int | None
    seed: int
    config: TrainConfig
    n_outputs: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    best_epoch: int                     # 1-based; the weights returned are this epoch's
    history: list[EpochRecord]
    val: Predictions
    test: Predictions
    test_attention: dict[int, np.ndarray]   # bag position -> [N_i] float32
    metrics: dict[str, Metrics]         # {"val": ..., "test": ...}
    model_spec: dict[str, Any]          # build_model_from_spec(model_spec) rebuilds it
    model_state: dict[str, Tensor]      # selected weights, on the CPU
    target_scale: tuple[float, float] | None  # regression (mean, sd) the model was fit on
    attention_kind: str
    seconds: float
    notes: list[str] = field(default_factory=list)
    feature_stats: FeatureStats | None = None  # training-fold standardisation, if used
    threshold: float | None = None  # binary: positive when probability >= this; else argmax

    @property
    def seconds_per_epoch(self) -> float:
        return float(np.mean([h.train_seconds for h in self.history])) if self.history else 0.0

    def prediction_rows(self) -> list[dict[str, Any]]:
        """{"fold", "bag", "subset", "target", "score", "pred"} for val and test bags."""
        rows = []
        for subset, p in (("val", self.val), ("test", self.test)):
            for i in range(len(p.index)):
                rows.append({"fold": self.fold, "bag": int(p.index[i]), "subset": subset,
                             "target": p.target[i].item(), "score": float(p.score[i]),
                             "pred": p.pred[i].item()})
        return rows
