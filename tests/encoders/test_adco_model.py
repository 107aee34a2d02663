"""AdCo / SimCLR models: EMA, encoder step lowers the loss, step order, bank initialisation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from histstore.encoders.adco import AdCo, AdCoConfig
from histstore.encoders.bank import closed_form_grad
from histstore.encoders.losses import adco_loss
from histstore.encoders.momentum import copy_and_freeze, update_momentum
from histstore.encoders.simclr import SimCLR, SimCLRConfig


def _views(n=8, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, 3, s, s, generator=g)
    return x1, x1 + 0.1 * torch.randn(n, 3, s, s, generator=g)


def test_update_momentum_formula():
    torch.manual_seed(0)
    q = nn.Linear(3, 2)
    k = copy_and_freeze(q)
    assert all(not p.requires_grad for p in k.parameters())
    with torch.no_grad():
        k.weight.add_(1.0)
    q0, k0 = q.weight.detach().clone(), k.weight.detach().clone()
    update_momentum(q, k, 0.9)
    torch.testing.assert_close(k.weight, 0.9 * k0 + 0.1 * q0)
    torch.testing.assert_close(q.weight, q0)  # source untouched
    update_momentum(q, k, 0.0)
    torch.testing.assert_close(k.weight, q0)
    with pytest.raises(ValueError):
        update_momentum(q, k, 1.5)


def _adco(**kw):
    torch.manual_seed(0)
    cfg = AdCoConfig(arch="resnet18", bank_size=64, proj_hidden=64, proj_dim=16, **{"bn_splits": 2, **kw})
    return AdCo(cfg).train()


def _gen(seed=7):
    return torch.Generator().manual_seed(seed)


def test_one_encoder_step_with_frozen_bank_lowers_encoder_loss():
    model = _adco(key_momentum=1.0, lr_mem=0.0, mem_wd=0.0)
    x1, x2 = _views()
    model.init_bank_step(_views(n=64, seed=9)[0])  # negatives from other tiles

    def loss():
        with torch.no_grad():  # the keys the step computes: same shuffle (same generator seed)
            k = model.shuffled_keys(x2, _gen())
            return float(adco_loss(model.encoder_q(x1), k, model.bank.negatives(), 0.12)[0])

    W0 = model.bank.W.clone()
    before = loss()
    opt = torch.optim.SGD(model.encoder_parameters(), lr=0.001, momentum=0.9)  # HistCode's lr
    out = model.training_step(x1, x2, opt, generator=_gen())
    assert abs(float(out["loss"]) - before) < 1e-4  # the step reports the pre-update loss
    assert loss() < before
    assert torch.equal(model.bank.W, W0)


def test_training_step_order_sgd_then_ema_then_bank_with_same_q():
    model = _adco(key_momentum=0.5)
    x1, x2 = _views(seed=1)
    model.init_bank_step(x2)
    opt = torch.optim.SGD(model.encoder_parameters(), lr=0.1)
    with torch.no_grad():  # what the step will see (BN in train mode: batch statistics)
        q = model.encoder_q(x1)
        k = model.shuffled_keys(x2, _gen())
    W0 = model.bank.W.clone()
    k_params = [p.clone() for p in model.encoder_k.parameters()]
    model.training_step(x1, x2, opt, generator=_gen())
    # EMA after the SGD step: k = 0.5 k_old + 0.5 q_new
    for pk, pk0, pq in zip(model.encoder_k.parameters(), k_params, model.encoder_q.parameters()):
        torch.testing.assert_close(pk, 0.5 * pk0 + 0.5 * pq)
    # bank ascent with this step's (pre-update) q and its own-key similarity (the paper's row)
    g = closed_form_grad(q, W0, model.config.t_mem, (q * k).sum(1, keepdim=True))
    expected = W0 - model.config.lr_mem * (g + model.config.mem_wd * W0)
    torch.testing.assert_close(model.bank.W, expected, rtol=1e-4, atol=1e-5)


def test_in_batch_negatives_option_puts_every_key_in_the_row():
    model = _adco(in_batch_negatives=True, key_momentum=1.0, lr_mem=0.0, mem_wd=0.0)
    x1, x2 = _views(seed=5)
    model.init_bank_step(x2)
    with torch.no_grad():
        q, k = model.encoder_q(x1), model.shuffled_keys(x2, _gen())
        expected, logits, targets = adco_loss(q, k, model.bank.negatives(), 0.12, all_keys=k)
    assert logits.shape == (8, 8 + 64) and targets.tolist() == list(range(8))
    out = model.training_step(x1, x2, torch.optim.SGD(model.encoder_parameters(), lr=0.0), generator=_gen())
    assert abs(float(out["loss"]) - float(expected)) < 1e-4


def test_init_bank_fills_with_key_embeddings():
    model = _adco()
    x1, _ = _views(n=40)
    assert model.init_bank_step(x1) == 40
    assert model.init_bank_step(x1) == 24 and model.bank.is_full
    with torch.no_grad():
        k = model.encoder_k(x1)
    torch.testing.assert_close(model.bank.W[:, :40], k.T, rtol=1e-4, atol=1e-5)


def test_symmetric_step_reports_metrics():
    model = _adco(symmetric=True)
    x1, x2 = _views(seed=2)
    model.init_bank_step(x2)
    opt = torch.optim.SGD(model.encoder_parameters(), lr=0.01)
    out = model.training_step(x1, x2, opt, generator=_gen())
    assert {"loss", "contrastive_acc", "bank_loss", "bank_grad_norm", "pos_sim", "bank_sim_max"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    assert 0 <= float(out["contrastive_acc"]) <= 1


def test_bf16_autocast_step_runs_and_keeps_fp32_state():
    model = _adco()
    x1, x2 = _views(seed=3)
    model.init_bank_step(x2, amp_dtype=torch.bfloat16)
    opt = torch.optim.SGD(model.encoder_parameters(), lr=0.01)
    out = model.training_step(x1, x2, opt, amp_dtype=torch.bfloat16)
    assert torch.isfinite(out["loss"]) and model.bank.W.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_simclr_step_lowers_its_loss():
    torch.manual_seed(0)
    model = SimCLR(SimCLRConfig(arch="resnet18", proj_hidden=64, proj_dim=16)).train()
    x1, x2 = _views(seed=4)
    opt = torch.optim.SGD(model.encoder_parameters(), lr=0.05)
    first = float(model.training_step(x1, x2, opt)["loss"])
    with torch.no_grad():
        from histstore.encoders.losses import nt_xent

        z = model(torch.cat([x1, x2]))
        after = float(nt_xent(z[:8], z[8:], 0.2)[0])
    assert after < first


@pytest.mark.parametrize("kw", [dict(t=0), dict(t_mem=-1), dict(bank_size=0), dict(arch="vgg"), dict(key_momentum=2)])
def test_config_validates(kw):
    with pytest.raises(ValueError):
        AdCoConfig(**kw)
