"""`histstore pretrain`: self-supervised tile encoders (AdCo, or SimCLR for comparison) trained
on a cohort's tiles, registered in the catalog for `histstore embed --encoder`.

The run is a `runs` row of kind `pretrain` (every hyperparameter, seed, code version) whose
metrics (loss, contrastive accuracy, bank statistics per logging window) are written as they
come, so a collapsing run is visible in SQL while it trains. The training checkpoint (model,
EMA key encoder, bank, optimizer, schedule, RNG) is saved periodically; `--resume` continues
the newest unfinished run with the same cohort, method and architecture from its saved step.
The frozen backbone is exported next to it and registered as the encoder.

Data parallel: `nproc_per_node=N` (`--nproc-per-node`) starts N worker processes through
torch.distributed's elastic launcher (one per GPU, NCCL; or CPU shares, gloo); `torchrun ...
-m histstore pretrain ...` starts them on several machines. Every process runs `pretrain`;
rank 0 alone reads and writes the catalog and the checkpoints, and sends the others the run's
plan (tiles, settings) before training. `batch_size` is the global batch, split evenly over
the ranks; see `encoders.trainer` for what is averaged and gathered, and
`encoders.distributed` for the process group. The store (and the slide files) must be on a
file system every machine sees.

The catalog is read at the start and written in short commits (the run row, each logging
window's metrics with the run's progress, the encoder at the end); nothing is held while it
trains. Metrics logged after the last checkpoint of an interrupted run are replaced on resume,
so every step has one row.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from histstore.catalog.cohorts import cohort_slide_ids
from histstore.embed import choose_tiling
from histstore.encoder_catalog import find_encoder, register_encoder
from histstore.errors import EmptyCohort, InvalidInput, NotFound
from histstore.faults import fault_point
from histstore.ids import check_id
from histstore.jobs import Heartbeat, mark_running, record_progress
from histstore.progress import progress_bar
from histstore.runs import create_run, end_run, run_outcome, write_metrics
from histstore.store import Store



@dataclass(frozen=True)
class PretrainSettings:
    cohort: str
    method: str = "adco"
    arch: str = "resnet18"
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 64
    bank_size: int | None = None      # AdCo; default about a fifth of the tiles (HistCode)
    lr: float = 0.03
    warmup_steps: int = 0
    t: float = 0.12                   # AdCo encoder temperature (HistCode)
    t_mem: float = 0.02               # AdCo bank temperature
    lr_mem: float = 0.3               # AdCo bank learning rate (HistCode)
    key_momentum: float = 0.999
    temperature: float = 0.2          # SimCLR
    symmetric: bool = False
    bn_splits: int | None = None      # AdCo shuffle-BN groups of the global batch; default 8 (fewer for small batches)
    in_batch_negatives: bool = False  # AdCo: the official code's row (other images' keys as negatives)
    stain_norm: str = "none"
    tiling: str | None = None
    weights: str | None = None        # initialise the backbone from a local weights file
    device: str = "auto"
    amp: str = "auto"
    seed: int = 0
    workers: int | None = None
    checkpoint_every: int = 100
    log_every: int = 10
    name: str | None = None
    nproc_per_node: int | None = None  # launch this many local worker processes (data parallel)

    def validate(self, world_size: int | None = None) -> None:
        from histstore.encoders.backbones import ARCHS
        from histstore.encoders.methods import METHODS

        if self.method not in METHODS:
            raise InvalidInput(f"--method must be one of {', '.join(METHODS)}")
        if self.arch not in ARCHS:
            raise InvalidInput(f"--arch must be one of {', '.join(ARCHS)}")
        if (self.steps is None) == (self.epochs is None):
            raise InvalidInput("give exactly one of --steps or --epochs")
        if (self.steps is not None and self.steps < 1) or (self.epochs is not None and self.epochs <= 0):
            raise InvalidInput("--steps / --epochs must be positive")
        if self.batch_size < 2:
            raise InvalidInput("--batch-size must be >= 2 (contrastive learning needs in-batch pairs)")
        if self.bank_size is not None and self.bank_size < 1:
            raise InvalidInput("--bank-size must be >= 1")
        if not self.lr > 0:
            raise InvalidInput("--lr must be > 0")
        if self.stain_norm not in ("none", "macenko"):
            raise InvalidInput("--stain-norm must be none or macenko")
        if self.name is not None:
            check_id(self.name, "encoder name (--name)")
        if self.nproc_per_node is not None and self.nproc_per_node < 1:
            raise InvalidInput("--nproc-per-node must be >= 1")
        world = world_size or self.nproc_per_node or 1
        if self.batch_size % world:
            raise InvalidInput(f"--batch-size {self.batch_size} (the global batch) does not split evenly over "
                               f"{world} processes")
        if self.method == "adco":
            self.shuffle_bn_groups(world)

    def shuffle_bn_groups(self, world_size: int = 1) -> int:
        """AdCo's BatchNorm groups of the global batch (shuffle BN): --bn-splits, or 8 (AdCo's
        8 GPUs) but no more than batch/2 and a multiple of the world size (at least one group
        per rank). At least 2 groups (one group would share statistics between a query and
        its key), each of >= 2 tiles."""
        s = self.bn_splits
        if s is None:
            s = max(world_size, min(8, self.batch_size // 2) // world_size * world_size)
        if s < 2 or s % world_size or self.batch_size < 2 * s:
            raise InvalidInput(
                f"shuffle BN needs >= 2 BatchNorm groups of >= 2 tiles, a multiple of the {world_size} process(es): "
                f"--bn-splits {s} does not fit --batch-size {self.batch_size}",
                hint="AdCo needs --batch-size >= 4; set --bn-splits to a divisor that fits")
        return s

@dataclass
class PretrainReport:
    run_id: int
    encoder: str
    steps: int
    resumed_from: int
    seconds: float
    img_per_s: float
    history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    world_size: int = 1


def _batches_factory(dataset, batch_size: int, workers: int, stain_norm: str, seed: int,
                     rank: int = 0, world_size: int = 1, pin_memory: bool = False):
    """(epoch, skip) -> iterable of uint8 [b, H, W, 3], b = batch_size / world_size: this rank's
    rows [rank * b, (rank + 1) * b) of each global batch of a fresh seeded shuffle per epoch
    (the same order whatever the number of ranks), skipping the global batches an interrupted
    run already used (exact resume). pin_memory: page-locked batches (GPU), so the copy to the
    device is asynchronous."""
    import torch

    from histstore.embeddings.dataset import TileCollate, worker_options

    b = batch_size // world_size

    def factory(epoch: int, skip: int):
        order = np.random.default_rng([seed, epoch]).permutation(len(dataset))
        usable = (len(order) // batch_size) * batch_size
        batches = order[skip * batch_size:usable].reshape(-1, batch_size)
        mine = batches[:, rank * b:(rank + 1) * b].reshape(-1).tolist()
        loader = torch.utils.data.DataLoader(dataset, batch_size=b, sampler=mine,
                                             collate_fn=TileCollate(stain_norm), drop_last=True, pin_memory=pin_memory,
                                             num_workers=workers, **worker_options(workers, persistent=False))
        return (tiles for tiles, _ in loader)

    return factory


def _build_model(s: PretrainSettings, n_tiles: int, device=None, world_size: int = 1):
    """(model, its config as a dict, the bank's record, notes). The AdCo bank is the size asked
    for (default a fifth of the tiles, as HistCode); when its step would not fit in half the
    memory free on the device it is made smaller, said in a note and recorded."""
    from histstore.encoders.methods import method_classes

    model_cls, config_cls = method_classes(s.method)
    bank, notes = None, []
    if s.method == "adco":
        requested = s.bank_size or max(1, n_tiles // 5)
        size = requested
        rows = s.batch_size // world_size * (2 if s.symmetric else 1)
        key_columns = s.batch_size if s.in_batch_negatives else 1
        free = _free_memory(device)
        if free is not None:
            from histstore.encoders.bank import bank_step_bytes, fit_bank_size

            size = fit_bank_size(requested, config_cls.proj_dim, rows, free // 2, key_columns)
            if size < requested:
                notes.append(f"AdCo bank reduced from {requested} to {size} negatives: {requested} would need about "
                             f"{bank_step_bytes(requested, config_cls.proj_dim, rows, key_columns) / 2**30:.1f} GiB per step and "
                             f"{free / 2**30:.1f} GiB is free on {device} (--bank-size sets it; recorded in the run)")
        bank = {"requested": requested, "used": size, "default": s.bank_size is None,
                "limited_by_memory": size < requested, "free_bytes": free}
        cfg = config_cls(arch=s.arch, bank_size=size, t=s.t, t_mem=s.t_mem, lr_mem=s.lr_mem,
                         key_momentum=s.key_momentum, symmetric=s.symmetric,
                         bn_splits=s.shuffle_bn_groups(world_size), in_batch_negatives=s.in_batch_negatives)
    else:
        cfg = config_cls(arch=s.arch, temperature=s.temperature)
    return model_cls(cfg, weights_path=s.weights), asdict(cfg), bank, notes


def _free_memory(device) -> int | None:
    from histstore.devices import available_memory, resolve_device

    return None if device is None else available_memory(resolve_device(device))


def pretrain(store: Store, s: PretrainSettings, resume: bool = False, show_progress: bool = True) -> PretrainReport | None:
    """Pretrain and register an encoder. With s.nproc_per_node, launches that many worker
    processes and returns rank 0's report; in a process started by torchrun (or by that
    launch) runs as its rank: rank 0 returns the report, the other ranks None."""
    from histstore.encoders.distributed import from_environment, launch_local, launched_by_torch

    if s.nproc_per_node is not None and not launched_by_torch():
        s.validate()
        return launch_local(_launched_worker, (str(store.root), s, resume, show_progress), s.nproc_per_node,
                            cpu_threads=_cpu_threads(s))
    dp, device = from_environment(s.device)
    try:
        s.validate(dp.world_size)
        if dp.is_main:
            return _pretrain_rank0(store, s, resume, show_progress, dp, device)
        _pretrain_other_rank(s, dp, device)
        return None
    finally:
        dp.close()


def _launched_worker(store_root: str, s: PretrainSettings, resume: bool, show_progress: bool):
    """What each launched worker process runs (importable by name: workers are spawned)."""
    return pretrain(Store.open(store_root), s, resume, show_progress)


def _cpu_threads(s: PretrainSettings) -> int | None:
    """torch threads per worker when the workers share the CPU cores."""
    import os

    import torch

    if str(s.device).startswith("cuda") or (s.device == "auto" and torch.cuda.is_available()):
        return None
    return max(1, (os.cpu_count() or 1) // (s.nproc_per_node or 1))


def _pretrain_rank0(store: Store, s: PretrainSettings, resume: bool, show_progress: bool, dp, device) -> PretrainReport:
    import torch

    from histstore.embeddings.dataset import TileDataset, load_slide_tiles
    from histstore.encoders.checkpoint import save_backbone
    from histstore.encoders.trainer import PretrainConfig, pretrain_loop
    from histstore.hashing import sha256_file

    t0 = time.perf_counter()
    with store.session():
        with store.read() as conn:
            slide_ids = cohort_slide_ids(conn, s.cohort)
            ingested = {r[0] for r in conn.exec_driver_sql("SELECT slide_id FROM slides WHERE status = 'ingested'").all()}
            slide_ids = [x for x in slide_ids if x in ingested]
            if not slide_ids:
                raise EmptyCohort(f"cohort {s.cohort!r} has no ingested slides", hint="run `histstore ingest` first")
            key = choose_tiling(conn, slide_ids, s.tiling)
            slides = load_slide_tiles(conn, slide_ids, key)
            resume_row = None
            if resume:
                resume_row = conn.exec_driver_sql(
                    "SELECT run_id, status, host, pid FROM runs WHERE kind = 'pretrain' AND cohort = ? "
                    "AND status <> 'finished' AND json_extract_string(settings, '$.method') = ? "
                    "AND json_extract_string(settings, '$.arch') = ? ORDER BY run_id DESC LIMIT 1",
                    (s.cohort, s.method, s.arch)).first()
                if resume_row is None:
                    raise NotFound(f"no unfinished {s.method} {s.arch} pretraining run on cohort {s.cohort!r} to resume",
                                   hint="run without --resume")
            elif s.name and find_encoder(conn, s.name):
                raise InvalidInput(f"encoder {s.name!r} already exists", hint="choose another --name")
        dataset = TileDataset(slides)
        n_tiles = len(dataset)
        if n_tiles < s.batch_size:
            raise InvalidInput(f"cohort {s.cohort!r} has {n_tiles} tiles, fewer than one batch of {s.batch_size}")
        steps = s.steps if s.steps is not None else max(1, int(s.epochs * (n_tiles // s.batch_size)))
        torch.manual_seed(s.seed)  # the projection head's (and a random backbone's) init
        model, model_cfg, bank, notes = _build_model(s, n_tiles, device, dp.world_size)
        train_cfg = PretrainConfig(steps=steps, lr=s.lr, warmup_steps=s.warmup_steps, amp=s.amp,
                                   checkpoint_every=s.checkpoint_every, seed=s.seed)
        settings = {**asdict(s), "steps": steps, "tiling_key": key, "n_tiles": n_tiles,
                    "n_slides": len(slide_ids), "model_config": model_cfg,
                    "train_config": asdict(train_cfg), "world_size": dp.world_size,
                    "per_rank_batch_size": s.batch_size // dp.world_size}
        if bank is not None:
            settings["bank"] = bank
        resumed_from = 0
        if resume_row is not None:
            from histstore.encoders.checkpoint import load_checkpoint
            from histstore.runs import refuse_if_alive

            run_id = resume_row[0]
            refuse_if_alive(store, run_id)
            ckpt = store.resolve(f"checkpoints/pretrain/run{run_id}.ckpt")
            resumed_from = int(load_checkpoint(ckpt)["step"]) if ckpt.is_file() else 0
            with store.commit(f"the resume of run {run_id}") as conn:
                mark_running(conn, run_id)
                # windows logged after the checkpoint are trained and logged again
                conn.exec_driver_sql("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, resumed_from))
                record_progress(conn, run_id, done=resumed_from, total=steps, unit="step")
        else:
            with store.commit("a new pretraining run") as conn:
                if s.name and find_encoder(conn, s.name):
                    raise InvalidInput(f"encoder {s.name!r} already exists", hint="choose another --name")
                run_id = create_run(conn, kind="pretrain", settings=settings, seed=s.seed, cohort=s.cohort,
                                    model=f"{s.method}-{s.arch}", name=s.name, progress_total=steps,
                                    progress_unit="step")
        ckpt_rel = f"checkpoints/pretrain/run{run_id}.ckpt"
        ckpt = store.resolve(ckpt_rel)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        workers = _loader_workers(s, device)
        batches = _batches_factory(dataset, s.batch_size, workers, s.stain_norm, s.seed, 0, dp.world_size,
                                   pin_memory=device.type == "cuda")
        plan = {"slides": slides, "steps": steps, "model_config": model_cfg, "train_config": train_cfg,
                "checkpoint": str(ckpt), "resume": resume_row is not None and ckpt.is_file()}
        dp.broadcast_object(plan)  # the other ranks wait for it (they never open the catalog)
        bar = progress_bar(total=steps, desc=f"pretrain {s.method} {s.arch} (run {run_id})", unit="step",
                           disable=not show_progress)
        bar.update(resumed_from)

        with Heartbeat(store, run_id) as beat:
            def on_log(rec: dict) -> None:
                step = int(rec["step"])
                rows = [{"name": k, "value": float(v), "step": step, "subset": "train"}
                        for k, v in rec.items() if k not in ("step", "epoch")]
                with store.commit(f"metrics of run {run_id}") as conn:
                    write_metrics(conn, run_id, rows)
                    fault_point("pretrain.mid_commit")
                    record_progress(conn, run_id, done=step)
                beat.touch()
                fault_point("pretrain.after_log")
                bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec.get('contrastive_acc', float('nan')):.2f}",
                                img_s=f"{rec['img_per_s']:.0f}", refresh=False)

            def on_progress(step: int, total: int) -> None:
                bar.n = step
                bar.refresh() if show_progress else None

            try:
                with run_outcome(store, run_id, "`histstore pretrain --resume` continues it"):
                    history = pretrain_loop(model, batches, train_cfg, device=device, checkpoint_path=ckpt,
                                            resume=plan["resume"], log_every=s.log_every,
                                            on_log=on_log, progress=on_progress, dp=dp)
            finally:
                bar.close()
        backbone_rel = f"checkpoints/encoders/run{run_id}-{s.method}-{s.arch}.pt"
        exported = save_backbone(ckpt, store.resolve(backbone_rel))
        backbone_sha = sha256_file(store.resolve(backbone_rel))
        name = s.name or f"{s.method}-{s.arch}-run{run_id}"
        fault_point("pretrain.before_register")
        with store.commit(f"encoder {name}") as conn:
            enc = register_encoder(conn, name=name, method=s.method, architecture=s.arch, dim=exported["dim"],
                                   settings=settings, checkpoint_path=backbone_rel,
                                   checkpoint_sha256=backbone_sha, pretrain_run_id=run_id)
            # encoders.pretrain_run_id links the two; runs.encoder_id (an indexed foreign key)
            # cannot be updated on a run that metrics already reference (DuckDB 2.0)
            conn.exec_driver_sql("INSERT INTO artifacts (kind, path, run_id, description) VALUES "
                                 "('pretrain-checkpoint', ?, ?, 'full training state (resume)')", (ckpt_rel, run_id))
            record_progress(conn, run_id, done=steps)
            end_run(conn, run_id, "finished")
    speeds = [h["img_per_s"] for h in history if "img_per_s" in h]
    return PretrainReport(run_id, name, steps, resumed_from, time.perf_counter() - t0,
                          float(np.median(speeds)) if speeds else 0.0, history, notes, dp.world_size)


def _pretrain_other_rank(s: PretrainSettings, dp, device) -> None:
    """Ranks > 0: train with rank 0's plan; no catalog, no checkpoint writes, no progress bar."""
    import torch

    from histstore.embeddings.dataset import TileDataset
    from histstore.encoders.checkpoint import config_from_dict
    from histstore.encoders.methods import method_classes
    from histstore.encoders.trainer import pretrain_loop

    plan = dp.broadcast_object(None)
    model_cls, config_cls = method_classes(s.method)
    torch.manual_seed(s.seed)
    model = model_cls(config_from_dict(config_cls, plan["model_config"]), weights_path=s.weights)
    dataset = TileDataset(plan["slides"])
    batches = _batches_factory(dataset, s.batch_size, _loader_workers(s, device), s.stain_norm, s.seed,
                               dp.rank, dp.world_size, pin_memory=device.type == "cuda")
    pretrain_loop(model, batches, plan["train_config"], device=device, checkpoint_path=plan["checkpoint"],
                  resume=plan["resume"], log_every=s.log_every, dp=dp)


def _loader_workers(s: PretrainSettings, device) -> int:
    if s.workers is not None:
        return s.workers
    return 8 if getattr(device, "type", str(device)) == "cuda" else 0
