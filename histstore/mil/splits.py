"""Cross-validation splits grouped by case and stratified by label (HistCode's 80/10/10).

`make_splits` takes one row per item (a slide, or a case) with its case id and label. Every
case goes to exactly one test fold; inside each fold the remaining cases are split ~8:1 into
train and validation (val_fraction = 1/9 of the non-test cases gives 80/10/10 overall with
5 folds). All slides of a case always share one subset, so no patient is on both sides of a
split (the authors' code split slides, not patients).

Stratification is by case: a case's stratum is its label (classification; a case whose slides
carry different labels, e.g. a tumour and a normal sample of one patient, gets the stratum of
that label combination) or its quantile bin of the mean target (regression). Cases of each
stratum are shuffled with the seed and dealt to the least-loaded fold, so every stratum is
spread as evenly as its size allows and fold sizes differ by at most one case.

numpy only (no torch): the catalog layer may import this module.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

from histstore.errors import InvalidInput

SUBSETS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class Splits:
    """Fold assignments. Case-level: `case_ids` [n_cases] (sorted unique) and
    `subset[fold, case]` in {"train", "val", "test"}. Item-level: `item_case[i]` is the
    position in `case_ids` of input item i, so `indices(fold)` gives item positions."""

    n_folds: int
    seed: int
    case_ids: np.ndarray           # [n_cases] str
    subset: np.ndarray             # [n_folds, n_cases] str
    item_case: np.ndarray          # [n_items] int
    notes: tuple[str, ...] = field(default=())

    def test_fold(self) -> np.ndarray:
        """[n_cases]: the fold in which each case is in the test subset."""
        return np.argmax(self.subset == "test", axis=0)

    def indices(self, fold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train_idx, val_idx, test_idx): sorted item positions of the fold's subsets."""
        if not 0 <= fold < self.n_folds:
            raise InvalidInput(f"fold {fold} out of range 0..{self.n_folds - 1}")
        per_item = self.subset[fold][self.item_case]
        return tuple(np.flatnonzero(per_item == s) for s in SUBSETS)  # type: ignore[return-value]

    def rows(self) -> list[dict]:
        """One row per (fold, case): {"fold", "case_id", "subset"} - the `splits` table."""
        return [{"fold": f, "case_id": str(c), "subset": str(self.subset[f, j])}
                for f in range(self.n_folds) for j, c in enumerate(self.case_ids)]


def splits_from_rows(rows: Iterable[Mapping], item_case_ids: Sequence, seed: int = -1) -> Splits:
    """Rebuild `Splits` from stored rows ({"fold", "case_id", "subset"}), e.g. to resume a
    run with exactly the splits it started with. item_case_ids: the case of each item."""
    rows = list(rows)
    case_ids = np.array(sorted({str(r["case_id"]) for r in rows}))
    n_folds = 1 + max(int(r["fold"]) for r in rows)
    pos = {c: j for j, c in enumerate(case_ids)}
    subset = np.full((n_folds, len(case_ids)), "", dtype=object)
    for r in rows:
        subset[int(r["fold"]), pos[str(r["case_id"])]] = str(r["subset"])
    if (subset == "").any():
        raise InvalidInput("stored splits are incomplete: some (fold, case) has no subset")
    missing = sorted({str(c) for c in item_case_ids} - set(pos))
    if missing:
        raise InvalidInput(f"{len(missing)} cases are not in the stored splits "
                           f"(first: {missing[0]})")
    item_case = np.array([pos[str(c)] for c in item_case_ids], dtype=np.int64)
    return Splits(n_folds, seed, case_ids, subset.astype(str), item_case)


