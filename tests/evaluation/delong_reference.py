"""DeLong et al. (1988) as written in the paper, pair by pair: the slow reference that the
fast algorithm (histstore.evaluation.stats.delong_auc_cov) is tested against."""
from __future__ import annotations

import numpy as np


def psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def delong_slow(y, scores):
    """AUCs [k] and their covariance [k, k] from the pairwise-comparison U statistics:
    V10_r(X_i) = mean_j psi(X_i, Y_j), V01_r(Y_j) = mean_i psi(X_i, Y_j),
    S10[r, s] = sum_i (V10_r(X_i) - A_r)(V10_s(X_i) - A_s) / (m - 1), S01 likewise over the
    negatives / (n - 1), S = S10 / m + S01 / n."""
    y = np.asarray(y).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, float))
    k = scores.shape[0]
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    m, n = len(pos), len(neg)
    v10 = np.zeros((k, m))
    v01 = np.zeros((k, n))
    aucs = np.zeros(k)
    for r in range(k):
        table = np.array([[psi(scores[r, i], scores[r, j]) for j in neg] for i in pos])
        aucs[r] = table.sum() / (m * n)
        v10[r] = table.mean(axis=1)
        v01[r] = table.mean(axis=0)
    s10 = np.zeros((k, k))
    s01 = np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10[r, s] = sum((v10[r, i] - aucs[r]) * (v10[s, i] - aucs[s]) for i in range(m)) / (m - 1)
            s01[r, s] = sum((v01[r, j] - aucs[r]) * (v01[s, j] - aucs[s]) for j in range(n)) / (n - 1)
    return aucs, s10 / m + s01 / n
