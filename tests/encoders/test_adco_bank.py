"""AdCo adversarial bank: closed-form gradient vs autograd, ascent, momentum update, init."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from histstore.encoders.bank import AdversarialBank, bank_loss, closed_form_grad


def _data(n, m, k, dim, seed=0, dtype=torch.float64):
    """q [n, dim]; key columns [n, m]: m = 1 the own key (the paper's row), m >= n every key
    of a global batch whose rows 0..n-1 are these queries (the official code's row)."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, dim, generator=g, dtype=dtype), dim=1)
    noise = torch.randn(max(m, n), dim, generator=g, dtype=dtype)
    # own keys close to their queries (cosine ~0.9); the rest of the global batch unrelated
    keys = F.normalize(torch.cat([q + 0.5 * noise[:n] / dim**0.5, noise[n:]]), dim=1)
    key_sims = (q * keys[:n]).sum(1, keepdim=True) if m == 1 else q @ keys[:m].T
    # unnormalised bank columns with very different norms
    W = torch.randn(dim, k, generator=g, dtype=dtype) * torch.empty(1, k, dtype=dtype).uniform_(0.3, 3.0, generator=g)
    return q, key_sims, W


def _targets(n, m):
    return torch.zeros(n, dtype=torch.long) if m == 1 else torch.arange(n)


@pytest.mark.parametrize("n,m,k,dim", [(1, 1, 3, 4), (5, 1, 40, 16), (6, 1, 25, 12),   # paper: own key only
                                       (5, 5, 40, 16), (16, 16, 7, 8), (4, 12, 9, 6)])  # official: all keys
@pytest.mark.parametrize("t_mem", [0.02, 0.2, 1.0])
def test_closed_form_grad_is_minus_autograd(n, m, k, dim, t_mem):
    q, key_sims, W = _data(n, m, k, dim, seed=n * 100 + k)
    Wg = W.clone().requires_grad_(True)
    bank_loss(q, Wg, t_mem, key_sims, _targets(n, m)).backward()
    g = closed_form_grad(q, W, t_mem, key_sims)
    assert g.dtype == torch.float64 and g.shape == (dim, k)
    torch.testing.assert_close(g, -Wg.grad, rtol=1e-9, atol=1e-12)


def test_bank_gradient_averaged_over_ranks_is_the_global_batchs():
    """Two ranks' gradients from their halves of the queries, averaged (the all-reduce), are the
    gradient of all the queries: the bank update does not depend on how the batch is split."""
    q, key_sims, W = _data(8, 1, 30, 6, seed=4)
    whole = closed_form_grad(q, W, 0.02, key_sims)
    halves = [closed_form_grad(q[i:i + 4], W, 0.02, key_sims[i:i + 4]) for i in (0, 4)]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole, rtol=1e-12, atol=1e-14)
    bank = AdversarialBank(6, 30, t_mem=0.02).double()
    bank.W.copy_(W)
    bank.step(q[:4], key_sims[:4], torch.zeros(4, dtype=torch.long), average=lambda g: g.copy_((halves[0] + halves[1]) / 2))
    torch.testing.assert_close(bank.v, whole + 1e-4 * W)


def test_closed_form_grad_bank_only_row():
    """Without key columns the row is the bank alone; still minus the autograd gradient of
    -log softmax at any non-bank target (here: logsumexp of the bank logits)."""
    q, _, W = _data(4, 4, 9, 5, seed=3)
    Wg = W.clone().requires_grad_(True)
    Wn = Wg / Wg.norm(dim=0, keepdim=True)
    torch.logsumexp(q @ Wn / 0.05, dim=1).mean().backward()
    torch.testing.assert_close(closed_form_grad(q, W, 0.05), -Wg.grad, rtol=1e-9, atol=1e-12)


def test_bank_step_follows_the_momentum_formula_exactly():
    q, key_sims, _ = _data(8, 1, 30, 6, seed=1)
    bank = AdversarialBank(6, 30, t_mem=0.05, lr=0.3, momentum=0.9, weight_decay=1e-2).double()
    W0 = bank.W.clone()
    v = torch.zeros_like(W0)
    W = W0.clone()
    for _ in range(3):
        g = closed_form_grad(q, W, 0.05, key_sims)
        v = 0.9 * v + g + 1e-2 * W
        W = W - 0.3 * v
        bank.step(q, key_sims, torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(bank.W, W)
    torch.testing.assert_close(bank.v, v)


@pytest.mark.parametrize("seed", range(3))
def test_one_bank_step_raises_its_loss(seed):
    q, key_sims, _ = _data(32, 1, 256, 16, seed=seed, dtype=torch.float32)
    t = torch.zeros(32, dtype=torch.long)
    bank = AdversarialBank(16, 256, t_mem=0.02, lr=0.3, momentum=0.9, weight_decay=1e-4)
    bank.init_from_keys(F.normalize(torch.randn(256, 16, generator=torch.Generator().manual_seed(1000 + seed)), dim=1))
    before = bank_loss(q, bank.W, 0.02, key_sims, t)
    out = bank.step(q, key_sims, t)
    after = bank_loss(q, bank.W, 0.02, key_sims, t)
    torch.testing.assert_close(out["bank_loss"], before)
    assert after > before


def test_init_fills_bank_with_keys_in_order():
    bank = AdversarialBank(8, 10)
    keys = torch.randn(4, 8) * 3
    assert bank.init_from_keys(keys) == 4 and not bank.is_full
    assert bank.init_from_keys(keys) == 4
    assert bank.init_from_keys(keys) == 2 and bank.is_full
    assert bank.init_from_keys(keys) == 0
    expected = F.normalize(torch.cat([keys, keys, keys[:2]]), dim=1).T
    torch.testing.assert_close(bank.W, expected)
    torch.testing.assert_close(bank.negatives(), expected)
    assert int(bank.filled) == 10
    assert torch.all(bank.v == 0)


def test_bank_state_is_buffers_not_parameters():
    bank = AdversarialBank(4, 6)
    assert list(bank.parameters()) == []
    assert {"W", "v", "filled"} <= set(bank.state_dict())


@pytest.mark.parametrize(
    "kwargs",
    [dict(dim=4, size=0), dict(dim=0, size=4), dict(dim=4, size=4, t_mem=0.0),
     dict(dim=4, size=4, t_mem=-1), dict(dim=4, size=4, momentum=1.0), dict(dim=4, size=4, lr=-0.1)],
)
def test_constructor_validates(kwargs):
    with pytest.raises(ValueError):
        AdversarialBank(**kwargs)


def test_softmax_runs_in_fp32_under_bf16_autocast():
    q, key_sims, _ = _data(8, 1, 50, 16, seed=2, dtype=torch.float32)
    bank = AdversarialBank(16, 50, t_mem=0.02)
    W = bank.W.clone()
    ref = closed_form_grad(q, W, 0.02, key_sims)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = closed_form_grad(q.bfloat16(), W, 0.02, key_sims)
        bank.step(q, key_sims, torch.zeros(8, dtype=torch.long))
    assert g.dtype == torch.float32 and bank.W.dtype == torch.float32
    # bf16 inputs round q, but the softmax itself is fp32: gradients stay close
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g, ref, rtol=0.1, atol=0.5)
    expected_W = W - 0.3 * (ref + 1e-4 * W)
    torch.testing.assert_close(bank.W, expected_W, rtol=1e-5, atol=1e-5)


def test_bank_memory_estimate_and_fit():
    from histstore.encoders.bank import bank_step_bytes, fit_bank_size

    need = bank_step_bytes(318193, 128, 250)
    assert 2e9 < need < 5e9  # HistCode's bank at its batch: a few GB
    assert fit_bank_size(318193, 128, 250, need) == 318193
    fitted = fit_bank_size(318193, 128, 250, need // 4)
    assert fitted < 318193 and bank_step_bytes(fitted, 128, 250) <= need // 4 < bank_step_bytes(fitted + 1, 128, 250)
