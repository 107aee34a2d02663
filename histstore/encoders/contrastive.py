"""What the contrastive pretraining methods (AdCo, SimCLR) share: checking the encoder
settings of their configs and the optimiser step of their `training_step`."""
from __future__ import annotations

import torch

from histstore.encoders.backbones import ARCHS


def check_encoder_settings(arch: str, proj_hidden: int | None, proj_dim: int) -> None:
    """ValueError for an unknown backbone or a non-positive projection size."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if proj_dim <= 0 or (proj_hidden is not None and proj_hidden <= 0):
        raise ValueError("projection dims must be > 0")


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler=None) -> None:
    """zero_grad, backward, step; through a GradScaler when one is given (fp16 on CUDA)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
