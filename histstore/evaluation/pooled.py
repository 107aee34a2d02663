"""A run's pooled test predictions: every slide once, scored by the fold model that held it
out. Intervals, paired comparisons and permutation tests on them, at slide and case level.

Input frames have one row per test slide: fold, slide_id, case_id, label (class name;
classification), target (float), score (positive-class probability for binary tasks, the
predicted value for regression), predicted (class name or value).

- Intervals: 95 % percentile intervals from `N_BOOT` case-stratified cluster resamples
  (cases drawn with replacement within each label stratum, each with all its slides), at
  slide level (AUC, accuracy; Pearson r for regression) and case level (the same on case
  units, see `case_level`). Pooled AUC mixes the fold models' scores on one scale, as is
  usual for cross-validated predictions; the per-fold mean +- sd sits beside it.
- Paired comparison of two runs on the same splits: DeLong's test for the correlated AUCs
  (slide and case level) and a paired case bootstrap of the difference. DeLong treats slides
  as independent; with several slides per case, trust the case-level test and the bootstrap,
  which resample whole cases.
- Gene runs: per gene, a within-fold permutation test of the pooled AUC (`N_PERM`
  permutations, one-sided, p >= 1 / (N_PERM + 1)) and Benjamini-Hochberg q over the genes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from histstore.evaluation import stats
from histstore.evaluation.case_level import case_units, mean_by_unit

N_BOOT = 2000
N_PERM = 10_000
SEED = 0
ALPHA = 0.05


def _binary(preds: pd.DataFrame, positive: str) -> np.ndarray:
    return (preds["label"].astype(str) == positive).to_numpy(np.int64)


def _strata(case_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each item's stratum: the set of labels its case has (e.g. 'normal|tumor')."""
    frame = pd.DataFrame({"case": case_ids, "v": values.astype(str)})
    sets = frame.groupby("case")["v"].agg(lambda v: "|".join(sorted(set(v))))
    return frame["case"].map(sets).to_numpy()


@dataclass
class CaseView:
    """Case units of pooled predictions: unit scores (mean), targets and bootstrap keys."""

    case_id: np.ndarray
    target: np.ndarray
    score: np.ndarray
    strata: np.ndarray


def case_view(case_ids: np.ndarray, target: np.ndarray, score: np.ndarray) -> CaseView:
    unit, units = case_units(case_ids, target)
    sc = mean_by_unit(unit, score, len(units))
    cid = units["case_id"].to_numpy()
    tg = units["target"].to_numpy()
    return CaseView(cid, tg, sc, _strata(cid, tg))


def pooled_intervals(preds: pd.DataFrame, classes: list[str], regression: bool, n_boot: int = N_BOOT,
                     seed: int = SEED) -> pd.DataFrame:
    """level, metric, estimate, ci_low, ci_high, n (slides or case units), n_cases. Empty for
    multi-class tasks (per-class scores are not stored)."""
    cols = ["level", "metric", "estimate", "ci_low", "ci_high", "n", "n_cases"]
    if preds.empty or (not regression and len(classes) != 2):
        return pd.DataFrame(columns=cols)
    cases = preds["case_id"].astype(str).to_numpy()
    rows = []
    if regression:
        t = preds["target"].to_numpy(np.float64)
        s = preds["score"].to_numpy(np.float64)
        cv = case_view(cases, t, s)
        for level, cid, tt, ss, strata in (("slide", cases, t, s, np.zeros(len(t))),
                                           ("case", cv.case_id, cv.target.astype(float), cv.score,
                                            np.zeros(len(cv.target)))):
            w = stats.cluster_weights(cid, strata, n_boot, seed)
            est = stats.weighted_pearson(tt, ss, np.ones((1, len(tt))))[0] if len(tt) > 2 else math.nan
            iv = stats.percentile_interval(float(est), stats.weighted_pearson(tt, ss, w))
            rows.append((level, "pearson", iv.estimate, iv.low, iv.high, len(tt), len(set(cid))))
        return pd.DataFrame(rows, columns=cols)
    y = _binary(preds, classes[-1])
    s = preds["score"].to_numpy(np.float64)
    correct = (preds["predicted"].astype(str) == preds["label"].astype(str)).to_numpy(np.float64)
    cv = case_view(cases, y, s)
    case_correct = ((cv.score > 0.5).astype(int) == cv.target.astype(int)).astype(np.float64)
    for level, cid, yy, ss, ok, strata in (("slide", cases, y, s, correct, _strata(cases, y)),
                                           ("case", cv.case_id, cv.target.astype(int), cv.score, case_correct,
                                            cv.strata)):
        w = stats.cluster_weights(cid, strata, n_boot, seed)
        iv = stats.percentile_interval(stats.auc(yy, ss), stats.weighted_auc(yy, ss, w))
        rows.append((level, "auc", iv.estimate, iv.low, iv.high, len(yy), len(set(cid))))
        iv = stats.percentile_interval(float(ok.mean()), stats.weighted_mean(ok, w))
        rows.append((level, "accuracy", iv.estimate, iv.low, iv.high, len(yy), len(set(cid))))
    return pd.DataFrame(rows, columns=cols)


