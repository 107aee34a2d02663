"""Data-parallel pretraining runs for the tests: the same tiny runs in one process (global
batch B) and in each of several gloo ranks (B / world each), with what the tests compare.

The runs are in float64. A random network on noise tiles, normalised over BatchNorm groups
of 4 samples, multiplies rounding differences by 10-1000x per step (measured in float32:
1e-7 at step 1, up to 2e-3 at step 2 for SimCLR), which would hide a small real discrepancy
behind a loose tolerance; in float64 the summation-order differences stay near 1e-12.

`run_rank` is the target of torch.multiprocessing.spawn (importable by name); `run_scenarios`
runs the scenarios in the calling process's place (world 1 or a rank)."""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager

import torch

GLOBAL_BATCH = 8
STEPS = 3
TILES = torch.randint(0, 256, (32, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

SCENARIOS = {
    "adco": dict(method="adco"),
    "adco-symmetric-in-batch": dict(method="adco", symmetric=True, in_batch_negatives=True),
    "simclr": dict(method="simclr"),
}
PROBES = ("bank.W", "head.net.2.weight", "backbone.conv1.weight", "layer4.1.conv2.weight")


def batches_for(rank: int, world: int, fail_at: int | None = None):
    """Rank `rank`'s share of each global batch of a seeded shuffle per epoch (4 batches of 8
    tiles per epoch). fail_at: raise KeyboardInterrupt before the fail_at-th batch handed out
    (counting every call), as an interrupted run."""
    b = GLOBAL_BATCH // world
    count = {"n": 0}

    def factory(epoch: int, skip: int):
        perm = torch.randperm(len(TILES), generator=torch.Generator().manual_seed(epoch))
        for k in range(skip, len(TILES) // GLOBAL_BATCH):
            if fail_at is not None and count["n"] == fail_at:
                raise KeyboardInterrupt
            count["n"] += 1
            rows = perm[k * GLOBAL_BATCH + rank * b:k * GLOBAL_BATCH + (rank + 1) * b]
            yield TILES[rows]

    return factory


def make_model(method: str, symmetric: bool = False, in_batch_negatives: bool = False):
    from histstore.encoders.adco import AdCo, AdCoConfig
    from histstore.encoders.simclr import SimCLR, SimCLRConfig

    torch.manual_seed(0)
    if method == "adco":
        model = AdCo(AdCoConfig(arch="resnet18", bank_size=16, proj_hidden=32, proj_dim=8, bn_splits=2,
                                symmetric=symmetric, in_batch_negatives=in_batch_negatives))
    else:
        model = SimCLR(SimCLRConfig(arch="resnet18", proj_hidden=32, proj_dim=8))
    return model.double()


def config(checkpoint_every: int = 100):
    from histstore.encoders.trainer import PretrainConfig

    return PretrainConfig(steps=STEPS, lr=0.05, amp="off", checkpoint_every=checkpoint_every, seed=3)


@contextmanager
def float64():
    """Tiles become float64 views (the models are made float64 by make_model)."""
    import histstore.encoders.augment as augment
    import histstore.encoders.trainer as trainer

    original = augment.tiles_to_float

    def to_float64(tiles, device=None):
        return original(tiles, device).double()

    augment.tiles_to_float = trainer.tiles_to_float = to_float64
    try:
        yield
    finally:
        augment.tiles_to_float = trainer.tiles_to_float = original


def probe(model) -> dict:
    """A few tensors to compare with a tolerance (bank, head, first and last convolutions)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.endswith(PROBES)}


def _train(model, dp, batches, path, resume=False, checkpoint_every=100) -> dict:
    """Per-step losses and accuracies, a digest of every tensor of the final state (exact
    equality across ranks), the probes at the end."""
    from histstore.encoders.trainer import pretrain_loop

    hist = pretrain_loop(model, batches, config(checkpoint_every), device="cpu", checkpoint_path=path,
                         resume=resume, log_every=1, dp=dp)
    state = model.state_dict()
    return {
        "loss": [h["loss"] for h in hist],
        "acc": [h["contrastive_acc"] for h in hist],
        "digest": {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
                   for k, v in state.items()},
        "probe": probe(model),
    }


def run_scenarios(dp, out_dir: str, resume: bool = True) -> dict:
    from histstore.encoders.trainer import pretrain_loop

    rank, world = dp.rank, dp.world_size
    results = {}
    with float64():
        for name, kw in SCENARIOS.items():
            results[name] = _train(make_model(**kw), dp, batches_for(rank, world),
                                   os.path.join(out_dir, f"{name}-w{world}.ckpt"))
        if resume:  # interrupted before step 3 (2 bank-initialisation batches + 2 steps), then resumed
            path = os.path.join(out_dir, f"resume-w{world}.ckpt")
            try:
                pretrain_loop(make_model("adco"), batches_for(rank, world, fail_at=4), config(2), device="cpu",
                              checkpoint_path=path, log_every=1, dp=dp)
                raise AssertionError("the run was not interrupted")
            except KeyboardInterrupt:
                pass
            dp.barrier()  # rank 0 has written the step-2 checkpoint
            results["adco-resumed"] = _train(make_model("adco"), dp, batches_for(rank, world), path,
                                             resume=True, checkpoint_every=2)
    return results


def run_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    """Spawned rank: join a gloo group on 127.0.0.1, run every scenario, save the summaries."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from histstore.encoders.distributed import from_environment

    dp, _ = from_environment("cpu")
    try:
        torch.save(run_scenarios(dp, out_dir), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dp.close()
