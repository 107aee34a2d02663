"""MIL tests run on the CPU with one intra-op thread.

Their tensors are tiny, so per-step work is dispatch, not arithmetic; with two OpenMP threads
on a shared 2-core machine, threads spin-waiting for each other made the learning tests 5-10x
slower.
"""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
