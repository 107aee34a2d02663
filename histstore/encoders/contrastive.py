"""What the contrastive pretraining methods (AdCo, SimCLR) share: checking the encoder
settings of their configs, the optimiser step of their `training_step`, and wrapping the
encoder that takes gradients in DistributedDataParallel."""
from __future__ import annotations

import torch
from torch import nn

from histstore.encoders.backbones import ARCHS
from histstore.encoders.distributed import DataParallel


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


class _Views(nn.Module):
    """encoder(v) for each view, in one call (so DDP sees one forward per step, also when the
    symmetric AdCo loss runs the query encoder on both views)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.encoder(v) for v in views)


def wrap_data_parallel(encoder: nn.Module, dp: DataParallel, device: torch.device):
    """DistributedDataParallel over `encoder` (callable on views, returns a tuple), or None in
    one process. The caller broadcasts rank 0's state first. BN buffers are not broadcast each
    step: they are averaged over ranks at checkpoints (`batchnorm.bn_buffers`)."""
    if not dp.active:
        return None
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # no buffer sync before each forward (torch >= 2.14 names it forward_sync_buffers)
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
               inspect.signature(DistributedDataParallel.__init__).parameters else {"broadcast_buffers": False})
    return DistributedDataParallel(_Views(encoder), device_ids=ids, process_group=dp.group, **no_sync)
