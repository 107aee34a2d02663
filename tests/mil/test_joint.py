"""The multi-output (joint) MIL model and its fold trainer: shapes, the masked loss, and each
output finding its own planted tiles."""
import numpy as np
import pytest
import torch

from histstore.errors import InvalidInput
from histstore.mil.bags import pack_bags
from histstore.mil.joint import masked_losses, train_joint_fold
from histstore.mil.models import MODELS, build_model, build_model_from_spec, multi_output_name
from histstore.mil.train_config import TrainConfig


@pytest.mark.parametrize("base", ["gated-attention", "attention"])
def test_multi_output_forward_shapes(base):
    torch.manual_seed(0)
    m = build_model(multi_output_name(base), 16, 3, hidden_dim=8, attn_dim=4)
    out = m(torch.randn(7, 16))
    assert out.logits.shape == (3,) and out.attention.shape == (7, 3)
    assert torch.allclose(out.attention.sum(0), torch.ones(3))  # one softmax map per output
    # a batch of bags gives each bag's own numbers
    x, seg = torch.randn(10, 16), torch.tensor([0] * 4 + [1] * 6)
    both = m.forward_segments(x, seg, 2)
    assert both.logits.shape == (2, 3) and both.attention.shape == (10, 3)
    assert torch.allclose(both.logits[1], m(x[4:]).logits, atol=1e-6)
    # the checkpoint spec rebuilds it; the branches differ (one attention column per output)
    again = build_model_from_spec(m.spec())
    again.load_state_dict(m.state_dict())
    assert torch.equal(again(x[:4]).logits, m(x[:4]).logits)
    assert not torch.allclose(out.attention[:, 0], out.attention[:, 1])
    assert multi_output_name(base) not in MODELS  # not a --model choice of its own


def test_no_multi_output_form():
    with pytest.raises(InvalidInput, match="no multi-output form"):
        multi_output_name("mean")


def test_masked_target_gives_zero_loss_and_gradient():
    logits = torch.full((2, 3), 0.3, requires_grad=True)
    y = torch.tensor([[1.0, float("nan"), 0.0], [float("nan"), 1.0, 1.0]])
    mask = ~torch.isnan(y)
    for task in ("classification", "regression"):
        loss = masked_losses(logits, y, mask, task)
        assert torch.isfinite(loss).all() and loss[0, 1] == 0 and loss[1, 0] == 0
        (g,) = torch.autograd.grad(loss.sum(), logits)
        assert g[0, 1] == 0 and g[1, 0] == 0 and (g[mask] != 0).all()
    # a model's weights get no gradient from an output whose targets are all masked
    torch.manual_seed(0)
    m = build_model("gated-attention-multi", 8, 2, hidden_dim=8, attn_dim=4)
    out = m(torch.randn(5, 8))
    loss = masked_losses(out.logits[None], torch.tensor([[1.0, float("nan")]]),
                         torch.tensor([[True, False]]), "classification")
    loss.sum().backward()
    assert m.heads.weight.grad[1].abs().sum() == 0 and m.attn_w.weight.grad[1].abs().sum() == 0
    assert m.heads.weight.grad[0].abs().sum() > 0


def _panel(n=60, dim=16, k_out=3, seed=0):
    """Bags of N(0, I) tiles; a bag positive for output k holds 4 tiles shifted on output k's
    own 4 features (its own 'subregion'); 15 % of targets missing (NaN)."""
    rng = np.random.default_rng(seed)
    bags, y, planted = [], np.zeros((n, k_out)), []
    for _ in range(n):
        size = int(rng.integers(20, 40))
        x = rng.standard_normal((size, dim)).astype(np.float32)
        where = np.full(size, -1)
        for k in range(k_out):
            y[len(bags), k] = rng.random() < 0.5
            if y[len(bags), k]:
                rows = np.arange(k * 5, k * 5 + 4)
                x[rows, k * 4:(k + 1) * 4] += 2.0
                where[rows] = k
        bags.append(x)
        planted.append(where)
    y[rng.random((n, k_out)) < 0.15] = np.nan
    return bags, y, planted


def test_joint_fold_finds_each_outputs_own_tiles():
    bags, y, planted = _panel()
    cfg = TrainConfig(model="gated-attention-multi", model_cfg={"hidden_dim": 32, "attn_dim": 16}, epochs=20,
                      patience=5, lr=5e-4, n_classes=2, decision_threshold="val")
    idx = np.random.default_rng(1).permutation(len(bags))
    te, va, tr = idx[:15], idx[15:23], idx[23:]
    results = train_joint_fold(pack_bags(bags), y, tr, va, te, cfg, seed=0)
    assert len(results) == 3
    for k, r in enumerate(results):
        has = ~np.isnan(y[:, k])
        # only bags with output k's target are predicted for it
        assert set(r.test.index) == set(te[has[te]]) and set(r.test_attention) == set(te[has[te]])
        assert r.metrics["test"]["auc"] >= 0.9, (k, r.metrics["test"].values)
        assert 0 < r.threshold < 1
        own = np.mean([a[planted[i] == k].mean() for i, a in r.test_attention.items() if (planted[i] == k).any()])
        rest = np.mean([a[planted[i] != k].mean() for i, a in r.test_attention.items()])
        assert own > 2 * rest, (k, own, rest)  # each output's map peaks on its own tiles
    assert len({r.best_epoch for r in results}) == 1  # one model: one selected epoch
