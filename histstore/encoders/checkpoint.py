"""Pretraining checkpoints and backbone exports, safe to load (`torch.load(weights_only=True)`).

A checkpoint holds only tensors and plain containers / numbers / strings (checked before
saving), so loading never unpickles arbitrary objects:

    {"format": "histstore-checkpoint", "version": 1, "method": "adco" | "simclr",
     "model_config": {...}, "train_config": {...}, "step": int,
     "model": state_dict (query + key encoder, bank), "optimizer": ..., "scheduler": ...,
     "scaler": ... | None, "rng": {...} | None, "extra": {...} | None}

A backbone export ("histstore-backbone") holds {"arch", "dim", "state_dict", "source_sha256"}:
the frozen encoder that `histstore embed` uses. `backbones.build_backbone(arch, path)` accepts
either file (`backbones.backbone_from_checkpoint` finds the backbone in both). Rebuilding the
model of a checkpoint is `methods.model_from_checkpoint`. Files are written atomically (temporary file + os.replace): a crash never leaves a
half-written checkpoint under the final name.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
from collections.abc import Mapping
from typing import Any

import torch

from histstore.encoders.backbones import ARCHS, BACKBONE_FORMAT, backbone_from_checkpoint
from histstore.encoders.backbones import CHECKPOINT_FORMAT as FORMAT
from histstore.errors import InvalidInput
from histstore.fsops import remove_file
from histstore.hashing import sha256_file

VERSION = 1


def as_dict(config: Any) -> dict:
    """Dataclass (or mapping) -> plain dict."""
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config)


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    train_config: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    step: int = 0,
    rng: dict | None = None,
    extra: dict | None = None,
) -> None:
    """Write a full training checkpoint of an AdCo / SimCLR model atomically."""
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "method": model.method,
        "model_config": as_dict(model.config),
        "train_config": None if train_config is None else as_dict(train_config),
        "step": int(step),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "rng": rng,
        "extra": extra,
    }
    _check_plain(obj)
    _atomic_save(obj, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a histstore training checkpoint (weights_only=True)."""
    obj = _safe_load(path, map_location)
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        raise InvalidInput(f"{path} is not a histstore pretraining checkpoint")
    if obj.get("version") != VERSION:
        raise InvalidInput(f"{path}: checkpoint version {obj.get('version')} is not supported (expected {VERSION})")
    return dict(obj)


def config_from_dict(cls: type, d: Mapping) -> Any:
    """Rebuild a frozen config dataclass; unknown keys -> InvalidInput (newer/older file)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise InvalidInput(f"checkpoint config has unknown fields for {cls.__name__}: {', '.join(unknown)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            v = d[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"invalid {cls.__name__} in checkpoint: {e}") from None


def save_backbone(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike) -> dict:
    """Export the frozen backbone of a training checkpoint to `out_path`.

    Returns {"arch", "dim", "sha256"} (sha256 of the written export)."""
    ckpt = load_checkpoint(checkpoint_path)
    arch, state = backbone_from_checkpoint(ckpt)
    dim = ARCHS[arch][2]
    obj = {
        "format": BACKBONE_FORMAT, "version": VERSION, "arch": arch, "dim": dim,
        "state_dict": state, "source_sha256": sha256_file(checkpoint_path),
    }
    _atomic_save(obj, out_path)
    return {"arch": arch, "dim": dim, "sha256": sha256_file(out_path)}


def read_encoder_arch(path: str | os.PathLike) -> str:
    """Architecture recorded in a histstore checkpoint or backbone export."""
    obj = _safe_load(path, "cpu")
    if not isinstance(obj, Mapping):
        raise InvalidInput(f"{path} is not a histstore checkpoint or backbone export")
    return backbone_from_checkpoint(obj)[0]


# -- internals ---------------------------------------------------------------------------------
def _safe_load(path: str | os.PathLike, map_location) -> Any:
    if not os.path.isfile(path):
        raise InvalidInput(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InvalidInput(f"cannot read checkpoint {path}: {first[:200]}") from None


def _atomic_save(obj: Any, path: str | os.PathLike) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            remove_file(tmp, folder)  # histstore.fsops
        raise


_PLAIN = (str, int, float, bool, type(None))


def _check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError if obj holds anything weights_only loading would refuse."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is not str/int")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where}: {type(obj).__name__} cannot be stored in a weights_only checkpoint")
