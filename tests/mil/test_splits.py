"""Splits: grouped by case, stratified, every case in exactly one test fold, deterministic."""
from __future__ import annotations

import numpy as np
import pytest

from histstore.errors import InvalidInput
from histstore.mil.splits import make_splits, splits_from_rows


def _cohort(n_cases=60, pos_fraction=0.3, seed=0):
    """Slides (1-3 per case) with case-level labels."""
    rng = np.random.default_rng(seed)
    case_ids, labels = [], []
    for c in range(n_cases):
        y = int(c < pos_fraction * n_cases)
        for _ in range(int(rng.integers(1, 4))):
            case_ids.append(f"TCGA-{c:04d}")
            labels.append(y)
    order = rng.permutation(len(case_ids))  # slides in no particular order
    return [case_ids[i] for i in order], [labels[i] for i in order]


def test_every_case_in_exactly_one_test_fold_and_no_case_in_two_subsets():
    case_ids, labels = _cohort()
    s = make_splits(case_ids, labels, 5, seed=1)
    assert s.subset.shape == (5, 60)
    assert ((s.subset == "test").sum(0) == 1).all()          # one test fold per case
    case_arr = np.array(case_ids)
    for fold in range(5):
        parts = s.indices(fold)
        assert sum(len(p) for p in parts) == len(case_ids)     # every slide placed
        cases = [set(case_arr[p]) for p in parts]
        assert not (cases[0] & cases[1] or cases[0] & cases[2] or cases[1] & cases[2])
    # test folds partition the slides
    all_test = np.sort(np.concatenate([s.indices(f)[2] for f in range(5)]))
    assert all_test.tolist() == list(range(len(case_ids)))


def test_stratified_by_case_label_and_80_10_10():
    case_ids, labels = _cohort(n_cases=90, pos_fraction=1 / 3)
    s = make_splits(case_ids, labels, 5, seed=0)
    case_label = dict(zip(case_ids, labels))
    y = np.array([case_label[c] for c in s.case_ids])
    for fold in range(5):
        test = s.subset[fold] == "test"
        val = s.subset[fold] == "val"
        assert test.sum() == 18                                  # 90 cases / 5 folds
        assert y[test].sum() == 6                                # 30 positives / 5 folds
        assert val.sum() == 8                                    # 72 / 9
        assert y[val].sum() in (2, 3)                           # 1/3 of 8
    # fold sizes never differ by more than one case
    sizes = np.bincount(s.test_fold(), minlength=5)
    assert sizes.max() - sizes.min() <= 1


def test_mixed_label_cases_stay_grouped():
    # each patient has a tumour and a normal slide (as in TCGA tumour vs normal)
    case_ids = [f"p{i}" for i in range(20) for _ in range(2)]
    labels = [0, 1] * 20
    s = make_splits(case_ids, labels, 5, seed=3)
    for fold in range(5):
        tr, va, te = s.indices(fold)
        assert not set(np.array(case_ids)[te]) & set(np.array(case_ids)[np.r_[tr, va]])
        assert sorted(set(np.array(labels)[te])) == [0, 1]


def test_deterministic_with_seed():
    case_ids, labels = _cohort()
    a = make_splits(case_ids, labels, 5, seed=7)
    b = make_splits(case_ids, labels, 5, seed=7)
    c = make_splits(case_ids, labels, 5, seed=8)
    assert (a.subset == b.subset).all() and a.rows() == b.rows()
    assert not (a.subset == c.subset).all()


def test_regression_stratifies_by_quantile_bins():
    rng = np.random.default_rng(0)
    y = rng.standard_normal(100) * 3
    s = make_splits([f"c{i}" for i in range(100)], y, 5, seed=0, task="regression")
    means = [y[s.indices(f)[2]].mean() for f in range(5)]
    lows = [(y[s.indices(f)[2]] < np.quantile(y, 0.2)).sum() for f in range(5)]
    assert np.ptp(means) < 1.5
    assert lows == [4] * 5                                      # each bottom-quintile case spread


def test_rows_round_trip():
    case_ids, labels = _cohort(n_cases=20)
    s = make_splits(case_ids, labels, 4, seed=2)
    rows = s.rows()
    assert len(rows) == 4 * 20 and {r["subset"] for r in rows} == {"train", "val", "test"}
    back = splits_from_rows(rows, case_ids)
    assert (back.subset == s.subset).all()
    for f in range(4):
        for p, q in zip(back.indices(f), s.indices(f)):
            assert p.tolist() == q.tolist()


def test_no_validation_when_fraction_zero():
    case_ids, labels = _cohort(n_cases=20)
    s = make_splits(case_ids, labels, 5, seed=0, val_fraction=0.0)
    assert not (s.subset == "val").any()


def test_bad_input_one_line_errors():
    with pytest.raises(InvalidInput, match=r"3 cases for 5 folds") as e:
        make_splits(["a", "b", "c", "c"], [0, 1, 0, 0], 5)
    assert "\n" not in str(e.value)
    with pytest.raises(InvalidInput, match="single class"):
        make_splits([f"c{i}" for i in range(10)], [1] * 10, 5)
    with pytest.raises(InvalidInput, match="case ids but"):
        make_splits(["a", "b"], [0], 2)
    with pytest.raises(InvalidInput, match="at least 2 folds"):
        make_splits(["a", "b"], [0, 1], 1)
    with pytest.raises(InvalidInput, match="missing"):
        make_splits(["a", "b", "c"], [0, None, 1], 2)


def test_rare_class_is_noted():
    case_ids = [f"c{i}" for i in range(20)]
    labels = [1, 1] + [0] * 18
    s = make_splits(case_ids, labels, 5, seed=0)
    assert any("'1' occurs in 2 cases" in n for n in s.notes)
    assert ((s.subset == "test").sum(0) == 1).all()
