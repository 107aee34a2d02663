"""Bag sources: resident and streamed give the model the same numbers, so the same seed gives
the same fold results; the memory budget picks the mode and refuses a bag that cannot fit."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from histstore.errors import InvalidInput
from histstore.mil.bag_source import StreamedBags, choose_mode, open_bag_source, parse_budget
from histstore.mil.bags import pack_bags
from histstore.mil.cross_validation import run_cv
from histstore.mil.train_config import TrainConfig

from .synthetic import planted_cohort

SMALL = {"hidden_dim": 32, "attn_dim": 16}


@pytest.fixture(scope="module")
def stored():
    """A planted cohort as float16 arrays ('on disk'), with a reader that counts reads."""
    c = planted_cohort(n_bags=24, dim=16, seed=3)
    arrays = [b.numpy().astype(np.float16) for b in c.bags]
    return c, arrays


def _sources(arrays, budget_mode, reads=None, **kw):
    lengths = [len(a) for a in arrays]
    lock = threading.Lock()

    def read(i):
        if reads is not None:
            with lock:
                reads.append(i)
        return arrays[i].copy()

    plan = choose_mode(lengths, 16, 2, 10**9, force=budget_mode, **kw)
    return open_bag_source(read, lengths, 16, "float16", plan, "cpu", names=[f"s{i}" for i in range(len(arrays))])


@pytest.mark.parametrize("cfg", [dict(), dict(bags_per_step=3, batch_mode="concat"),
                                 dict(bags_per_step=2, batch_mode="accumulate")])
def test_resident_and_streamed_give_identical_folds(stored, cfg):
    c, arrays = stored
    config = TrainConfig(epochs=3, patience=None, model_cfg=SMALL, lr=1e-3, eval_tiles=100, **cfg)
    results = {}
    for mode in ("resident", "streamed"):
        src = _sources(arrays, mode)
        assert type(src).__name__ == ("PackedBags" if mode == "resident" else "StreamedBags")
        assert src.dtype == torch.float16  # stored dtype kept: no float32 copy of the cohort
        results[mode] = list(run_cv(src, c.targets, c.case_ids, config, n_folds=3, seed=4))
    for a, b in zip(results["resident"], results["streamed"]):
        assert np.array_equal(a.test.score, b.test.score) and np.array_equal(a.val.score, b.val.score)
        assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
        assert a.metrics["test"].values == b.metrics["test"].values or \
            str(a.metrics["test"].values) == str(b.metrics["test"].values)  # NaN-equal
        for i in a.test_attention:
            assert np.array_equal(a.test_attention[i], b.test_attention[i])


def test_float16_features_match_float32_packing(stored):
    """Features stored as float16 and cast per batch give what packing a float32 copy gave."""
    c, arrays = stored
    config = TrainConfig(epochs=2, patience=None, model_cfg=SMALL, lr=1e-3)
    old = list(run_cv(pack_bags([torch.from_numpy(a).float() for a in arrays]), c.targets, c.case_ids,
                      config, n_folds=3, seed=0))
    new = list(run_cv(_sources(arrays, "resident"), c.targets, c.case_ids, config, n_folds=3, seed=0))
    for a, b in zip(old, new):
        assert np.array_equal(a.test.score, b.test.score)


def test_streamed_reads_each_bag_once_per_pass_in_order_with_read_ahead(stored):
    _, arrays = stored
    reads: list[int] = []
    src = _sources(arrays, "streamed", reads)
    order = np.random.default_rng(0).permutation(len(arrays))
    got = [x for x, _ in src.batches([[i] for i in order])]
    assert sorted(reads) == sorted(order.tolist())
    assert all(torch.equal(g, torch.from_numpy(arrays[i])) for g, i in zip(got, order))
    # a loop that stops early leaves no reader running
    it = src.batches([[i] for i in order])
    next(it)
    it.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("bag-reader")]
    # a subset renumbers bags without copying
    sub = src.subset([5, 2])
    x, seg = sub.batch([1, 0])
    assert torch.equal(x, torch.from_numpy(np.concatenate([arrays[2], arrays[5]])))
    assert seg.tolist() == [0] * len(arrays[2]) + [1] * len(arrays[5])


def test_budget_chooses_the_mode_and_refuses_a_bag_that_cannot_fit():
    lengths = [100, 300, 200]  # 600 tiles x 8 dims x 2 bytes = 9,600 bytes stored
    assert choose_mode(lengths, 8, 2, 10**6).mode == "resident"
    assert choose_mode(lengths, 8, 2, 19_200).mode == "resident"  # 9,600 + a bag's float32 copy
    plan = choose_mode(lengths, 8, 2, 19_199)
    assert plan.mode == "streamed" and plan.prefetch == 0  # 300 tiles in use (14,400), no room ahead
    # read ahead as far as the budget holds the largest bag in its stored dtype (4,800 each), at most 4
    assert choose_mode(lengths, 8, 2, 24_000, force="streamed").prefetch == 2
    assert choose_mode(lengths, 8, 2, 10**6, force="streamed").prefetch == 4
    with pytest.raises(InvalidInput, match=r"too small for bag slide-b \(300 tiles x 8: needs 14.4 kB"):
        choose_mode(lengths, 8, 2, 10_000, names=["slide-a", "slide-b", "slide-c"])
    msg = ""
    try:
        choose_mode(lengths, 8, 2, 10_000, names=["slide-a", "slide-b", "slide-c"])
    except InvalidInput as exc:
        msg = str(exc)
    assert "\n" not in msg and "slide-b" in msg and "kB" in msg
    with pytest.raises(InvalidInput, match="bags-per-step"):
        choose_mode(lengths, 8, 2, 20_000, bags_per_step=3)


def test_parse_budget():
    assert parse_budget("6GB") == 6 * 10**9
    assert parse_budget("512mb") == 512 * 10**6
    assert parse_budget("1GiB") == 2**30
    assert parse_budget("12345") == 12345
    assert 0 < parse_budget("auto") and parse_budget(None) == pytest.approx(parse_budget("auto"), rel=0.2)
    for bad in ("lots", "-1GB", "0"):
        with pytest.raises(InvalidInput, match="memory-budget"):
            parse_budget(bad)


def test_streamed_source_checks_what_it_reads():
    src = StreamedBags(lambda i: np.zeros((3, 4), np.float16), [5], 4, torch.float16, names=["s-x"])
    with pytest.raises(InvalidInput, match=r"s-x: read \(3, 4\), expected \(5, 4\)"):
        src.bag(0)
