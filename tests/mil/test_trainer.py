"""Trainer: learning planted signal, determinism, validation-only selection, CV orchestration.

Learning tests use lr 1e-3 (HistCode's 1e-4 is for cohorts of hundreds of slides; these
tiny synthetic cohorts would need many more epochs).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from histstore.errors import InvalidInput
from histstore.mil.bags import pack_bags
from histstore.mil.metrics import aggregate
from histstore.mil.models import build_model_from_spec, model_names
from histstore.mil.splits import make_splits
from histstore.mil.standardize import StandardizedBags
from histstore.mil.cross_validation import run_cv
from histstore.mil.evaluation import evaluate
from histstore.mil.train_config import TrainConfig
from histstore.mil.trainer import bag_losses, train_fold

from .synthetic import planted_cohort, shifted_cohort

FAST = dict(lr=1e-3, patience=8)
SMALL = {"hidden_dim": 64, "attn_dim": 32}  # gated attention, small: for tests of mechanics


@pytest.fixture(scope="module")
def cohort():
    return planted_cohort(n_bags=60, seed=1)


@pytest.fixture(scope="module")
def split(cohort):
    return make_splits(cohort.case_ids, cohort.targets, 4, seed=0).indices(0)


def _top_attention_precision(result, cohort):
    """Over positive test bags: share of the k highest-attention tiles that are planted
    tumour tiles (k = number planted)."""
    hits = []
    for i, a in result.test_attention.items():
        if cohort.targets[i] == 1:
            k = int(cohort.planted[i].sum())
            hits.append(cohort.planted[i][np.argsort(-a)[:k]].mean())
    return float(np.mean(hits))


def test_gated_attention_finds_planted_tumour_tiles(cohort):
    results = list(run_cv(cohort.bags, cohort.targets, cohort.case_ids,
                          TrainConfig(epochs=20, **FAST), n_folds=3, seed=0))
    assert [r.fold for r in results] == [0, 1, 2]
    summary = aggregate(r.metrics["test"] for r in results)
    assert summary["auc"].mean >= 0.9
    assert min(r.metrics["test"]["auc"] for r in results) >= 0.9
    # random tiles would give ~4/40 = 0.1; attention concentrates on the planted ones
    assert np.mean([_top_attention_precision(r, cohort) for r in results]) >= 0.6
    for r in results:
        for i, a in r.test_attention.items():
            assert a.shape == (len(cohort.bags[i]),)
            assert a.sum() == pytest.approx(1.0, abs=1e-4)


def test_mini_batches_of_bags_learn_too(cohort, split):
    r = train_fold(cohort.bags, cohort.targets, *split,
                   TrainConfig(epochs=25, bags_per_step=4, **FAST), seed=0)
    assert r.metrics["test"]["auc"] >= 0.9
    assert _top_attention_precision(r, cohort) >= 0.6


@pytest.mark.parametrize("name", model_names())
def test_each_model_beats_chance(name):
    easy = planted_cohort(n_bags=48, n_range=(12, 30), n_tumour=(4, 8), shift=3.0, seed=2)
    tr, va, te = make_splits(easy.case_ids, easy.targets, 3, seed=0).indices(0)
    r = train_fold(easy.bags, easy.targets, tr, va, te, TrainConfig(model=name, epochs=15, **FAST),
                   seed=0)
    assert r.metrics["test"]["auc"] >= 0.8, (name, r.metrics["test"].values)
    assert r.metrics["test"]["accuracy"] > 0.6
    assert r.attention_kind in ("softmax", "share", "score")
    assert set(r.test_attention) == set(te.tolist())


@pytest.mark.parametrize("name", ["gated-attention", "mean"])
def test_regression_on_a_synthetic_target(name):
    c = shifted_cohort(n_bags=60, seed=3)
    tr, va, te = make_splits(c.case_ids, c.targets, 4, seed=0, task="regression").indices(0)
    cfg = TrainConfig(model=name, task="regression", epochs=30, **FAST)
    r = train_fold(c.bags, c.targets, tr, va, te, cfg, seed=0)
    m = r.metrics["test"]
    assert m["pearson"] >= 0.8 and m["spearman"] >= 0.7
    assert m["mse"] < 0.5 * np.var(c.targets[te])
    assert r.n_outputs == 1 and r.target_scale is not None
    np.testing.assert_allclose(r.test.pred, r.test.score)


def _same(a, b):
    assert a.best_epoch == b.best_epoch
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
    assert [h.val_loss for h in a.history] == [h.val_loss for h in b.history]
    np.testing.assert_array_equal(a.val.score, b.val.score)
    np.testing.assert_array_equal(a.test.score, b.test.score)
    for k in a.model_state:
        assert torch.equal(a.model_state[k], b.model_state[k])


@pytest.mark.parametrize("bags_per_step,mode", [(1, "auto"), (3, "concat"), (3, "accumulate")])
def test_deterministic_with_a_seed(cohort, split, bags_per_step, mode):
    cfg = TrainConfig(epochs=3, bags_per_step=bags_per_step, batch_mode=mode,
                      model_cfg={**SMALL, "dropout": 0.2}, **FAST)
    a = train_fold(cohort.bags, cohort.targets, *split, cfg, seed=5)
    b = train_fold(cohort.bags, cohort.targets, *split, cfg, seed=5)
    _same(a, b)
    c = train_fold(cohort.bags, cohort.targets, *split, cfg, seed=6)
    assert [h.train_loss for h in a.history] != [h.train_loss for h in c.history]


def test_concat_and_accumulate_steps_agree(cohort, split):
    runs = [train_fold(cohort.bags, cohort.targets, *split,
                       TrainConfig(epochs=2, bags_per_step=3, batch_mode=mode, model_cfg=SMALL,
                                   **FAST), seed=0) for mode in ("concat", "accumulate")]
    for k, v in runs[0].model_state.items():
        torch.testing.assert_close(v, runs[1].model_state[k], atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(runs[0].test.score, runs[1].test.score, atol=1e-4)


def test_test_labels_never_reach_model_selection(cohort, split):
    tr, va, te = split
    cfg = TrainConfig(epochs=12, patience=3, model_cfg=SMALL, lr=3e-3)
    a = train_fold(cohort.bags, cohort.targets, tr, va, te, cfg, seed=0)
    flipped = cohort.targets.copy()
    flipped[te] = 1 - flipped[te]
    b = train_fold(cohort.bags, flipped, tr, va, te, cfg, seed=0)
    _same(a, b)  # same epochs, same chosen epoch, same weights, same test scores
    np.testing.assert_array_equal(b.test.target, flipped[te])
    assert a.metrics["test"]["auc"] == pytest.approx(1 - b.metrics["test"]["auc"])


def test_selected_epoch_is_best_on_validation_and_its_weights_are_returned(cohort, split):
    cfg = TrainConfig(epochs=10, patience=None, model_cfg=SMALL, lr=3e-3)
    r = train_fold(cohort.bags, cohort.targets, *split, cfg, seed=1)
    val_losses = [h.val_loss for h in r.history]
    assert len(r.history) == 10
    assert r.best_epoch == 1 + int(np.argmin(val_losses))
    assert sum(h.improved for h in r.history) >= 1 and r.history[r.best_epoch - 1].improved
    # the returned weights (on features standardised with the fold's training statistics)
    # reproduce the selected epoch's validation loss
    model = build_model_from_spec(r.model_spec)
    model.load_state_dict(r.model_state)
    packed = StandardizedBags(pack_bags(cohort.bags), r.feature_stats)
    ev = evaluate(model, packed, r.val_idx)
    loss = bag_losses(ev.logits, None, 0.0, torch.as_tensor(cohort.targets[r.val_idx]),
                      "classification").mean().item()
    assert loss == pytest.approx(val_losses[r.best_epoch - 1], rel=1e-5)


def test_early_stopping_when_validation_stops_improving():
    # no signal: the model overfits the training labels and validation loss rises
    noise = planted_cohort(n_bags=40, shift=0.0, seed=5)
    tr, va, te = make_splits(noise.case_ids, noise.targets, 4, seed=0,
                             val_fraction=0.3).indices(0)
    for select_on in ("loss", "auc"):
        r = train_fold(noise.bags, noise.targets, tr, va, te,
                       TrainConfig(epochs=40, patience=3, select_on=select_on, lr=1e-2,
                                   model_cfg=SMALL), seed=0)
        assert len(r.history) == r.best_epoch + 3 < 40, select_on
        assert not any(h.improved for h in r.history[r.best_epoch:])
        if select_on == "auc":  # highest validation AUC, ties to the lower validation loss
            keys = [(-h.val_metrics["auc"], h.val_loss) for h in r.history]
            assert r.best_epoch == 1 + min(range(len(keys)), key=keys.__getitem__)


def test_no_validation_keeps_last_epoch(cohort, split):
    tr, va, te = split
    r = train_fold(cohort.bags, cohort.targets, np.r_[tr, va], [], te,
                   TrainConfig(epochs=3, model_cfg=SMALL, **FAST), seed=0)
    assert r.best_epoch == 3 and any("no validation" in n for n in r.notes)
    assert all(math.isnan(h.val_loss) for h in r.history)


def test_select_last_is_a_fixed_schedule(cohort, split):
    """select_on='last': every epoch runs (patience cannot stop it) and the last is kept;
    validation is still evaluated and reported."""
    r = train_fold(cohort.bags, cohort.targets, *split,
                   TrainConfig(epochs=4, patience=1, select_on="last", model_cfg=SMALL, **{"lr": 1e-3}), seed=0)
    assert len(r.history) == 4 and r.best_epoch == 4 and all(h.improved for h in r.history)
    assert all(not math.isnan(h.val_loss) for h in r.history)


def test_class_weights_act_per_bag():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.1], [-1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    w = torch.tensor([0.25, 3.0])
    plain = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(bag_losses(logits, None, 0.0, y, "classification", w), plain * w[y])
    # one-bag steps keep the weight (a weighted CE with reduction='mean' would cancel it)
    one = bag_losses(logits[1:2], None, 0.0, y[1:2], "classification", w)
    torch.testing.assert_close(one, plain[1:2] * 3.0)


def test_balanced_class_weights_raise_minority_scores():
    c = planted_cohort(n_bags=60, seed=4, shift=0.7, n_tumour=(2, 3))
    keep = np.flatnonzero((c.targets == 0) | (np.arange(60) % 4 == 1))  # ~1 positive in 7
    bags = [c.bags[i] for i in keep]
    y = c.targets[keep]
    idx = np.arange(len(y))
    te = idx[::5]
    tr = np.setdiff1d(idx, te)
    cfg = dict(epochs=5, model_cfg=SMALL, lr=1e-3, patience=None)
    none = train_fold(bags, y, tr, [], te, TrainConfig(**cfg), seed=0)
    bal = train_fold(bags, y, tr, [], te, TrainConfig(class_weight="balanced", **cfg), seed=0)
    assert bal.test.score.mean() > none.test.score.mean()


def test_run_cv_resume_skips_finished_folds(cohort):
    cfg = TrainConfig(epochs=2, model_cfg=SMALL, **FAST)
    full = list(run_cv(cohort.bags, cohort.targets, cohort.case_ids, cfg, n_folds=3, seed=4))
    rest = list(run_cv(cohort.bags, cohort.targets, cohort.case_ids, cfg, n_folds=3, seed=4,
                       skip_folds={0, 2}))
    assert [r.fold for r in rest] == [1]
    _same(full[1], rest[0])
    # every bag is a test bag exactly once, with a prediction
    tested = np.sort(np.concatenate([r.test.index for r in full]))
    assert tested.tolist() == list(range(len(cohort.bags)))
    rows = full[0].prediction_rows()
    assert {r["subset"] for r in rows} == {"val", "test"}
    assert set(rows[0]) == {"fold", "bag", "subset", "target", "score", "pred"}


def test_progress_callback_sees_every_epoch(cohort, split):
    seen = []
    train_fold(cohort.bags, cohort.targets, *split, TrainConfig(epochs=3, model_cfg=SMALL),
               seed=0, fold=7, progress_cb=seen.append)
    assert [(r.fold, r.epoch) for r in seen] == [(7, 1), (7, 2), (7, 3)]


def test_half_precision_storage_and_packing(cohort, split):
    cfg = TrainConfig(epochs=2, model_cfg=SMALL, feature_dtype="float16", bags_per_step=2)
    packed = pack_bags(cohort.bags, dtype="float16")
    assert packed.features.dtype == torch.float16 and len(packed) == len(cohort.bags)
    x, seg = packed.batch([3, 0])
    assert torch.equal(x[: len(cohort.bags[3])].float(), cohort.bags[3].half().float())
    assert seg.tolist() == [0] * len(cohort.bags[3]) + [1] * len(cohort.bags[0])
    r = train_fold(packed, cohort.targets, *split, cfg, seed=0)
    assert np.isfinite(r.test.score).all()


def test_bad_input_is_rejected_before_training(cohort, split):
    tr, va, te = split
    with pytest.raises(InvalidInput, match="overlap"):
        train_fold(cohort.bags, cohort.targets, tr, va, np.r_[te, tr[:1]], TrainConfig())
    with pytest.raises(InvalidInput, match="class indices"):
        train_fold(cohort.bags, cohort.targets + 0.5, tr, va, te, TrainConfig())
    with pytest.raises(InvalidInput, match="NaN"):
        train_fold(cohort.bags, np.full(len(cohort.bags), np.nan), tr, va, te,
                   TrainConfig(task="regression"))
    with pytest.raises(InvalidInput, match=r"expected \[N >= 1, D\]"):
        train_fold([torch.zeros(0, 4), torch.zeros(3, 4)], [0, 1], [0], [], [1], TrainConfig())
    with pytest.raises(InvalidInput, match="different feature dims"):
        pack_bags([torch.zeros(2, 4), torch.zeros(3, 5)])
    with pytest.raises(InvalidInput, match="cases for 5 folds"):
        run_cv(cohort.bags[:3], cohort.targets[:3], ["a", "b", "c"], TrainConfig())
    with pytest.raises(InvalidInput, match="single class"):
        run_cv(cohort.bags[:10], np.zeros(10, dtype=int), [str(i) for i in range(10)])
    with pytest.raises(InvalidInput, match="unknown model"):
        TrainConfig(model="rnn")
    with pytest.raises(InvalidInput, match="no setting"):
        TrainConfig(model="mean", model_cfg={"attn_dim": 4})
    with pytest.raises(InvalidInput, match="select_on=auc"):
        TrainConfig(task="regression", select_on="auc")


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("task", ["regression", "3-class"])
def test_every_model_runs_every_task(name, task):
    c = planted_cohort(n_bags=24, n_range=(5, 15), dim=8, seed=6)
    if task == "regression":
        y, cfg = c.targets + np.linspace(0, 1, 24), TrainConfig(model=name, task="regression",
                                                                 epochs=2, bags_per_step=2)
    else:
        y, cfg = np.arange(24) % 3, TrainConfig(model=name, epochs=2, bags_per_step=2)
    r = train_fold(c.bags, y, np.arange(16), np.arange(16, 20), np.arange(20, 24), cfg, seed=0)
    assert np.isfinite(r.test.score).all() and len(r.test_attention) == 4
    if task == "3-class":
        assert r.test.probs.shape == (4, 3)
        np.testing.assert_allclose(r.test.probs.sum(1), 1.0, rtol=1e-6)
        assert set(r.metrics["test"].values) >= {"auc", "accuracy", "balanced_accuracy", "f1"}
    else:
        assert set(r.metrics["test"].values) >= {"mse", "pearson", "spearman"}
