"""Pretraining checkpoints and backbone exports, safe to load (`torch.load(weights_only=True)`).

A checkpoint holds only tensors and plain containers / numbers / strings (checked before
saving), so loading never unpickles arbitrary objects:

    {"format": "histstore-checkpoint", "version": 1, "method": "adco" | "simclr",
     "model_config": {...}, "train_config": {...}, "step": int,
     "model": state_dict (query + key encoder, bank), "optimizer": ..., "scheduler": ...,
     "scaler": ... | None, "rng": {...} | None, "extra": {...} | None}

A backbone export ("histstore-backbone") holds {"arch", "dim", "state_dict", "source_sha256"}:
the frozen encoder that `histstore embed` uses. `backbones.build_backbone(arch, path)` accepts
either file. Files are written atomically (temporary file + os.replace): a crash never leaves a
half-written checkpoint under the final name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import tempfile
from collections.abc import Mapping
from typing import Any

import torch

from histstore.errors import InvalidInput
from histstore.fsops import remove_file

FORMAT = "histstore-checkpoint"
BACKBONE_FORMAT = "histstore-backbone"
VERSION = 1
_PREFIX = {"adco": "encoder_q.backbone.", "simclr": "encoder.backbone."}


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


def model_from_checkpoint(ckpt: Mapping) -> torch.nn.Module:
    """Rebuild the AdCo / SimCLR model (config from the checkpoint) and load its state."""
    cls, cfg_cls = _model_classes(ckpt["method"])
    config = config_from_dict(cfg_cls, ckpt["model_config"])
    model = cls(config)
    model.load_state_dict(ckpt["model"])
    return model


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


def backbone_from_checkpoint(obj: Mapping) -> tuple[str, dict[str, torch.Tensor]]:
    """(arch, backbone state_dict) from a loaded training checkpoint or backbone export.

    From a training checkpoint the QUERY encoder's backbone is taken (as MoCo / AdCo do for
    linear evaluation); the projection head is dropped.
    """
    fmt = obj.get("format")
    if fmt == BACKBONE_FORMAT:
        return str(obj["arch"]), dict(obj["state_dict"])
    if fmt == FORMAT:
        prefix = _PREFIX.get(obj.get("method"))
        if prefix is None:
            raise InvalidInput(f"unknown pretraining method {obj.get('method')!r} in checkpoint")
        state = {k[len(prefix):]: v for k, v in obj["model"].items() if k.startswith(prefix)}
        return str(obj["model_config"]["arch"]), state
    raise InvalidInput("not a histstore checkpoint or backbone export")


def save_backbone(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike) -> dict:
    """Export the frozen backbone of a training checkpoint to `out_path`.

    Returns {"arch", "dim", "sha256"} (sha256 of the written export)."""
    from histstore.encoders.backbones import ARCHS

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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# -- internals ---------------------------------------------------------------------------------
def _model_classes(method: str):
    if method == "adco":
        from histstore.encoders.adco import AdCo, AdCoConfig

        return AdCo, AdCoConfig
    if method == "simclr":
        from histstore.encoders.simclr import SimCLR, SimCLRConfig

        return SimCLR, SimCLRConfig
    raise InvalidInput(f"unknown pretraining method {method!r} in checkpoint")


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
