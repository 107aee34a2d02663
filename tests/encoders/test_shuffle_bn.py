"""BatchNorm cannot leak between a query and its key: split BN groups, the shuffled key
encoder, global BN for SimCLR; all state-dict compatible with torchvision's BatchNorm2d."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from histstore.encoders.adco import AdCo, AdCoConfig
from histstore.encoders.batchnorm import GlobalBatchNorm2d, SplitBatchNorm2d, use_split_bn


def _x(n=8, c=3, s=5, seed=0):
    return torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels_last", [False, True])
def test_split_bn_is_batch_norm_of_each_contiguous_chunk(channels_last):
    bn = SplitBatchNorm2d(3, splits=2).train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    ref = [nn.BatchNorm2d(3).train() for _ in range(2)]
    for r in ref:
        r.load_state_dict(bn.state_dict(), strict=False)
    x = _x()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = bn(x)
    expected = torch.cat([ref[0](x[:4]), ref[1](x[4:])])
    torch.testing.assert_close(y, expected)
    # running statistics: the mean of what each group's BatchNorm stores (what two ranks
    # averaged at a checkpoint store)
    torch.testing.assert_close(bn.running_mean, (ref[0].running_mean + ref[1].running_mean) / 2)
    torch.testing.assert_close(bn.running_var, (ref[0].running_var + ref[1].running_var) / 2)
    assert int(bn.num_batches_tracked) == 1
    # the same state dict as BatchNorm2d; eval mode is BatchNorm2d
    plain = nn.BatchNorm2d(3)
    plain.load_state_dict(bn.state_dict())
    torch.testing.assert_close(bn.eval()(x), plain.eval()(x))


def test_split_bn_sample_depends_only_on_its_group():
    bn = SplitBatchNorm2d(3, splits=2).train()
    x = _x()
    y = bn(x)
    x2 = x.clone()
    x2[6] += 5.0  # a sample of the second group
    y2 = bn(x2)
    assert torch.equal(y[:4], y2[:4])  # the first group never sees it
    assert (y[4:6] - y2[4:6]).abs().max() > 1e-2  # its own group does


def test_split_bn_refuses_groups_of_one():
    with pytest.raises(ValueError, match="groups of >= 2"):
        SplitBatchNorm2d(3, splits=4).train()(_x(n=6))


def test_global_bn_in_one_process_is_batch_norm_with_gradients():
    x = _x(seed=1).requires_grad_(True)
    g = GlobalBatchNorm2d(3, all_gather=lambda t: t).train()  # the distributed path, one rank
    ref = nn.BatchNorm2d(3).train()
    ref.load_state_dict(g.state_dict())
    w = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    (g(x) * w).sum().backward()
    gx, gw = x.grad.clone(), g.weight.grad.clone()
    x.grad = None
    y_ref = ref(x)
    (y_ref * w).sum().backward()
    torch.testing.assert_close(g(x.detach()), y_ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, ref.weight.grad, rtol=1e-4, atol=1e-5)
    # running stats: g saw two batches above (one with grad, one without), ref one; compare one
    g2 = GlobalBatchNorm2d(3, all_gather=lambda t: t).train()
    g2(x.detach())
    torch.testing.assert_close(g2.running_mean, ref.running_mean)
    torch.testing.assert_close(g2.running_var, ref.running_var)


def _tiny_adco(**kw):
    torch.manual_seed(0)
    return AdCo(AdCoConfig(arch="resnet18", bank_size=16, proj_hidden=32, proj_dim=8, bn_splits=2, **kw)).train()


def _groups(perm: torch.Tensor, n: int, splits: int):
    """query group of each sample (chunk of its row) and key group (chunk of its slot in perm)."""
    size = n // splits
    q_group = torch.arange(n) // size
    k_group = torch.empty(n, dtype=torch.long)
    k_group[perm] = torch.arange(n) // size
    return q_group, k_group


def test_a_key_is_normalised_with_other_samples_than_its_query():
    """The key of sample i depends on the samples of its SHUFFLED group and not on the others
    of its query's group: the pair does not share BatchNorm statistics."""
    model = _tiny_adco()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(11))
    q_group, k_group = _groups(perm, 8, 2)
    assert not torch.equal(q_group, k_group)  # this seed does shuffle across the groups

    def keys(inp):
        return model.shuffled_keys(inp, torch.Generator().manual_seed(11))

    def queries(inp):
        with torch.no_grad():
            return model.encoder_q(inp)

    k0, q0 = keys(x), queries(x)
    checked = 0
    for i in range(8):
        for j in range(8):
            if j == i:
                continue
            x_j = x.clone()
            x_j[j] += 3.0 * torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(j))
            k_moved = (keys(x_j)[i] - k0[i]).abs().max()
            if k_group[j] != k_group[i]:
                assert k_moved < 1e-6, (i, j)       # outside i's key group: no effect on its key
            else:
                assert k_moved > 1e-4, (i, j)       # inside: the statistics are shared
            if q_group[j] == q_group[i] and k_group[j] != k_group[i]:
                assert (queries(x_j)[i] - q0[i]).abs().max() > 1e-4  # ...though its query sees j
                checked += 1
    assert checked >= 4


def test_model_uses_split_bn_everywhere_and_exports_plain_batch_norm():
    model = _tiny_adco()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, SplitBatchNorm2d) and m.splits == 2 for m in bns)
    from histstore.encoders.backbones import build_backbone

    plain, _ = build_backbone("resnet18", allow_random=True)
    plain.load_state_dict(model.backbone.state_dict())  # same keys and shapes as torchvision
    x = torch.randn(2, 3, 32, 32)
    model.backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), model.backbone(x))


@pytest.mark.parametrize("convert", ["split", "global"])
def test_converting_bn_keeps_the_same_parameters_and_state(convert):
    """In place: an optimiser made before the conversion (data-parallel SimCLR converts when it
    joins the process group) still updates the BatchNorm weights; dtype and values stay."""
    from histstore.encoders.batchnorm import use_global_bn

    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).double()
    with torch.no_grad():
        net[1].running_mean.fill_(0.3)
    params = list(net.parameters())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    if convert == "split":
        use_split_bn(net, 2)
    else:
        use_global_bn(net, lambda t: t)
    assert isinstance(net[1], SplitBatchNorm2d if convert == "split" else GlobalBatchNorm2d)
    assert all(a is b for a, b in zip(params, net.parameters()))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype, k


def test_symmetric_loss_averages_both_directions():
    model = _tiny_adco(symmetric=True, key_momentum=1.0, lr_mem=0.0, mem_wd=0.0)
    from histstore.encoders.losses import adco_loss

    x1 = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    x2 = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    model.init_bank_step(x1)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        q1, q2 = model.encoder_q(x1), model.encoder_q(x2)
        k2, k1 = model.shuffled_keys(x2, gen), model.shuffled_keys(x1, gen)  # the step's order
        Wn = model.bank.negatives()
        expected = 0.5 * (adco_loss(q1, k2, Wn, 0.12)[0] + adco_loss(q2, k1, Wn, 0.12)[0])
    out = model.training_step(x1, x2, torch.optim.SGD(model.encoder_parameters(), lr=0.0),
                              generator=torch.Generator().manual_seed(9))
    assert abs(float(out["loss"]) - float(expected)) < 1e-4
    assert F.cosine_similarity(q1, q2).mean() < 0.999  # two different views
