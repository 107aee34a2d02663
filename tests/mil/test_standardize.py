"""Feature standardisation with training-fold statistics: exact statistics from a streaming
pass, only training bags, applied per batch, and what it buys on features of mixed scales."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from histstore.mil.bags import pack_bags
from histstore.mil.splits import make_splits
from histstore.mil.standardize import CHECKPOINT_KEY, FeatureStats, StandardizedBags, fit_feature_stats
from histstore.mil.train_config import TrainConfig
from histstore.mil.trainer import train_fold

from .synthetic import planted_cohort


def test_streaming_statistics_equal_the_plain_ones_on_large_offsets():
    rng = np.random.default_rng(0)
    bags = [torch.from_numpy((1e4 + rng.standard_normal((int(n), 5)) * [1, 10, 0.1, 0, 1]).astype(np.float32))
            for n in rng.integers(1, 40, 30)]
    packed = pack_bags(bags)
    train = np.arange(0, 30, 2)
    stats = fit_feature_stats(packed, train)
    ref = np.concatenate([bags[i].double().numpy() for i in train])
    np.testing.assert_allclose(stats.mean.numpy(), ref.mean(0), rtol=1e-6)
    sd = ref.std(0)
    np.testing.assert_allclose(stats.std.numpy()[[0, 1, 2, 4]], sd[[0, 1, 2, 4]], rtol=1e-4)
    assert stats.std[3] == 1.0  # a constant feature is centred, not blown up
    # ... and so is one that varies only at float32 rounding (1e-3 at 1e4 is ~8 ulps)
    jitter = [torch.full((4, 1), 1e4) + torch.tensor([[0.0], [1e-3], [0.0], [-1e-3]]) for _ in range(3)]
    assert fit_feature_stats(pack_bags(jitter), [0, 1, 2]).std.item() == 1.0
    assert stats.n_tiles == len(ref)
    # only training bags shape the statistics
    changed = [b * 3 if i % 2 else b for i, b in enumerate(bags)]
    again = fit_feature_stats(pack_bags(changed), train)
    assert torch.equal(again.mean, stats.mean) and torch.equal(again.std, stats.std)


def test_standardized_bags_apply_per_bag_and_batch_and_keep_float16_storage():
    rng = np.random.default_rng(1)
    bags = [torch.from_numpy(rng.normal(5, 3, (int(n), 4)).astype(np.float32)) for n in (3, 7, 2)]
    packed = pack_bags(bags, dtype="float16")
    stats = fit_feature_stats(packed, [0, 1, 2])
    sb = StandardizedBags(packed, stats)
    assert packed.features.dtype == torch.float16  # the source stays as stored
    assert (len(sb), sb.dim, sb.device) == (3, 4, packed.device)
    np.testing.assert_array_equal(sb.lengths, packed.lengths)
    expect = (packed.bag(1).float() - stats.mean) / stats.std
    assert sb.bag(1).dtype == torch.float32
    torch.testing.assert_close(sb.bag(1), expect)
    x, seg = sb.batch([2, 0])
    torch.testing.assert_close(x, torch.cat([(packed.bag(i).float() - stats.mean) / stats.std for i in (2, 0)]))
    assert seg.tolist() == [0, 0, 1, 1, 1]
    all_tiles = torch.cat([sb.bag(i) for i in range(3)])
    torch.testing.assert_close(all_tiles.mean(0), torch.zeros(4), atol=1e-3, rtol=0)
    back = FeatureStats.from_checkpoint(stats.to_checkpoint())
    assert torch.equal(back.mean, stats.mean) and torch.equal(back.std, stats.std)


def _mixed_scales(seed: int):
    """The planted signal sits in small features next to a huge, uninformative one - as when
    features from another pipeline mix raw counts with normalised values."""
    c = planted_cohort(n_bags=60, dim=16, n_signal=4, shift=2.0, seed=seed)
    rng = np.random.default_rng(seed)
    bags = []
    for b in c.bags:
        x = b.clone() * 0.01  # signal features at 1e-2 scale
        x[:, -1] = torch.from_numpy(rng.normal(500.0, 300.0, b.shape[0]).astype(np.float32))
        bags.append(x)
    return c, bags


def test_standardisation_finds_signal_that_raw_scales_hide():
    c, bags = _mixed_scales(seed=3)
    tr, va, te = make_splits(c.case_ids, c.targets, 3, seed=0).indices(0)
    cfg = dict(epochs=25, patience=None, lr=1e-3, model_cfg={"hidden_dim": 32, "attn_dim": 16})
    on = train_fold(bags, c.targets, tr, va, te, TrainConfig(**cfg), seed=0)
    off = train_fold(bags, c.targets, tr, va, te, TrainConfig(standardize_features=False, **cfg), seed=0)
    assert on.metrics["test"]["auc"] >= 0.9, on.metrics["test"].values
    assert off.metrics["test"]["auc"] < on.metrics["test"]["auc"] - 0.15, off.metrics["test"].values
    # the fold keeps the training statistics it used (for its checkpoint)
    ref = torch.cat([bags[i] for i in tr]).double()
    np.testing.assert_allclose(on.feature_stats.mean.numpy(), ref.mean(0).numpy(), rtol=1e-5, atol=1e-7)
    assert off.feature_stats is None
    assert CHECKPOINT_KEY == "feature_standardization"


def test_statistics_ignore_validation_and_test_bags():
    c, bags = _mixed_scales(seed=4)
    tr, va, te = make_splits(c.case_ids, c.targets, 3, seed=0).indices(0)
    cfg = TrainConfig(epochs=1, model_cfg={"hidden_dim": 8, "attn_dim": 4})
    a = train_fold(bags, c.targets, tr, va, te, cfg, seed=0)
    moved = [b + 1000 if i in set(va) | set(te) else b for i, b in enumerate(bags)]
    b = train_fold(moved, c.targets, tr, va, te, cfg, seed=0)
    assert torch.equal(a.feature_stats.mean, b.feature_stats.mean)
    for k in a.model_state:  # training saw the same inputs: the same weights
        assert torch.equal(a.model_state[k], b.model_state[k])


@pytest.mark.parametrize("bad", [np.arange(0)])
def test_no_training_bags_is_an_error(bad):
    with pytest.raises(ValueError):
        fit_feature_stats(pack_bags([torch.zeros(2, 3)]), bad)
