"""The decision threshold of a binary MIL model, chosen on bags it may look at.

A MIL model's positive-class probability is not calibrated: trained on a few dozen bags it
often ranks the test bags well (high AUC) but puts them on the wrong side of 0.5, and accuracy
suffers. `TrainConfig.decision_threshold` says where the cut comes from:

- "0.5": the argmax, as before;
- "val": chosen on the fold's validation bags (the bags that select the epoch; never test);
- "train": chosen on the fold's training bags (predicted by the selected model).

`choose_threshold` takes the cut that maximises accuracy on those bags and, among equally
good cuts, the one nearest 0.5, so an uninformative subset leaves the threshold at 0.5.
numpy only.
"""
from __future__ import annotations

import numpy as np

RULES = ("0.5", "val", "train")


def choose_threshold(y_true, score, default: float = 0.5) -> float:
    """Cut on positive-class probabilities maximising accuracy (ties: nearest `default`).

    y_true [n] in {0, 1}; score [n]. Candidate cuts are `default` and the midpoints between
    consecutive distinct scores (and just outside their range); a bag is called positive
    when score >= cut. With no bags, or one class only, returns `default`.
    """
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if len(y) == 0 or len(np.unique(y)) < 2:
        return float(default)
    u = np.unique(s)
    cuts = np.concatenate([[default, u[0] - 1e-9, u[-1] + 1e-9], (u[:-1] + u[1:]) / 2])
    acc = ((s[None, :] >= cuts[:, None]) == y[None, :].astype(bool)).mean(1)
    best = np.flatnonzero(acc >= acc.max() - 1e-12)
    return float(cuts[best[np.argmin(np.abs(cuts[best] - default))]])
