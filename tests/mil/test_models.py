"""Models: shapes, attention, forward/backward, batched (segment) path == one bag at a time."""
from __future__ import annotations

import pytest
import torch

from histstore.errors import InvalidInput
from histstore.mil import segments
from histstore.mil.models import MODELS, build_model, build_model_from_spec, model_names

D = 16
SIZES = (1, 3, 10, 37)  # 1 tile; fewer than mil-rnn's k = 10; exactly k; more


def _models(n_outputs):
    torch.manual_seed(0)
    return [build_model(name, D, n_outputs) for name in model_names()]


def test_registry_lists_all_models():
    assert set(model_names()) == {"gated-attention", "attention", "mean", "max", "dsmil",
                                  "mil-rnn"}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("n_outputs", [1, 2, 3])
@pytest.mark.parametrize("n", SIZES)
def test_forward_backward_shapes(name, n_outputs, n):
    torch.manual_seed(n)
    model = build_model(name, D, n_outputs)
    out = model(torch.randn(n, D))
    assert out.logits.shape == (n_outputs,)
    assert out.attention is not None and out.attention.shape == (n,)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.attention).all()
    loss = out.logits.square().sum()
    if out.aux_logits is not None:
        assert out.aux_logits.shape == (n_outputs,)
        loss = loss + out.aux_logits.square().sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["gated-attention", "attention", "dsmil", "max"])
@pytest.mark.parametrize("n", SIZES)
def test_normalised_attention_sums_to_one(name, n):
    torch.manual_seed(1)
    model = build_model(name, D, 2)
    assert model.attention_kind in ("softmax", "share")
    a = model(torch.randn(n, D)).attention
    assert (a >= 0).all()
    assert a.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_gated_attention_matches_paper_layout():
    m = build_model("gated-attention", 1024, 2)
    assert m.embed[0].weight.shape == (512, 1024)
    assert m.attn_vu.weight.shape == (2 * 256, 512)
    assert m.attn_w.weight.shape == (1, 256)
    assert m.classifier.weight.shape == (2, 512)
    # alpha = softmax(w^T [tanh(V h') * sigmoid(U h')]), z = sum alpha h'
    x = torch.randn(7, 1024)
    h = m.embed(x)
    v, u = m.attn_vu(h).chunk(2, dim=-1)
    alpha = torch.softmax(m.attn_w(torch.tanh(v) * torch.sigmoid(u))[:, 0], 0)
    out = m(x)
    torch.testing.assert_close(out.attention, alpha)
    torch.testing.assert_close(out.logits, m.classifier(alpha @ h))


def test_mil_rnn_uses_top_k_in_score_order():
    torch.manual_seed(0)
    m = build_model("mil-rnn", D, 2, k=3)
    x = torch.randn(8, D)
    score = m.instance(x)[:, 0]
    top = torch.argsort(score, descending=True)[:3]
    state = torch.zeros(1, 128)
    for t in top:
        state = torch.relu(m.rnn_in(x[t:t + 1]) + m.rnn_state(state))
    torch.testing.assert_close(m(x).logits, m.rnn_out(state)[0])


def test_dsmil_critical_instance_attention():
    torch.manual_seed(0)
    m = build_model("dsmil", D, 2)
    x = torch.randn(9, D)
    c = m.instance(x)[:, 0]
    q = m.q(x)
    a = torch.softmax(q @ q[c.argmax()] / q.shape[1] ** 0.5, 0)
    out = m(x)
    torch.testing.assert_close(out.attention, a)
    torch.testing.assert_close(out.aux_logits, torch.stack([torch.zeros(()), c.max()]))
    assert out.aux_weight == 0.5


def _batch(bags):
    x = torch.cat(bags)
    seg = torch.repeat_interleave(torch.arange(len(bags)), torch.tensor([len(b) for b in bags]))
    return x, seg


@pytest.mark.parametrize("n_outputs", [1, 2, 3])
def test_segments_equal_one_bag_at_a_time(n_outputs):
    bags = [torch.randn(n, D) for n in (1, 5, 12, 3, 40)]
    x, seg = _batch(bags)
    for model in _models(n_outputs):
        model.eval()
        out = model.forward_segments(x, seg, len(bags))
        assert out.logits.shape == (len(bags), n_outputs)
        for i, b in enumerate(bags):
            one = model(b)
            torch.testing.assert_close(out.logits[i], one.logits, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(out.attention[seg == i], one.attention, atol=1e-5,
                                       rtol=1e-4)
            if one.aux_logits is not None:
                torch.testing.assert_close(out.aux_logits[i], one.aux_logits, atol=1e-5,
                                           rtol=1e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batched_gradient_is_mean_of_single_bag_gradients(name):
    torch.manual_seed(3)
    model = build_model(name, D, 2)
    bags = [torch.randn(n, D) for n in (4, 11, 25)]
    y = torch.tensor([0, 1, 1])

    def loss_of(out, target):
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 2), target.reshape(-1))
        if out.aux_logits is not None:
            aux = torch.nn.functional.cross_entropy(out.aux_logits.reshape(-1, 2),
                                                    target.reshape(-1))
            loss = (1 - out.aux_weight) * loss + out.aux_weight * aux
        return loss

    model.zero_grad()
    x, seg = _batch(bags)
    loss_of(model.forward_segments(x, seg, 3), y).backward()
    batched = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for b, t in zip(bags, y):
        (loss_of(model(b), t) / 3).backward()
    for g1, p in zip(batched, model.parameters()):
        torch.testing.assert_close(g1, p.grad, atol=1e-5, rtol=1e-4)


def test_segment_ops_against_loops():
    torch.manual_seed(0)
    lengths = [3, 1, 6]
    x = torch.randn(sum(lengths), 4)
    seg = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))
    parts = torch.split(x, lengths)
    torch.testing.assert_close(segments.segment_sum(x, seg, 3),
                               torch.stack([p.sum(0) for p in parts]))
    torch.testing.assert_close(segments.segment_max(x, seg, 3),
                               torch.stack([p.amax(0) for p in parts]))
    torch.testing.assert_close(segments.segment_softmax(x, seg, 3),
                               torch.cat([torch.softmax(p, 0) for p in parts]))
    starts = [0, 3, 4]
    torch.testing.assert_close(segments.segment_argmax(x, seg, 3),
                               torch.stack([p.argmax(0) + s for p, s in zip(parts, starts)]))
    idx, valid = segments.segment_topk(x[:, 0], seg, 3, k=2)
    for b, (p, s) in enumerate(zip(parts, starts)):
        want = (torch.argsort(p[:, 0], descending=True)[:2] + s).tolist()
        assert idx[b][valid[b]].tolist() == want


def test_spec_round_trip_and_bad_settings():
    m = build_model("attention", D, 2, dropout=0.1)
    assert m.config.hidden_dim == 500 and m.config.attn_dim == 128  # Ilse et al.'s dims
    m2 = build_model_from_spec(m.spec())
    m2.load_state_dict(m.state_dict())
    assert m2.config == m.config
    with pytest.raises(InvalidInput, match="unknown model"):
        build_model("transformer", D, 2)
    with pytest.raises(InvalidInput, match="no setting"):
        build_model("gated-attention", D, 2, heads=4)
    with pytest.raises(InvalidInput, match="dropout"):
        build_model("mean", D, 2, dropout=1.5)