def paired_tests(a: pd.DataFrame, b: pd.DataFrame, positive: str, n_boot: int = N_BOOT,
                 seed: int = SEED) -> list[tuple[str, stats.PairedAUCTest]]:
    """AUC(a) - AUC(b) on the same test slides: [(level, test)] for slide and case level,
    DeLong and paired case bootstrap each. Both frames must hold the same slides with the
    same labels (the caller checks the splits)."""
    m = a.merge(b, on="slide_id", suffixes=("_a", "_b"), validate="one_to_one")
    if len(m) != len(a) or len(m) != len(b):
        raise ValueError("the two runs did not test the same slides")
    if not (m["label_a"].astype(str) == m["label_b"].astype(str)).all():
        raise ValueError("the two runs' labels differ")
    y = (m["label_a"].astype(str) == positive).to_numpy(np.int64)
    cases = m["case_id_a"].astype(str).to_numpy()
    sa, sb = m["score_a"].to_numpy(float), m["score_b"].to_numpy(float)
    out = []
    ca, cb = case_view(cases, y, sa), case_view(cases, y, sb)
    for level, cid, yy, xa, xb, strata in (("slide", cases, y, sa, sb, _strata(cases, y)),
                                           ("case", ca.case_id, ca.target.astype(int), ca.score, cb.score,
                                            ca.strata)):
        if min(int(yy.sum()), int((1 - yy).sum())) >= 2:
            out.append((level, stats.delong_test(yy, xa, xb)))
        out.append((level, stats.paired_bootstrap_diff(yy, xa, xb, cid, strata, n_boot, seed)))
    return out


def gene_tests(genes: list[tuple[int, str, pd.DataFrame, list[str]]], n_perm: int = N_PERM,
               seed: int = SEED) -> pd.DataFrame:
    """Per gene run (run_id, task, pooled test predictions, classes): pooled test AUC, its
    within-fold permutation p-value and the BH q over the genes; passes = q < ALPHA."""
    rows = []
    for run_id, task, preds, classes in genes:
        if preds.empty or len(classes) != 2:
            rows.append((run_id, task, math.nan, math.nan, 0, ""))
            continue
        y = _binary(preds, classes[-1])
        t = stats.permutation_auc_test(y, preds["score"].to_numpy(float), preds["fold"].to_numpy(),
                                       preds["case_id"].astype(str).to_numpy(), n_perm=n_perm, seed=seed)
        rows.append((run_id, task, t.statistic, t.p, t.n_perm, t.unit))
    frame = pd.DataFrame(rows, columns=["run_id", "task", "pooled_auc", "perm_p", "n_perm", "permuted"])
    frame["bh_q"] = stats.bh_adjust(frame["perm_p"].to_numpy(float))
    frame["passes"] = frame["bh_q"] < ALPHA
    return frame
