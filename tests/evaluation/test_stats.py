"""The shared statistics against known values, slow references written from the papers'
definitions, and each other (DeLong against the paired bootstrap)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from histstore.evaluation import stats
from tests.evaluation.delong_reference import delong_slow


def test_midranks_share_tied_ranks():
    np.testing.assert_array_equal(stats.midranks([3, 1, 3, 2]), [3.5, 1, 3.5, 2])
    np.testing.assert_array_equal(stats.midranks([5, 5, 5]), [2, 2, 2])
    rows = np.array([[0.2, 0.1, 0.2, 0.9], [1, 1, 0, 0]])
    np.testing.assert_array_equal(stats.midranks(rows), [[2.5, 1, 2.5, 4], [3.5, 3.5, 1.5, 1.5]])
    x = np.random.default_rng(0).integers(0, 5, 200)
    from scipy.stats import rankdata
    np.testing.assert_allclose(stats.midranks(x), rankdata(x))


def test_auc_known_values_and_ties():
    assert stats.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert stats.auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert math.isnan(stats.auc([1, 1], [0.2, 0.3]))
    rng = np.random.default_rng(1)
    y, s = rng.integers(0, 2, 300), np.round(rng.random(300), 2)  # many ties
    assert stats.auc(y, s) == pytest.approx(roc_auc_score(y, s))


@pytest.mark.parametrize("m,n,ties", [(7, 5, False), (12, 20, True), (30, 9, True)])
def test_fast_delong_equals_the_pairwise_definition(m, n, ties):
    rng = np.random.default_rng(m * 100 + n)
    y = np.r_[np.ones(m), np.zeros(n)].astype(int)
    a = y * 0.8 + rng.normal(0, 1, m + n)
    b = 0.6 * a + rng.normal(0, 0.8, m + n)
    c = rng.random(m + n)
    scores = np.stack([a, b, c])
    if ties:
        scores = np.round(scores, 1)
    aucs, cov = stats.delong_auc_cov(y, scores)
    ref_aucs, ref_cov = delong_slow(y, scores)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)
    np.testing.assert_allclose(aucs, [roc_auc_score(y, s) for s in scores], atol=1e-12)


def test_delong_test_by_hand():
    """z = (A1 - A2) / sqrt(S11 + S22 - 2 S12), p two-sided normal, on a tiny worked case."""
    y = [1, 1, 1, 0, 0, 0]
    a = [0.9, 0.8, 0.4, 0.5, 0.2, 0.1]
    b = [0.7, 0.3, 0.6, 0.65, 0.4, 0.2]
    aucs, cov = delong_slow(y, np.stack([a, b]))
    t = stats.delong_test(y, a, b)
    assert (t.auc_a, t.auc_b) == pytest.approx((8 / 9, 6 / 9))
    se = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert t.se == pytest.approx(se) and t.z == pytest.approx((8 / 9 - 6 / 9) / se)
    assert t.p == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(abs(t.z) / math.sqrt(2)))))
    same = stats.delong_test(y, a, a)
    assert same.diff == 0 and same.p == 1.0


def test_delong_agrees_with_the_paired_bootstrap():
    rng = np.random.default_rng(3)
    m = n = 120
    y = np.r_[np.ones(m), np.zeros(n)].astype(int)
    a = y * 1.2 + rng.normal(0, 1, m + n)
    b = 0.5 * a + y * 0.2 + rng.normal(0, 1, m + n)
    d = stats.delong_test(y, a, b)
    ids = np.arange(m + n)  # every item its own cluster, stratified by class
    boot = stats.paired_bootstrap_diff(y, a, b, ids, y, n_boot=2000, seed=0)
    assert boot.diff == pytest.approx(d.diff)
    assert boot.se == pytest.approx(d.se, rel=0.15)
    assert boot.ci_low == pytest.approx(d.ci_low, abs=0.03) and boot.ci_high == pytest.approx(d.ci_high, abs=0.03)
    assert (boot.p < 0.05) == (d.p < 0.05)


def test_delong_size_under_the_null():
    """Two scores with the same true AUC: about 5 % of tests reject at 0.05."""
    rng = np.random.default_rng(7)
    rejections = 0
    trials = 400
    for _ in range(trials):
        y = np.r_[np.ones(30), np.zeros(30)].astype(int)
        base = y * 0.7 + rng.normal(0, 1, 60)
        a, b = base + rng.normal(0, 0.7, 60), base + rng.normal(0, 0.7, 60)
        rejections += stats.delong_test(y, a, b).p < 0.05
    assert 0.02 <= rejections / trials <= 0.09


def test_cluster_bootstrap_resamples_whole_cases_within_strata():
    clusters = np.array(["a", "a", "b", "c", "c", "c", "d"])
    strata = np.array([1, 1, 1, 0, 0, 0, 0])
    w = stats.cluster_weights(clusters, strata, n_boot=500, seed=1)
    assert w.shape == (500, 7)
    # a case's slides weigh alike; each stratum keeps its number of cases
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()
    assert ((w[:, 0] + w[:, 2]) == 2).all() and ((w[:, 3] + w[:, 6]) == 2).all()
    ones = np.ones((1, 7))
    y, s = np.array([1, 1, 1, 0, 0, 0, 0]), np.array([0.9, 0.3, 0.7, 0.1, 0.5, 0.3, 0.8])
    assert stats.weighted_auc(y, s, ones)[0] == pytest.approx(stats.auc(y, s))


def test_interval_covers_and_orders():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(40)].astype(int)
    s = y * 1.0 + rng.normal(0, 1, 80)
    w = stats.cluster_weights(np.arange(80), y, 1000, seed=0)
    iv = stats.percentile_interval(stats.auc(y, s), stats.weighted_auc(y, s, w))
    assert iv.low < iv.estimate < iv.high and iv.n_boot == 1000
    assert 0.05 < iv.high - iv.low < 0.3


def test_permutation_p_matches_exact_enumeration():
    """Within-fold permutation p-value against all 36 within-fold label arrangements."""
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    s = np.array([0.9, 0.4, 0.5, 0.1, 0.8, 0.7, 0.6, 0.2])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    obs = stats.auc(y, s)
    arrangements = [np.r_[p0, p1] for p0 in set(itertools.permutations(y[:4]))
                    for p1 in set(itertools.permutations(y[4:]))]
    exact = np.mean([stats.auc(np.array(a), s) >= obs - 1e-12 for a in arrangements])
    t = stats.permutation_auc_test(y, s, folds, n_perm=20000, seed=0)
    assert t.statistic == pytest.approx(obs) and t.unit == "slide"
    assert t.p == pytest.approx(exact, abs=0.01)
    assert t.floor == pytest.approx(1 / 20001)


def test_permutation_moves_whole_cases():
    """Cases with several slides keep one label under permutation (unit 'case'); a real
    signal gives p at the floor, noise a large p."""
    rng = np.random.default_rng(2)
    cases = np.repeat(np.arange(40), 2)
    y = np.repeat(rng.integers(0, 2, 40), 2)
    folds = cases % 4
    strong = stats.permutation_auc_test(y, y + rng.normal(0, 0.3, 80), folds, cases, n_perm=999, seed=0)
    assert strong.unit == "case" and strong.p == pytest.approx(1 / 1000)
    noise = stats.permutation_auc_test(y, rng.random(80), folds, cases, n_perm=999, seed=0)
    assert noise.p > 0.05


def test_bh_known_values():
    np.testing.assert_allclose(stats.bh_adjust([0.01, 0.04, 0.03, 0.005]), [0.02, 0.04, 0.04, 0.02])
    q = stats.bh_adjust([0.5, np.nan, 0.01])
    assert math.isnan(q[1]) and q[2] == pytest.approx(0.02) and q[0] == pytest.approx(0.5)


def test_t_interval_known_values():
    mean, lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    assert mean == 2 and hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert math.isnan(stats.t_interval([0.7])[1])
