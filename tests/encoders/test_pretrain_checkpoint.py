"""Schedule, checkpoints (weights_only), resume continuing the same run, backbone export."""
from __future__ import annotations

import math
import os
import shutil
import signal

import pytest
import torch

from histstore.encoders.adco import AdCo, AdCoConfig
from histstore.encoders.backbones import build_backbone
from histstore.encoders.checkpoint import load_checkpoint, read_encoder_arch, save_backbone
from histstore.encoders.methods import model_from_checkpoint
from histstore.encoders.schedule import CosineSchedule, cosine_lr
from histstore.encoders.simclr import SimCLR, SimCLRConfig
from histstore.encoders.trainer import PretrainConfig, pretrain_loop
from histstore.errors import InvalidInput
from histstore.hashing import sha256_file

TILES = torch.randint(0, 256, (24, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def batches(epoch, skip):
    """3 batches of 8 per epoch, shuffled per epoch, starting after `skip` batches."""
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(epoch))
    for i in range(skip, 3):
        yield TILES[perm[8 * i: 8 * i + 8]]


class Interrupting:
    """Data factory that calls `action` before yielding its n-th batch (counting all calls:
    the bank-initialisation pass first takes BANK // 8 = 2 batches)."""

    def __init__(self, n, action):
        self.n, self.action, self.count = n, action, 0

    def __call__(self, epoch, skip):
        for b in batches(epoch, skip):
            if self.count == self.n:
                self.action()
            self.count += 1
            yield b


def _raise():
    raise KeyboardInterrupt


BANK = 16


def _model():
    torch.manual_seed(0)
    return AdCo(AdCoConfig(arch="resnet18", bank_size=BANK, proj_hidden=32, proj_dim=16, bn_splits=2))


CFG = PretrainConfig(steps=5, lr=0.01, warmup_steps=1, amp="off", checkpoint_every=2, seed=3)


def test_cosine_schedule_values():
    assert cosine_lr(0, 0.1, 10) == pytest.approx(0.1)
    assert cosine_lr(5, 0.1, 10) == pytest.approx(0.05)
    assert cosine_lr(10, 0.1, 10, final_lr=0.01) == pytest.approx(0.01)
    assert [cosine_lr(s, 1.0, 10, warmup_steps=4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=123.0)
    sched = CosineSchedule(opt, 0.1, 10, warmup_steps=2)
    for _ in range(6):
        sched.step()
    other = CosineSchedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 0.5, 3)
    other.load_state_dict(sched.state_dict())
    assert other.optimizer.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == cosine_lr(6, 0.1, 10, 2)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 5-step AdCo run shared by the tests below (CPU time is scarce)."""
    path = tmp_path_factory.mktemp("full") / "run.ckpt"
    model = _model()
    logged = []
    hist = pretrain_loop(model, batches, CFG, device="cpu", checkpoint_path=path, log_every=1, on_log=logged.append)
    return model, hist, logged, path


def test_checkpoint_round_trip_weights_only(full_run):
    model, hist, logged, path = full_run
    assert hist == logged and [h["step"] for h in hist] == [1, 2, 3, 4, 5]
    for h in hist:
        assert {"loss", "contrastive_acc", "bank_loss", "lr", "img_per_s"} <= set(h)
        assert all(math.isfinite(v) for v in h.values())
    raw = torch.load(path, map_location="cpu", weights_only=True)  # no arbitrary unpickling
    assert raw["format"] == "histstore-checkpoint" and raw["step"] == 5 and raw["method"] == "adco"
    assert raw["model_config"]["bank_size"] == BANK and raw["train_config"]["lr"] == 0.01
    assert raw["train_config"]["augment"]["crop_scale"] == (0.2, 1.0)
    rebuilt = model_from_checkpoint(load_checkpoint(path))
    for (k, a), b in zip(model.state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(a, b), k
    assert sha256_file(path) == sha256_file(path) and len(sha256_file(path)) == 64


def test_resume_continues_the_same_run(tmp_path, full_run):
    full, hist_full, _, _ = full_run

    part = _model()
    path = tmp_path / "b.ckpt"
    with pytest.raises(KeyboardInterrupt):  # interrupted while fetching the 4th training batch
        pretrain_loop(part, Interrupting(2 + 3, _raise), CFG, device="cpu", checkpoint_path=path, log_every=1)
    assert load_checkpoint(path)["step"] == 3

    resumed = _model()
    hist_res = pretrain_loop(resumed, batches, CFG, device="cpu", checkpoint_path=path, resume=True, log_every=1)
    assert [h["step"] for h in hist_res] == [4, 5]
    for h in hist_res:  # same lr (and same data, same augmentations) as the uninterrupted run
        ref = hist_full[h["step"] - 1]
        assert h["lr"] == ref["lr"] == cosine_lr(h["step"] - 1, 0.01, 5, 1)
        assert h["loss"] == pytest.approx(ref["loss"], rel=1e-4, abs=1e-5)
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full.bank.W, resumed.bank.W, rtol=1e-4, atol=1e-5)
    assert load_checkpoint(path)["step"] == 5


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler for the test (an earlier test's library, e.g. Dask's
    job-queue clusters, may have left another one installed), the previous one put back."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_finishes_the_step_then_saves(tmp_path, default_sigint):
    path = tmp_path / "c.ckpt"

    # SIGINT arrives while the 2nd training batch is fetched: that step still runs
    data = Interrupting(2 + 1, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        pretrain_loop(_model(), data, CFG, device="cpu", checkpoint_path=path, log_every=1)
    ck = load_checkpoint(path)
    assert ck["step"] == 2 and ck["extra"] == {"epoch": 0, "skip": 2}
    # the loop puts back the handler it found
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_refuses_to_overwrite_or_resume_mismatched(tmp_path, full_run):
    path = tmp_path / "d.ckpt"
    shutil.copy(full_run[3], path)
    with pytest.raises(InvalidInput, match="already exists"):
        pretrain_loop(_model(), batches, CFG, device="cpu", checkpoint_path=path)
    other = PretrainConfig(steps=5, lr=0.02, warmup_steps=1, amp="off", checkpoint_every=2, seed=3)
    with pytest.raises(InvalidInput, match="lr"):
        pretrain_loop(_model(), batches, other, device="cpu", checkpoint_path=path, resume=True)
    with pytest.raises(InvalidInput, match="bank_size"):
        m = AdCo(AdCoConfig(arch="resnet18", bank_size=8, proj_hidden=32, proj_dim=16, bn_splits=2))
        pretrain_loop(m, batches, CFG, device="cpu", checkpoint_path=path, resume=True)
    with pytest.raises(InvalidInput, match="no checkpoint"):
        pretrain_loop(_model(), batches, CFG, device="cpu", checkpoint_path=tmp_path / "none.ckpt", resume=True)
    # finished run: resuming does nothing
    assert pretrain_loop(_model(), batches, CFG, device="cpu", checkpoint_path=path, resume=True) == []


def test_backbone_export_and_loading(tmp_path):
    path = tmp_path / "s.ckpt"
    torch.manual_seed(0)
    model = SimCLR(SimCLRConfig(arch="resnet18", proj_hidden=32, proj_dim=16))
    pretrain_loop(model, batches, PretrainConfig(steps=2, lr=0.01, amp="off"), device="cpu", checkpoint_path=path)
    assert read_encoder_arch(path) == "resnet18"
    info = save_backbone(path, tmp_path / "backbone.pt")
    assert info["arch"] == "resnet18" and info["dim"] == 512 and len(info["sha256"]) == 64
    x = torch.randn(2, 3, 16, 16)
    model.backbone.eval()
    with torch.no_grad():
        expected = model.backbone(x)
        for src in (path, tmp_path / "backbone.pt"):
            enc, dim = build_backbone("resnet18", src)
            torch.testing.assert_close(enc(x), expected)
    with pytest.raises(InvalidInput, match="resnet18"):
        build_backbone("resnet50-layer3", tmp_path / "backbone.pt")
