"""Metrics against sklearn / scipy, degenerate folds, aggregation across folds."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from histstore.mil.metrics import aggregate, classification_metrics, regression_metrics


def test_binary_against_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    p = np.clip(0.3 * y + rng.random(50) * 0.7, 0, 1)
    m = classification_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["n"] == 50 and not m.notes
    # [n, 2] probabilities give the same numbers
    assert classification_metrics(y, np.stack([1 - p, p], 1)).values == m.values


def test_multiclass_against_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 60)
    logits = rng.standard_normal((60, 3)) + np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, p)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert m["f1"] == pytest.approx(skm.f1_score(y, p.argmax(1), average="macro"))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))


def test_single_class_fold_gives_nan_auc_with_a_note():
    m = classification_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert math.isnan(m["auc"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert any("ROC-AUC undefined" in n for n in m.notes)
    m0 = classification_metrics([0, 0], [0.1, 0.2])
    assert math.isnan(m0["f1"]) and m0["accuracy"] == 1.0


def test_empty_subset():
    m = classification_metrics([], np.zeros(0))
    assert m["n"] == 0 and math.isnan(m["auc"])


def test_regression_against_scipy():
    rng = np.random.default_rng(2)
    y = rng.standard_normal(40)
    p = y + 0.5 * rng.standard_normal(40)
    m = regression_metrics(y, p)
    assert m["mse"] == pytest.approx(np.mean((y - p) ** 2))
    assert m["pearson"] == pytest.approx(stats.pearsonr(y, p)[0])
    assert m["spearman"] == pytest.approx(stats.spearmanr(y, p)[0])
    const = regression_metrics(y, np.zeros(40))
    assert math.isnan(const["pearson"]) and const.notes


def test_aggregate_mean_sd_skips_nan():
    folds = [{"auc": 0.8, "accuracy": 0.7}, {"auc": math.nan, "accuracy": 0.9},
             {"auc": 0.9, "accuracy": 0.8}]
    agg = aggregate(folds)
    assert agg["auc"].mean == pytest.approx(0.85) and agg["auc"].n == 2
    assert agg["auc"].sd == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert agg["accuracy"].mean == pytest.approx(0.8) and agg["accuracy"].n == 3
    assert str(agg["accuracy"]) == "0.800 +- 0.100"
