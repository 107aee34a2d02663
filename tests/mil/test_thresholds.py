"""Decision thresholds chosen on validation or training bags, never on test bags."""
from __future__ import annotations

import numpy as np
import pytest

from histstore.errors import InvalidInput
from histstore.mil.metrics import classification_metrics
from histstore.mil.splits import make_splits
from histstore.mil.thresholds import choose_threshold
from histstore.mil.train_config import TrainConfig
from histstore.mil.trainer import train_fold

from .synthetic import planted_cohort


def _accuracy(y, s, t):
    return np.mean((s >= t) == y.astype(bool))


def test_threshold_maximises_accuracy_nearest_one_half():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4])  # ranked right, all below 0.5
    t = choose_threshold(y, s)
    assert t == pytest.approx(0.25) and _accuracy(y, s, t) == 1.0
    # when 0.5 is among the best cuts it stays
    assert choose_threshold([0, 1], [0.2, 0.9]) == 0.5
    # one class, or nothing: no information, 0.5
    assert choose_threshold([1, 1, 1], [0.1, 0.2, 0.3]) == 0.5
    assert choose_threshold([], []) == 0.5
    rng = np.random.default_rng(0)
    for _ in range(20):  # against brute force on every cut
        y = rng.integers(0, 2, 15)
        s = np.round(rng.random(15), 2)
        t = choose_threshold(y, s)
        grid = np.linspace(-0.01, 1.01, 2041)
        assert _accuracy(y, s, t) == pytest.approx(max(_accuracy(y, s, g) for g in grid))


def test_metrics_at_a_threshold():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.35, 0.45])
    assert classification_metrics(y, p)["accuracy"] == 0.5
    m = classification_metrics(y, p, threshold=0.32)
    assert m["accuracy"] == 1.0 and m["auc"] == classification_metrics(y, p)["auc"]


@pytest.mark.parametrize("rule", ["val", "train"])
def test_fold_threshold_comes_from_its_own_bags(rule):
    c = planted_cohort(n_bags=48, seed=2)
    tr, va, te = make_splits(c.case_ids, c.targets, 4, seed=0).indices(0)
    cfg = TrainConfig(epochs=6, lr=1e-3, decision_threshold=rule, model_cfg={"hidden_dim": 16, "attn_dim": 8})
    r = train_fold(c.bags, c.targets, tr, va, te, cfg, seed=0)
    idx = va if rule == "val" else tr
    src = r.val if rule == "val" else None
    if src is not None:  # the validation cut is the best one on the validation predictions
        assert r.threshold == choose_threshold(c.targets[idx], src.score)
    np.testing.assert_array_equal(r.test.pred, (r.test.score >= r.threshold).astype(int))
    assert r.metrics["test"]["accuracy"] == pytest.approx(np.mean(r.test.pred == r.test.target))
    # test labels play no part: flipping them changes neither threshold nor predictions
    flipped = c.targets.copy()
    flipped[te] = 1 - flipped[te]
    f = train_fold(c.bags, flipped, tr, va, te, cfg, seed=0)
    assert f.threshold == r.threshold
    np.testing.assert_array_equal(f.test.pred, r.test.pred)


def test_default_is_the_argmax_and_regression_refuses_a_threshold():
    c = planted_cohort(n_bags=24, seed=3)
    tr, va, te = make_splits(c.case_ids, c.targets, 3, seed=0).indices(0)
    r = train_fold(c.bags, c.targets, tr, va, te, TrainConfig(epochs=1, model_cfg={"hidden_dim": 8, "attn_dim": 4}))
    assert r.threshold == 0.5
    np.testing.assert_array_equal(r.test.pred, r.test.probs.argmax(1))
    with pytest.raises(InvalidInput, match="classification"):
        TrainConfig(task="regression", decision_threshold="val")
    with pytest.raises(InvalidInput, match="decision_threshold"):
        TrainConfig(decision_threshold="0.3")
