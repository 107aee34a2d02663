"""Backbones: dims, local weights only, wrong-architecture files rejected, preprocess."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision

from histstore.encoders.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone, fold_batchnorm, preprocess
from histstore.encoders.heads import ProjectionHead
from histstore.errors import InvalidInput
from tests.support.encoders import pretrained_like


@pytest.mark.parametrize("arch,dim", [("resnet18", 512), ("resnet50-layer3", 1024), ("resnet50", 2048)])
def test_dims(arch, dim):
    torch.manual_seed(0)
    model, d = build_backbone(arch, allow_random=True)
    assert d == dim
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, dim)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50-layer3"])
def test_folded_batchnorm_computes_the_same_function(arch):
    model = pretrained_like(arch, seed=3)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # a copy: the encoder is untouched
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    # a model in training mode (batch statistics) is never folded
    assert fold_batchnorm(model.train()) is model


def test_random_init_needs_the_flag():
    with pytest.raises(InvalidInput, match="no weights"):
        build_backbone("resnet18")


def test_unknown_arch():
    with pytest.raises(InvalidInput, match="unknown architecture"):
        build_backbone("vit-huge", allow_random=True)


def test_torchvision_state_dict_loads_exactly(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    model, _ = build_backbone("resnet18", path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.flatten(ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(
            ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))), 1)
        torch.testing.assert_close(model(x), expected)


def test_layer3_cut_accepts_full_resnet50_weights(tmp_path):
    torch.manual_seed(2)
    ref = torchvision.models.resnet50(weights=None).eval()
    path = tmp_path / "r50.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)  # DataParallel style
    model, dim = build_backbone("resnet50-layer3", path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        h = ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))
        torch.testing.assert_close(model(x), h.mean(dim=(2, 3)))
    assert dim == 1024


@pytest.mark.parametrize("saved,arch", [("resnet18", "resnet50-layer3"), ("resnet50", "resnet18")])
def test_wrong_architecture_is_invalid_input(tmp_path, saved, arch):
    path = tmp_path / "w.pth"
    torch.save(getattr(torchvision.models, saved)(weights=None).state_dict(), path)
    with pytest.raises(InvalidInput) as e:
        build_backbone(arch, path)
    msg = str(e.value)
    assert "\n" not in msg and arch in msg and ("missing" in msg or "unexpected" in msg or "shape" in msg)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_files_are_invalid_input(tmp_path):
    with pytest.raises(InvalidInput, match="not found"):
        build_backbone("resnet18", tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(InvalidInput, match="cannot read"):
        build_backbone("resnet18", junk)
    # an arbitrary pickled object is refused by weights_only loading, never executed
    evil = tmp_path / "evil.pth"
    torch.save({"model": ProjectionHead(4, 4, 2)}, evil)
    with pytest.raises(InvalidInput):
        build_backbone("resnet18", evil)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(InvalidInput):
        build_backbone("resnet18", plain)


def test_preprocess_normalises_and_is_channels_last():
    tiles = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    tiles[1] = 255
    x = preprocess(tiles)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(x[1, :, 3, 5], (1 - mean) / std)
    with pytest.raises(InvalidInput):
        preprocess(torch.zeros(2, 3, 8, 8))


def test_preprocess_table_is_bit_identical_to_the_float_operations():
    """The CPU table lookup gives exactly what uint8 -> float, / 255, - mean, / std give,
    for every value in every channel and on a strided (non-contiguous) batch."""
    every = torch.arange(256, dtype=torch.uint8).view(1, 16, 16, 1).expand(2, 16, 16, 3).clone()
    every[1] = every[1].flip(-1)  # each channel sees every value at other positions
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, (5, 12, 20, 3), dtype=np.uint8))[:, :, ::2]
    for tiles in (every, batch):
        x = preprocess(tiles)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        ref = (tiles.permute(0, 3, 1, 2).to(torch.float32).div_(255.0) - mean) / std
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x, ref)
        assert torch.equal(x.view(torch.int32), ref.view(torch.int32))  # bits, not just ==


def test_projection_head_is_unit_norm():
    head = ProjectionHead(16, 16, 8)
    z = head(torch.randn(5, 16))
    assert z.shape == (5, 8)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
