"""Slide-level metrics per fold, and their mean +- sd across folds.

Classification (HistCode reports accuracy and ROC-AUC): auc, accuracy, balanced_accuracy,
f1. Binary: `scores` is the positive-class probability [n] (or probabilities [n, 2]),
predictions are score >= 0.5 (argmax), f1 is the positive class's. Multi-class: `scores` is
[n, C] probabilities; auc is macro one-vs-rest, f1 is macro.
Regression: mse, pearson, spearman.

Degenerate folds never raise: a metric that is undefined (one class in the fold's truth,
constant predictions) is NaN and `Metrics.notes` says why. `aggregate` ignores NaN and says
how many folds each mean rests on.

numpy / sklearn / scipy only (no torch).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
from scipy import stats
from sklearn import metrics as skm

CLASSIFICATION_METRICS = ("auc", "accuracy", "balanced_accuracy", "f1")
REGRESSION_METRICS = ("mse", "pearson", "spearman")


@dataclass
class Metrics:
    values: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> float:
        return self.values[name]


@dataclass(frozen=True)
class Summary:
    mean: float
    sd: float      # sample sd (ddof=1) over the folds where the metric is defined
    n: int         # folds where it is defined

    def __str__(self) -> str:
        return f"{self.mean:.3f} +- {self.sd:.3f}" + ("" if self.n else " (undefined)")


def classification_metrics(y_true, scores, n_classes: int | None = None,
                           threshold: float | None = None) -> Metrics:
    """y_true [n] int in 0..C-1; scores: [n] positive-class probability (binary) or
    [n, C] class probabilities. threshold (binary only): predict positive when the
    positive-class probability is >= threshold instead of the argmax (0.5)."""
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = np.stack([1.0 - s, s], axis=1)
    c = n_classes or s.shape[1]
    if s.shape != (len(y), c):
        raise ValueError(f"scores shape {s.shape} does not match {len(y)} labels, {c} classes")
    notes: list[str] = []
    values = {"n": float(len(y))}
    if len(y) == 0:
        notes.append("no samples")
        return Metrics({**values, **{m: math.nan for m in CLASSIFICATION_METRICS}}, notes)
    pred = s.argmax(1) if threshold is None or c != 2 else (s[:, 1] >= threshold).astype(np.int64)
    present = np.unique(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values["accuracy"] = float(skm.accuracy_score(y, pred))
        values["balanced_accuracy"] = float(skm.balanced_accuracy_score(y, pred))
        if c == 2:
            values["f1"] = float(skm.f1_score(y, pred, pos_label=1, average="binary",
                                              zero_division=np.nan))
        else:
            values["f1"] = float(skm.f1_score(y, pred, labels=np.arange(c), average="macro",
                                              zero_division=np.nan))
        if len(present) < c:
            values["auc"] = math.nan
            notes.append(f"classes present: {present.tolist()} of {c}: ROC-AUC undefined")
        elif c == 2:
            values["auc"] = float(skm.roc_auc_score(y, s[:, 1]))
        else:
            p = s / s.sum(1, keepdims=True)
            values["auc"] = float(skm.roc_auc_score(y, p, multi_class="ovr", average="macro",
                                                    labels=np.arange(c)))
    if math.isnan(values["f1"]):
        notes.append("F1 undefined: no positive labels and no positive predictions")
    return Metrics(values, notes)


def regression_metrics(y_true, y_pred) -> Metrics:
    """y_true, y_pred [n] floats."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    notes: list[str] = []
    values = {"n": float(len(y)), "mse": float(np.mean((y - p) ** 2)) if len(y) else math.nan}
    if len(y) < 2 or np.ptp(y) == 0 or np.ptp(p) == 0:
        values["pearson"] = values["spearman"] = math.nan
        notes.append("correlation undefined: fewer than 2 samples or constant values")
    else:
        values["pearson"] = float(stats.pearsonr(y, p)[0])
        values["spearman"] = float(stats.spearmanr(y, p)[0])
    return Metrics(values, notes)


def aggregate(per_fold: Iterable[Metrics | Mapping[str, float]]) -> dict[str, Summary]:
    """Mean +- sd (ddof=1) of each metric across folds, NaN folds left out."""
    rows = [m.values if isinstance(m, Metrics) else dict(m) for m in per_fold]
    names = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "n"]
    out = {}
    for name in names:
        v = np.array([r.get(name, math.nan) for r in rows], dtype=np.float64)
        v = v[~np.isnan(v)]
        mean = float(v.mean()) if len(v) else math.nan
        sd = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        out[name] = Summary(mean, sd, int(len(v)))
    return out
