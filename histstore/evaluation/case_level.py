"""Patient-level metrics: a case's slide scores averaged, then the usual metrics over cases.

A case unit is a (case, target) pair: the slides of one patient that share a target. For a
slide-level task such as tumour vs normal, a patient with a tumour and a normal slide is two
units (one per label); for case-level targets (gene tasks) it is one. Class probabilities
(classification) or predicted values (regression) are averaged over the unit's slides; a
unit's prediction is the class of the largest mean probability.

Stored per fold under the slide-level names with a `case_` prefix: case_auc, case_accuracy,
case_balanced_accuracy, case_f1, case_n (classification); case_mse, case_pearson,
case_spearman, case_n (regression).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from histstore.mil.metrics import Metrics, classification_metrics, regression_metrics

PREFIX = "case_"


def case_units(case_ids: Sequence[str], targets) -> tuple[np.ndarray, pd.DataFrame]:
    """(unit of each item [n], units: case_id, target), units in order of first appearance."""
    frame = pd.DataFrame({"case_id": np.asarray(case_ids, dtype=object), "target": np.asarray(targets)})
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(frame))
    units = pd.DataFrame(list(uniques), columns=["case_id", "target"])
    return np.asarray(codes), units


def mean_by_unit(unit: np.ndarray, values: np.ndarray, n_units: int) -> np.ndarray:
    """Mean of values [n] or [n, C] over each unit's items."""
    v = np.asarray(values, dtype=np.float64)
    counts = np.bincount(unit, minlength=n_units).astype(np.float64)
    if v.ndim == 1:
        return np.bincount(unit, weights=v, minlength=n_units) / counts
    out = np.stack([np.bincount(unit, weights=v[:, c], minlength=n_units) for c in range(v.shape[1])], axis=1)
    return out / counts[:, None]


def case_metrics(case_ids: Sequence[str], targets, outputs, regression: bool,
                 n_classes: int | None = None) -> Metrics:
    """Metrics over case units. outputs: class probabilities [n, C] (or the positive-class
    probability [n] for a binary task) for classification, predicted values [n] for
    regression. Names carry the `case_` prefix."""
    unit, units = case_units(case_ids, targets)
    agg = mean_by_unit(unit, outputs, len(units))
    if regression:
        m = regression_metrics(units["target"].to_numpy(np.float64), agg)
    else:
        m = classification_metrics(units["target"].to_numpy(np.int64), agg, n_classes)
    return Metrics({PREFIX + k: v for k, v in m.values.items()}, [f"case level: {n}" for n in m.notes])


def case_metric_rows(fold: int, subsets: dict, case_ids: Sequence[str], regression: bool,
                     n_classes: int | None = None) -> list[dict]:
    """Metric rows {"fold", "subset", "name", "value"} for each subset's predictions.
    subsets: name -> object with index (bag positions), target, and probs (classification)
    or score (regression), as `mil.results.Predictions`."""
    rows = []
    cases = np.asarray(case_ids, dtype=object)
    for subset, preds in subsets.items():
        if preds is None or len(preds.index) == 0:
            continue
        outputs = preds.score if regression or preds.probs is None else preds.probs
        m = case_metrics(cases[np.asarray(preds.index)], preds.target, outputs, regression, n_classes)
        rows += [{"fold": fold, "subset": subset, "name": k, "value": v} for k, v in m.values.items()]
    return rows
