"""ResNet tile backbones with weights from local files only.

HistCode (arXiv 2204.11994, authors' code) embeds tiles with an ImageNet-initialised ResNet-50
cut after layer3 followed by global average pooling (1024-d). ResNet-18 (512-d) and the full
ResNet-50 (2048-d) are offered for comparison and for small CPU runs.

Input of every backbone: float [B, 3, H, W], ImageNet-normalised (see `preprocess`).
Output: float [B, dim].

Weights never come from the network (no torchvision `weights=` enum is ever passed): either a
local torchvision state_dict file (e.g. ImageNet weights the user already has), a histstore
pretraining checkpoint, or a histstore backbone export. Random init needs `allow_random=True`.
This module is the leaf of `histstore.encoders`: it imports nothing else from the package, so
it knows the two histstore file formats only as far as finding a backbone's weights in them.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import torch
import torchvision
from torch import nn

from histstore.errors import InvalidInput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# arch -> (torchvision constructor name, last residual stage kept, output dim)
ARCHS: dict[str, tuple[str, int, int]] = {
    "resnet18": ("resnet18", 4, 512),
    "resnet50": ("resnet50", 4, 2048),
    "resnet50-layer3": ("resnet50", 3, 1024),
}

# prefixes other tools put in front of torchvision keys (DataParallel, MoCo/AdCo checkpoints)
_STRIP_PREFIXES = ("module.", "encoder_q.", "backbone.", "model.")

# histstore's weights files (written by `checkpoint`): a training checkpoint and a backbone export
CHECKPOINT_FORMAT = "histstore-checkpoint"
BACKBONE_FORMAT = "histstore-backbone"
# where each pretraining method's checkpoint keeps the query encoder's backbone
_BACKBONE_PREFIX = {"adco": "encoder_q.backbone.", "simclr": "encoder.backbone."}


class ResNetTrunk(nn.Module):
    """A torchvision ResNet run up to `last_stage` (3 or 4), then global average pooling.

    Submodule names equal torchvision's (conv1, bn1, layer1...), so torchvision state_dicts
    load directly; the dropped stages (layer4 for the layer3 cut) and `fc` are simply absent.
    x: [B, 3, H, W] float -> [B, dim].
    """

    def __init__(self, tv_name: str, last_stage: int, dim: int):
        super().__init__()
        net = getattr(torchvision.models, tv_name)(weights=None)  # never downloads
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.stages = [f"layer{i}" for i in range(1, last_stage + 1)]
        for name in self.stages:
            self.add_module(name, getattr(net, name))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stages:
            x = getattr(self, name)(x)
        return torch.flatten(self.avgpool(x), 1)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of a ResNetTrunk in eval mode with every BatchNorm folded into the
    convolution before it: the same function of the input up to float rounding (1e-6 relative
    in fp32), one pass less over every activation map (benchmarks/RESULTS.md, embed, row
    "inference model"). Any other module is returned as it is. Folding uses the running
    statistics, so it is for a frozen encoder only: embedding, never training."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if not isinstance(model, ResNetTrunk) or model.training:
        return model
    import copy

    folded = copy.deepcopy(model)
    folded.conv1, folded.bn1 = fuse_conv_bn_eval(folded.conv1, folded.bn1), nn.Identity()
    for name in folded.stages:
        for block in getattr(folded, name):
            for k in (1, 2, 3):  # BasicBlock has conv1/bn1, conv2/bn2; Bottleneck also conv3/bn3
                conv, bn = getattr(block, f"conv{k}", None), getattr(block, f"bn{k}", None)
                if conv is not None and bn is not None:
                    setattr(block, f"conv{k}", fuse_conv_bn_eval(conv, bn))
                    setattr(block, f"bn{k}", nn.Identity())
            if block.downsample is not None:  # Sequential(conv 1x1, BatchNorm)
                block.downsample = nn.Sequential(fuse_conv_bn_eval(block.downsample[0], block.downsample[1]))
    return folded


def build_backbone(
    arch: str, weights_path: str | os.PathLike | None = None, allow_random: bool = False
) -> tuple[nn.Module, int]:
    """Build `arch` ('resnet18' | 'resnet50' | 'resnet50-layer3') and load local weights.

    weights_path: a torchvision state_dict file, a histstore pretraining checkpoint, or a
    histstore backbone export (`checkpoint.save_backbone`). A file of another architecture
    raises InvalidInput. Without weights_path, random init is allowed only if allow_random.
    Returns (module in eval mode, output dim).
    """
    if arch not in ARCHS:
        raise InvalidInput(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    tv_name, last_stage, dim = ARCHS[arch]
    model = ResNetTrunk(tv_name, last_stage, dim)
    if weights_path is None:
        if not allow_random:
            raise InvalidInput(
                f"no weights given for {arch}",
                hint="pass a local weights file, or allow random init explicitly",
            )
    else:
        state = _read_state_dict(weights_path, arch)
        load_backbone_state(model, state, arch, source=str(weights_path))
    return model.eval(), dim


def load_backbone_state(
    model: ResNetTrunk, state: Mapping[str, torch.Tensor], arch: str, source: str = "state_dict"
) -> None:
    """Strictly load a torchvision-style state_dict into a ResNetTrunk (prefixes stripped,
    dropped stages and `fc` ignored). Missing / unexpected / mis-shaped keys -> InvalidInput."""
    state = _strip_prefixes(state)
    own = model.state_dict()
    kept_stage = {f"layer{i}" for i in range(1, 5)} - set(model.stages)
    ignored = ("fc.",) + tuple(f"{s}." for s in kept_stage)
    state = {k: v for k, v in state.items() if not k.startswith(ignored)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise InvalidInput(f"weights in {source} do not fit {arch}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _STRIP_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def _read_state_dict(path: str | os.PathLike, arch: str) -> dict[str, torch.Tensor]:
    """Read a weights file with weights_only=True and return a backbone state_dict."""
    if not os.path.isfile(path):
        raise InvalidInput(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInput(f"cannot read weights file {path}: {first[:200]}") from None
    if not isinstance(obj, Mapping):
        raise InvalidInput(f"weights file {path} does not hold a state_dict")
    if obj.get("format") in (CHECKPOINT_FORMAT, BACKBONE_FORMAT):
        saved_arch, state = backbone_from_checkpoint(obj)
        if saved_arch != arch:
            raise InvalidInput(f"{path} holds a {saved_arch} encoder, not {arch}")
        return state
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):  # MoCo/AdCo style files
        obj = obj["state_dict"]
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InvalidInput(f"weights file {path} does not hold a state_dict of tensors")
    return dict(obj)


def backbone_from_checkpoint(obj: Mapping) -> tuple[str, dict[str, torch.Tensor]]:
    """(arch, backbone state_dict) from a loaded training checkpoint or backbone export.

    From a training checkpoint the QUERY encoder's backbone is taken (as MoCo / AdCo do for
    linear evaluation); the projection head is dropped.
    """
    fmt = obj.get("format")
    if fmt == BACKBONE_FORMAT:
        return str(obj["arch"]), dict(obj["state_dict"])
    if fmt == CHECKPOINT_FORMAT:
        prefix = _BACKBONE_PREFIX.get(obj.get("method"))
        if prefix is None:
            raise InvalidInput(f"unknown pretraining method {obj.get('method')!r} in checkpoint")
        state = {k[len(prefix):]: v for k, v in obj["model"].items() if k.startswith(prefix)}
        return str(obj["model_config"]["arch"]), state
    raise InvalidInput("not a histstore checkpoint or backbone export")


def preprocess(
    tiles: torch.Tensor, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 tiles [B, H, W, 3] -> ImageNet-normalised float [B, 3, H, W].

    The result is a permuted view of the NHWC data, i.e. already in channels_last memory
    format, which is what a channels_last model wants (no copy). The uint8 batch is moved to
    `device` before conversion (4x less to transfer than float). On a CPU (float32) each
    value is looked up in a 256-entry table per channel made by the same float operations
    (`_preprocess_ops`), one pass instead of four and bit-identical
    (tests/encoders/test_backbones.py).
    """
    if hasattr(tiles, "__array__") and not isinstance(tiles, torch.Tensor):
        tiles = torch.from_numpy(tiles)
    if tiles.dtype != torch.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise InvalidInput(f"expected uint8 tiles [B, H, W, 3], got {tuple(tiles.shape)} {tiles.dtype}")
    if device is not None:
        tiles = tiles.to(device, non_blocking=True)
    if tiles.device.type == "cpu" and dtype == torch.float32 and tiles.numel() > 0:
        return _preprocess_table(tiles)
    return _preprocess_ops(tiles, dtype)


def _preprocess_ops(tiles: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    x = tiles.permute(0, 3, 1, 2).to(dtype)  # preserve_format keeps the NHWC strides
    return normalize(x.div_(255.0))


_TABLE = None  # [256, 1, 3] float32: value v of channel c -> _preprocess_ops' result


def _preprocess_table(tiles: torch.Tensor) -> torch.Tensor:
    import cv2
    import numpy as np

    global _TABLE
    if _TABLE is None:
        every = torch.arange(256, dtype=torch.uint8).view(1, 1, 256, 1).expand(1, 1, 256, 3).contiguous()
        _TABLE = np.ascontiguousarray(_preprocess_ops(every, torch.float32)[0, :, 0, :].T.numpy().reshape(256, 1, 3))
    b, h, w, _ = tiles.shape
    px = np.ascontiguousarray(tiles.numpy()).reshape(b * h, w, 3)
    return torch.from_numpy(cv2.LUT(px, _TABLE)).view(b, h, w, 3).permute(0, 3, 1, 2)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] in [0, 1] -> ImageNet-normalised (same memory format)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
