"""Shared statistics: AUC by midranks, DeLong's test, cluster bootstrap, permutation tests,
Benjamini-Hochberg, t intervals.

Conventions: `y` is 0/1 (1 = positive class), scores are larger for the positive class, and
ties between a positive and a negative count one half (the Mann-Whitney AUC). Resampling is
by cluster (a case: all its slides go together) within strata (the case's label), so that
slides of one patient never pretend to be independent evidence.

References: E. R. DeLong, D. M. DeLong, D. L. Clarke-Pearson, Biometrics 44:837 (1988);
X. Sun, W. Xu, "Fast implementation of DeLong's algorithm for comparing the areas under
correlated receiver operating characteristic curves", IEEE Signal Processing Letters 21:1389
(2014); Y. Benjamini, Y. Hochberg, JRSS-B 57:289 (1995).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _st

Z95 = float(_st.norm.ppf(0.975))


# ----------------------------------------------------------------------------- ranks, AUC
def midranks(x) -> np.ndarray:
    """1-based ranks along the last axis, tied values sharing the mean of their ranks
    (Sun & Xu's Algorithm 1, vectorised over leading axes)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    order = np.argsort(x, axis=-1, kind="mergesort")
    xs = np.take_along_axis(x, order, axis=-1)
    # start of each run of equal values, per row
    new_run = np.ones(x.shape, dtype=bool)
    new_run[..., 1:] = xs[..., 1:] != xs[..., :-1]
    run_id = np.cumsum(new_run, axis=-1) - 1                     # 0-based run index
    pos = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), x.shape)
    flat_rows = int(np.prod(x.shape[:-1], dtype=np.int64)) if x.ndim > 1 else 1
    rid = run_id.reshape(flat_rows, n) + (np.arange(flat_rows) * n)[:, None]
    sums = np.bincount(rid.ravel(), weights=np.asarray(pos).reshape(flat_rows, n).ravel(),
                       minlength=flat_rows * n)
    counts = np.bincount(rid.ravel(), minlength=flat_rows * n)
    mean_rank = (sums / np.maximum(counts, 1))[rid].reshape(x.shape)
    out = np.empty_like(mean_rank)
    np.put_along_axis(out, order, mean_rank, axis=-1)
    return out


def auc(y, scores) -> float:
    """ROC AUC (Mann-Whitney, ties 1/2); NaN when y holds one class only."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return math.nan
    r = midranks(s)
    return float((r[y].sum() - m * (m + 1) / 2) / (m * n))


# ----------------------------------------------------------------------------- DeLong
def delong_auc_cov(y, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs [k] of k score vectors on the same cases and their covariance [k, k] (DeLong),
    by Sun & Xu's fast algorithm: with midranks T_X among positives, T_Y among negatives and
    T_Z among all, V10_i = (T_Z(X_i) - T_X(X_i)) / n, V01_j = 1 - (T_Z(Y_j) - T_Y(Y_j)) / m,
    S = cov(V10) / m + cov(V01) / n. scores: [k, N] (or [N]); needs >= 2 of each class."""
    y = np.asarray(y).astype(bool)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
    x_pos, x_neg = s[:, y], s[:, ~y]
    tx, ty = midranks(x_pos), midranks(x_neg)
    tz = midranks(np.concatenate([x_pos, x_neg], axis=1))
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


