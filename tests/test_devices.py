"""The one device resolver and autocast shared by pretraining, embedding and MIL training."""
from __future__ import annotations

import pytest
import torch

from histstore.devices import autocast, resolve_device
from histstore.errors import InvalidInput


def test_cuda_asked_for_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(InvalidInput, match="CUDA is not available") as e:
            resolve_device(name)
        assert "--device cpu" in e.value.hint
    with pytest.raises(InvalidInput, match="unknown device"):
        resolve_device("gpu0")


def test_autocast_only_with_a_dtype():
    x = torch.ones(2, 2)
    with autocast("cpu", None):
        assert (x @ x).dtype == torch.float32
    with autocast("cpu", torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
