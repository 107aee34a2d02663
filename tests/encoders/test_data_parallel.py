"""Data-parallel pretraining on 2 gloo CPU processes against one process with the same global
batch: the ranks stay identical (weights, BN statistics, bank), and the 2 x B/2 run follows
the 1 x B loss curve.

What makes the two runs the same computation: the global batch is the same tiles in the same
order (rank r holds rows r*B/2..), every BatchNorm group holds the same samples (one process:
2 split-BN chunks; two ranks: one chunk each; the key encoder's input permuted by the same
draw), augmentations are drawn for the whole global batch, gradients and the bank's gradient
are averaged over ranks (= the whole batch's), SimCLR's BN and negatives are global. So the
runs differ only by float summation order. They run in float64 (tests/support/data_parallel.py
says why): the stated tolerance is 1e-6 relative on every step's loss (logged in float32) and
1e-8 on the weights and the bank; a gradient summed instead of averaged, a wrong label or a
wrong BN group is off by orders of magnitude more."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from histstore.encoders.distributed import SINGLE
from tests.support.data_parallel import SCENARIOS, STEPS, run_rank, run_scenarios


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one process, [rank 0, rank 1]) summaries of every scenario."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(run_rank, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = run_scenarios(SINGLE, str(tmp_path_factory.mktemp("single")), resume=False)
    return single, ranks


@pytest.mark.parametrize("name", [*SCENARIOS, "adco-resumed"])
def test_ranks_hold_identical_weights_bn_statistics_and_bank(runs, name):
    _, (r0, r1) = runs
    assert r0[name]["digest"].keys() == r1[name]["digest"].keys()
    differ = [k for k in r0[name]["digest"] if r0[name]["digest"][k] != r1[name]["digest"][k]]
    assert differ == []
    assert r0[name]["loss"] == r1[name]["loss"]  # logged metrics are the means over ranks


@pytest.mark.parametrize("name", SCENARIOS)
def test_two_ranks_follow_the_one_process_loss_curve(runs, name):
    single, (r0, _) = runs
    one, two = single[name], r0[name]
    assert len(one["loss"]) == len(two["loss"]) == STEPS
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-6)
    assert one["acc"] == pytest.approx(two["acc"], abs=1e-6)
    assert len(one["probe"]) == (7 if name.startswith("adco") else 3)  # both encoders and the bank
    for k, v in one["probe"].items():
        torch.testing.assert_close(two["probe"][k], v, rtol=1e-8, atol=1e-10, msg=f"{name}: {k}")


def test_resume_under_two_ranks_continues_the_same_run(runs):
    _, (r0, _) = runs
    resumed, full = r0["adco-resumed"], r0["adco"]
    assert resumed["loss"] == pytest.approx(full["loss"][2:], rel=1e-6)  # step 3
    for k, v in full["probe"].items():
        torch.testing.assert_close(resumed["probe"][k], v, rtol=1e-8, atol=1e-10, msg=k)