@dataclass(frozen=True)
class PairedAUCTest:
    """AUC of A and B on the same cases, their difference A - B with its standard error,
    95 % interval and two-sided p-value."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int
    method: str


def delong_test(y, scores_a, scores_b) -> PairedAUCTest:
    """DeLong's test of AUC(A) = AUC(B) for two scores of the same cases (correlated AUCs):
    z = (AUC_A - AUC_B) / sqrt(S11 + S22 - 2 S12)."""
    y = np.asarray(y).astype(bool)
    aucs, cov = delong_auc_cov(y, np.stack([np.asarray(scores_a, float), np.asarray(scores_b, float)]))
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    se = math.sqrt(max(var, 0.0))
    if se == 0.0:
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / se
        p = float(2 * _st.norm.sf(abs(z)))
    return PairedAUCTest(float(aucs[0]), float(aucs[1]), diff, se, z, p, diff - Z95 * se, diff + Z95 * se,
                         int(y.sum()), int((~y).sum()), "DeLong")


# ----------------------------------------------------------------------------- bootstrap
def cluster_weights(clusters, strata, n_boot: int, seed: int = 0) -> np.ndarray:
    """[n_boot, n_items] resampling weights: within each stratum, as many clusters as it has
    are drawn with replacement, and every item weighs the number of times its cluster was
    drawn. clusters, strata: one per item (a cluster's items share its stratum)."""
    clusters = np.asarray(clusters)
    strata = np.asarray(strata)
    uniq, item_cluster = np.unique(clusters, return_inverse=True)
    first = np.unique(item_cluster, return_index=True)[1]
    cluster_stratum = strata[first]
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(uniq)), np.float64)
    for h in np.unique(cluster_stratum):
        members = np.flatnonzero(cluster_stratum == h)
        k = len(members)
        counts[:, members] = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot)
    return counts[:, item_cluster]


