"""AdCo encoder loss and NT-Xent: shapes, positive column, slow references, closed forms."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from histstore.encoders.losses import adco_logits, adco_loss, contrastive_accuracy, nt_xent, nt_xent_rows, nt_xent_targets


def _unit(*shape, seed=0, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


@pytest.mark.parametrize("n,k,dim", [(1, 5, 8), (7, 30, 16), (16, 3, 4)])
@pytest.mark.parametrize("t", [0.07, 0.12, 0.5])
def test_adco_logits_are_the_papers_own_key_and_bank(n, k, dim, t):
    q, kk, Wn = _unit(n, dim, seed=1), _unit(n, dim, seed=2), _unit(k, dim, seed=3).T
    logits = adco_logits(q, kk, Wn, t)
    # row i: [q_i . k_i, q_i . Wn] / t; no other image's key is in the row; positive column 0
    assert logits.shape == (n, 1 + k)
    torch.testing.assert_close(logits[:, 0], (q * kk).sum(1) / t)
    torch.testing.assert_close(logits[:, 1:], q @ Wn / t)
    loss, _, targets = adco_loss(q, kk, Wn, t)
    assert torch.equal(targets, torch.zeros(n, dtype=torch.long))
    ref = sum(-torch.log(torch.exp(q[i] @ kk[i] / t) / (torch.exp(q[i] @ kk[i] / t) + torch.exp(q[i] @ Wn / t).sum()))
              for i in range(n)) / n
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("offset", [0, 3])
def test_adco_in_batch_layout_is_the_official_codes_with_global_labels(offset):
    n, m, k, dim, t = 4, 10, 6, 8, 0.12
    q, Wn = _unit(n, dim, seed=1), _unit(k, dim, seed=3).T
    all_keys = _unit(m, dim, seed=2)  # the global batch's keys; this rank's are rows offset..
    own = all_keys[offset:offset + n]
    loss, logits, targets = adco_loss(q, own, Wn, t, all_keys=all_keys, offset=offset)
    assert logits.shape == (n, m + k)
    torch.testing.assert_close(logits[:, :m], q @ all_keys.T / t)
    assert targets.tolist() == list(range(offset, offset + n))
    torch.testing.assert_close(logits[torch.arange(n), targets], (q * own).sum(1) / t)
    ref = sum(-torch.log_softmax(logits[i], 0)[offset + i] for i in range(n)) / n
    torch.testing.assert_close(loss, ref)


def test_adco_loss_perfect_alignment_gives_accuracy_one():
    q = torch.eye(4, dtype=torch.float64)
    Wn = -torch.eye(4, dtype=torch.float64)  # bank points away from every query
    loss, logits, targets = adco_loss(q, q.clone(), Wn, 0.1)
    assert contrastive_accuracy(logits, targets) == 1.0
    # closed form: row = [1/t | -1/t, 0, 0, 0] (permuted): CE = log(1 + 3 e^{-10} + e^{-20})
    assert math.isclose(float(loss), math.log(1 + 3 * math.exp(-10) + math.exp(-20)), rel_tol=1e-9)


def test_adco_loss_gradient_flows_to_queries_only():
    q = _unit(4, 8, seed=4).requires_grad_(True)
    k = _unit(4, 8, seed=5).requires_grad_(True)
    W = _unit(6, 8, seed=6).T.contiguous().requires_grad_(True)
    adco_loss(q, k, W, 0.12)[0].backward()
    assert q.grad is not None and k.grad is None and W.grad is None


def _nt_xent_slow(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        num = math.exp(float(z[i] @ z[pos]) / t)
        den = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(n2) if j != i)
        total += -math.log(num / den)
    return total / n2


@pytest.mark.parametrize("n,dim", [(1, 3), (4, 8), (9, 16)])
@pytest.mark.parametrize("t", [0.1, 0.2, 0.5])
def test_nt_xent_matches_slow_reference(n, dim, t):
    g = torch.Generator().manual_seed(n * 10 + dim)
    z1 = torch.randn(n, dim, generator=g, dtype=torch.float64)
    z2 = torch.randn(n, dim, generator=g, dtype=torch.float64)
    loss, logits = nt_xent(z1, z2, t)
    assert logits.shape == (2 * n, 2 * n - 1)
    assert math.isclose(float(loss), _nt_xent_slow(z1, z2, t), rel_tol=1e-9)


def test_nt_xent_identical_embeddings_is_log_2n_minus_1():
    z = torch.ones(5, 4, dtype=torch.float64)
    loss, _ = nt_xent(z, z, 0.3)
    assert math.isclose(float(loss), math.log(9), rel_tol=1e-12)


def test_nt_xent_targets_point_at_other_view():
    n = 3
    z1 = torch.eye(6, dtype=torch.float64)[:n]
    z2 = z1.clone()
    _, logits = nt_xent(z1, z2, 0.1)
    assert torch.equal(logits.argmax(1), nt_xent_targets(n))
    assert contrastive_accuracy(logits, nt_xent_targets(n)) == 1.0


def test_nt_xent_rows_of_the_whole_batch_is_nt_xent_and_shares_average_to_it():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(6, 8, generator=g, dtype=torch.float64)
    full, _ = nt_xent(z1, z2, 0.2)
    whole, logits, targets = nt_xent_rows(z1, z2, 0, 6, 0.2)
    torch.testing.assert_close(whole, full)
    assert targets.tolist() == list(range(6, 12)) + list(range(6))  # the other view of each image
    assert torch.isinf(logits[torch.arange(12), torch.arange(12)]).all()  # no row meets itself
    halves = [nt_xent_rows(z1, z2, o, 3, 0.2)[0] for o in (0, 3)]  # two ranks' shares
    torch.testing.assert_close(sum(halves) / 2, full)


@pytest.mark.parametrize("t", [0.0, -0.1])
def test_temperatures_validated(t):
    z = torch.ones(2, 3)
    with pytest.raises(ValueError):
        nt_xent(z, z, t)
    with pytest.raises(ValueError):
        adco_logits(z, z, z.T, t)


def test_losses_are_fp32_under_bf16_autocast():
    q = _unit(8, 16, seed=7, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logits, _ = adco_loss(q.bfloat16(), q.bfloat16(), q.T.bfloat16(), 0.12)
        l2, _ = nt_xent(q.bfloat16(), q.bfloat16(), 0.2)
    assert loss.dtype == logits.dtype == l2.dtype == torch.float32