def make_splits(
    case_ids: Sequence,
    labels: Sequence,
    n_folds: int = 5,
    *,
    seed: int = 0,
    val_fraction: float = 1 / 9,
    task: Literal["classification", "regression"] = "classification",
    n_bins: int | None = None,
) -> Splits:
    """k folds grouped by case, stratified by label; train/val inside each fold.

    case_ids, labels: one per item (slide or case). Classification labels are any hashable
    class values; regression labels are floats, stratified by quantile bins of the case mean
    (n_bins, default min(5, n_cases // n_folds)). Deterministic for a given seed and input.
    """
    case_arr = np.asarray([str(c) for c in case_ids])
    label_arr = np.asarray(labels, dtype=object if task == "classification" else float)
    if case_arr.shape[0] != label_arr.shape[0]:
        raise InvalidInput(f"{len(case_arr)} case ids but {len(label_arr)} labels")
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise InvalidInput(f"need at least 2 folds, got {n_folds!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidInput(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if task not in ("classification", "regression"):
        raise InvalidInput(f"unknown task {task!r}: classification or regression")

    uniq, item_case = np.unique(case_arr, return_inverse=True)
    n_cases = len(uniq)
    if n_cases < n_folds:
        raise InvalidInput(f"{n_cases} case{'s' if n_cases != 1 else ''} for {n_folds} folds: "
                           f"need at least one case per fold", hint="use fewer folds")

    notes: list[str] = []
    strata = _strata(label_arr, item_case, n_cases, n_folds, task, n_bins, notes)
    rng = np.random.default_rng(seed)

    # outer folds: deal each stratum's shuffled cases to the least-loaded fold
    test_fold = np.empty(n_cases, dtype=np.int64)
    fold_size = np.zeros(n_folds, dtype=np.int64)
    by_stratum = defaultdict(list)
    for j, s in enumerate(strata):
        by_stratum[s].append(j)
    # largest strata first; ties by key, for determinism
    for key in sorted(by_stratum, key=lambda s: (-len(by_stratum[s]), s)):
        cases = rng.permutation(np.array(by_stratum[key]))
        in_stratum = np.zeros(n_folds, dtype=np.int64)
        for j in cases:
            f = min(range(n_folds), key=lambda f: (in_stratum[f], fold_size[f], f))
            test_fold[j] = f
            in_stratum[f] += 1
            fold_size[f] += 1

    # inner split: ~val_fraction of each fold's remaining cases, stratified
    subset = np.full((n_folds, n_cases), "train", dtype=object)
    for f in range(n_folds):
        subset[f, test_fold == f] = "test"
        rest = np.flatnonzero(test_fold != f)
        for j in _stratified_sample(rest, strata, val_fraction, rng):
            subset[f, j] = "val"
    return Splits(n_folds, seed, uniq, subset.astype(str), item_case.astype(np.int64),
                  tuple(notes))


def _strata(labels, item_case, n_cases, n_folds, task, n_bins, notes) -> list[str]:
    """One stratum key (str) per case."""
    if task == "classification":
        if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in labels):
            raise InvalidInput("some labels are missing (None/NaN): drop those items first")
        classes = sorted({str(v) for v in labels})
        if len(classes) < 2:
            raise InvalidInput(f"labels have a single class ({classes[0]!r}): a classifier "
                               f"needs at least two")
        per_case: list[set] = [set() for _ in range(n_cases)]
        for v, j in zip(labels, item_case):
            per_case[j].add(str(v))
        for c in classes:
            n_with = sum(c in s for s in per_case)
            if n_with < n_folds:
                notes.append(f"class {c!r} occurs in {n_with} cases for {n_folds} folds: "
                             f"some test folds lack it (their ROC-AUC is undefined)")
        return ["+".join(sorted(s)) for s in per_case]
    if np.isnan(labels).any():
        raise InvalidInput("some regression targets are NaN: drop those items first")
    sums = np.bincount(item_case, weights=labels, minlength=n_cases)
    means = sums / np.bincount(item_case, minlength=n_cases)
    if n_bins is None:
        n_bins = max(1, min(5, n_cases // n_folds))
    if n_bins <= 1:
        return ["0"] * n_cases
    edges = np.quantile(means, np.linspace(0, 1, n_bins + 1)[1:-1])
    return [f"q{b}" for b in np.searchsorted(edges, means, side="right")]


def _stratified_sample(cases: np.ndarray, strata: list[str], fraction: float,
                       rng: np.random.Generator) -> list[int]:
    """About `fraction` of `cases`, allocated over strata by largest remainder; at least one
    case when fraction > 0 and two or more cases are available, never all of them."""
    n = len(cases)
    n_pick = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        n_pick = max(1, n_pick)
    n_pick = min(n_pick, n - 1)
    if n_pick <= 0:
        return []
    groups = defaultdict(list)
    for j in cases:
        groups[strata[j]].append(int(j))
    keys = sorted(groups)
    quota = np.array([n_pick * len(groups[k]) / n for k in keys])
    take = np.floor(quota).astype(int)
    # largest remainders get the leftover picks (ties broken at random, seeded)
    order = sorted(range(len(keys)), key=lambda i: (-(quota[i] - take[i]), rng.random()))
    for i in order[: n_pick - take.sum()]:
        take[i] += 1
    picked: list[int] = []
    for k, t in zip(keys, take):
        picked += [int(j) for j in rng.permutation(np.array(groups[k]))[:t]]
    return picked