def weighted_auc(y, scores, weights) -> np.ndarray:
    """AUC under item weights [B, N] (a bootstrap resample per row): the weighted share of
    (positive, negative) pairs ranked right, ties 1/2. Returns [B] (NaN without a class)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    sp, sn = s[y], s[~y]
    psi = (sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])   # [m, n]
    wp, wn = w[:, y], w[:, ~y]
    num = np.einsum("bm,mn,bn->b", wp, psi, wn, optimize=True)
    den = wp.sum(1) * wn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def weighted_mean(values, weights) -> np.ndarray:
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    return (w @ np.asarray(values, dtype=np.float64)) / w.sum(1)


def weighted_pearson(x, y, weights) -> np.ndarray:
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    x, y = np.asarray(x, float), np.asarray(y, float)
    sw = w.sum(1, keepdims=True)
    mx, my = (w @ x)[:, None] / sw, (w @ y)[:, None] / sw
    dx, dy = x[None, :] - mx, y[None, :] - my
    cxy = (w * dx * dy).sum(1)
    vx, vy = (w * dx * dx).sum(1), (w * dy * dy).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cxy / np.sqrt(vx * vy)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n_boot: int          # resamples where the statistic was defined

    def __str__(self) -> str:
        if math.isnan(self.estimate):
            return "undefined"
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def percentile_interval(estimate: float, replicates: np.ndarray, level: float = 0.95) -> Interval:
    r = np.asarray(replicates, float)
    r = r[~np.isnan(r)]
    if math.isnan(estimate) or r.size == 0:
        return Interval(estimate, math.nan, math.nan, int(r.size))
    a = (1 - level) / 2
    lo, hi = np.quantile(r, [a, 1 - a])
    return Interval(float(estimate), float(lo), float(hi), int(r.size))


def paired_bootstrap_diff(y, scores_a, scores_b, clusters, strata, n_boot: int = 2000,
                          seed: int = 0) -> PairedAUCTest:
    """AUC(A) - AUC(B) with a 95 % percentile interval from case-stratified cluster
    resamples (the same resample for both), se = sd of the replicate differences, and the
    two-sided bootstrap p-value 2 min(P*(d <= 0), P*(d >= 0)) (at least 1 / n_boot)."""
    y = np.asarray(y).astype(bool)
    w = cluster_weights(clusters, strata, n_boot, seed)
    da = weighted_auc(y, scores_a, w)
    db = weighted_auc(y, scores_b, w)
    d = da - db
    d = d[~np.isnan(d)]
    a, b = auc(y, scores_a), auc(y, scores_b)
    diff = a - b
    iv = percentile_interval(diff, d)
    se = float(np.std(d, ddof=1)) if d.size > 1 else math.nan
    if d.size == 0:
        p = math.nan
    else:
        p = min(1.0, max(1.0 / d.size, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0)))))
    z = diff / se if se and not math.isnan(se) else math.nan
    return PairedAUCTest(a, b, diff, se, z, p, iv.low, iv.high, int(y.sum()), int((~y).sum()),
                         f"paired bootstrap ({d.size} case resamples)")


# ----------------------------------------------------------------------------- permutation
@dataclass(frozen=True)
class PermutationTest:
    statistic: float
    p: float
    n_perm: int
    unit: str            # what was permuted: "case" labels, or "slide" labels

    @property
    def floor(self) -> float:
        """The smallest p-value this many permutations can give."""
        return 1.0 / (self.n_perm + 1)


def permutation_auc_test(y, scores, folds, clusters=None, n_perm: int = 10_000, seed: int = 0,
                         chunk: int = 1000) -> PermutationTest:
    """One-sided permutation p-value of the pooled AUC: labels are permuted within each fold
    (each fold's model only scored its own test slides), by case when every case has one
    label (a case's slides keep one label), else by slide. p = (1 + #{AUC* >= AUC}) /
    (1 + n_perm)."""
    y = np.asarray(y).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    folds = np.asarray(folds)
    n = len(y)
    observed = auc(y, s)
    if math.isnan(observed):
        return PermutationTest(math.nan, math.nan, 0, "none")
    ranks = midranks(s)
    # units: clusters (cases) when each is label-homogeneous, else single items
    if clusters is not None:
        clusters = np.asarray(clusters)
        keys = np.array([f"{f}\x1f{c}" for f, c in zip(folds, clusters)])
        uniq, unit_of = np.unique(keys, return_inverse=True)
        homogeneous = all(len(set(y[unit_of == u])) == 1 for u in range(len(uniq)))
    else:
        homogeneous = False
    if not homogeneous:
        unit_of = np.arange(n)
    n_units = int(unit_of.max()) + 1
    unit_rank = np.bincount(unit_of, weights=ranks, minlength=n_units)
    unit_size = np.bincount(unit_of, minlength=n_units).astype(np.float64)
    unit_y = np.zeros(n_units, np.float64)
    unit_y[unit_of] = y
    first = np.unique(unit_of, return_index=True)[1]
    unit_fold = folds[first]
    rng = np.random.default_rng(seed)
    hits = 0
    done = 0
    while done < n_perm:
        b = min(chunk, n_perm - done)
        ylab = np.empty((b, n_units), np.float64)
        for f in np.unique(unit_fold):
            idx = np.flatnonzero(unit_fold == f)
            perm = np.argsort(rng.random((b, idx.size)), axis=1)
            ylab[:, idx] = unit_y[idx][perm]
        m = ylab @ unit_size
        rsum = ylab @ unit_rank
        with np.errstate(invalid="ignore", divide="ignore"):
            a = (rsum - m * (m + 1) / 2) / (m * (n - m))
        hits += int(np.sum(a >= observed - 1e-12))
        done += b
    return PermutationTest(observed, (1 + hits) / (1 + n_perm), n_perm, "case" if homogeneous else "slide")


# ----------------------------------------------------------------------------- multiple tests
def bh_adjust(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN stays NaN and is not counted."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    n = int(ok.sum())
    if n == 0:
        return out
    q = p[ok]
    order = np.argsort(q)
    ranked = q[order] * n / np.arange(1, n + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    res = np.empty(n)
    res[order] = np.clip(adj, 0, 1)
    out[ok] = res
    return out


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student t interval of the mean of a few values (e.g. seeds)."""
    v = np.asarray([x for x in values if not math.isnan(x)], float)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size == 1:
        return mean, math.nan, math.nan
    half = float(_st.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, mean - half, mean + half
