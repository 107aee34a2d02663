"""Encoder tests run tiny tensors: one intra-op thread is faster than two when other test
runs share the machine's 2 cores (OpenMP threads then wait on each other)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
