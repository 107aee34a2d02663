"""The pretraining loop for AdCo / SimCLR models: a library function, no catalog access.

`pretrain_loop` runs the bank-initialisation pass (AdCo, fresh runs only), then SGD steps
(momentum 0.9, wd 1e-4, cosine schedule per step) on two augmented views of each batch, with
mixed precision where it helps, periodic and final checkpoints, and exact resume: a resumed run
restores model / EMA / bank / optimizer / schedule / RNG state and the data position, and sets
the same learning rate an uninterrupted run would at that step.

Data comes from `batches(epoch, skip)`: a callable returning an iterable of uint8 tile batches
[B, H, W, 3] (torch tensors) for `epoch`, starting after its first `skip` batches (a sampler
can skip without reading pixels). The loop calls it again with epoch + 1 when it is exhausted.

Data parallel (`dp`, one process per GPU or CPU share, see `distributed`): each rank's
`batches` yields its share of every global batch (rows rank * b.. of it, b = B / world) and
runs the same loop; augmentations and shuffle-BN permutations are drawn for the whole global
batch from one generator seeded alike on every rank (a sample is augmented the same way
whatever the number of ranks), gradients and the bank's gradient are averaged over ranks,
logged metrics are means over ranks, BN running statistics are averaged over ranks at each
checkpoint, and only rank 0 writes checkpoints. A stop request (Ctrl-C, SIGTERM from the
launcher) is agreed by all ranks at a step boundary, so they checkpoint the same step.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from histstore.devices import resolve_amp, resolve_device
from histstore.encoders.augment import AugmentConfig, BatchAugment, augmented_view, tiles_to_float, two_views
from histstore.encoders.batchnorm import bn_buffers
from histstore.encoders.checkpoint import as_dict, config_from_dict, load_checkpoint, save_checkpoint
from histstore.encoders.distributed import SINGLE, DataParallel
from histstore.encoders.schedule import CosineSchedule
from histstore.errors import HiststoreError, InvalidInput

BatchFactory = Callable[[int, int], Iterable[torch.Tensor]]

# train-config fields that may change on resume (they do not change the optimisation)
_RESUME_FREE = {"amp", "channels_last", "checkpoint_every", "bank_init_max_batches"}
_METRIC_ORDER = ("loss", "contrastive_acc", "bank_loss", "bank_grad_norm", "pos_sim", "bank_sim_max")


@dataclass(frozen=True)
class PretrainConfig:
    """Optimisation settings. Defaults are HistCode's (SGD lr 0.001 for batch 250, cosine,
    momentum 0.9, wd 1e-4); short runs on small data usually want a larger lr."""

    steps: int
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    final_lr: float = 0.0
    amp: str = "auto"  # auto | off | bf16 | fp16 (fp16: CUDA only, with a GradScaler)
    channels_last: bool = True
    checkpoint_every: int = 1000
    bank_init_max_batches: int | None = None  # None: until the bank is full
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError(f"steps must be > 0, got {self.steps}")
        if not self.lr > 0 or self.final_lr < 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("need lr > 0, final_lr >= 0, weight_decay >= 0, momentum in [0, 1)")
        if self.warmup_steps < 0 or self.checkpoint_every <= 0:
            raise ValueError("warmup_steps must be >= 0 and checkpoint_every > 0")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be auto|off|bf16|fp16, got {self.amp!r}")
        if isinstance(self.augment, dict):  # rebuilt from a checkpoint
            object.__setattr__(self, "augment", config_from_dict(AugmentConfig, self.augment))

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        return config_from_dict(cls, d)


def pretrain_loop(
    model: torch.nn.Module,
    batches: BatchFactory,
    config: PretrainConfig,
    device: str | torch.device = "auto",
    checkpoint_path: str | os.PathLike = "pretrain.ckpt",
    resume: bool = False,
    log_every: int = 10,
    on_log: Callable[[dict], None] | None = None,
    progress: bool | Callable[[int, int], None] = False,
    dp: DataParallel = SINGLE,
) -> list[dict]:
    """Pretrain `model` (AdCo or SimCLR) for `config.steps` steps; returns the logged records.

    Each record: step, epoch, lr, img_per_s and the mean over the logging window of the model's
    step metrics (loss, contrastive_acc, and for AdCo bank_loss, bank_grad_norm, pos_sim,
    bank_sim_max). `on_log(record)` is called for each record (console, catalog...).
    Checkpoints: every `config.checkpoint_every` steps and at the end, to `checkpoint_path`
    (atomic replace). An existing checkpoint is never overwritten unless `resume`.
    Ctrl-C (KeyboardInterrupt) finishes the current step, saves a checkpoint, then re-raises.
    The loss becoming non-finite raises HiststoreError (no checkpoint of the broken state).
    Seeds torch's global RNG with `config.seed` (the augmentations use their own generator);
    both RNG states are checkpointed, so a resumed run draws what the uninterrupted run would.
    `dp`: this process's place in data-parallel training (module docstring); `device` is then
    this rank's device. Records are the same on every rank; pass on_log on rank 0 only.
    """
    device = resolve_device(device)
    checkpoint_path = os.fspath(checkpoint_path)
    amp_dtype = resolve_amp(config.amp, device)
    if log_every <= 0:
        raise ValueError("log_every must be > 0")
    if resume and not os.path.isfile(checkpoint_path):
        raise InvalidInput(f"no checkpoint to resume at {checkpoint_path}", hint="run without --resume")
    if not resume and os.path.exists(checkpoint_path):
        raise InvalidInput(
            f"checkpoint {checkpoint_path} already exists", hint="resume it, or choose another output"
        )

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed + 1)  # augmentation and shuffle randomness (CPU)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.encoder_parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    schedule = CosineSchedule(optimizer, config.lr, config.steps, config.warmup_steps, config.final_lr)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    augment = BatchAugment(config.augment)
    state = {"step": 0, "epoch": 0, "skip": 0}

    if resume:
        ckpt = load_checkpoint(checkpoint_path)
        _check_resumable(ckpt, model, config, checkpoint_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng(ckpt.get("rng"), gen, device)
        extra = ckpt.get("extra") or {}
        state = {"step": int(ckpt["step"]), "epoch": int(extra.get("epoch", 0)), "skip": int(extra.get("skip", 0))}
    if hasattr(model, "distribute"):
        model.distribute(dp, device)

    def save() -> None:
        for t in bn_buffers(model):  # every rank's running statistics count (collective)
            dp.all_reduce_mean_(t)
        if dp.is_main:
            save_checkpoint(
                checkpoint_path, model, train_config=config, optimizer=optimizer, scheduler=schedule,
                scaler=scaler, step=state["step"], rng=_get_rng(gen, device),
                extra={"epoch": state["epoch"], "skip": state["skip"]},
            )

    model.train()
    if not resume and hasattr(model, "init_bank_step"):
        _init_bank(model, batches, augment, device, gen, amp_dtype, config.bank_init_max_batches, dp)

    history: list[dict] = []
    if state["step"] >= config.steps:
        return history
    bar = _progress_bar(progress, state["step"], config.steps)
    window: dict[str, torch.Tensor] = {}
    n_window, imgs, t0 = 0, 0, time.perf_counter()
    data = iter(batches(state["epoch"], state["skip"]))
    distributed = dp.active
    stopped = False
    with _DeferredInterrupt(distributed) as interrupt:
        try:
            while state["step"] < config.steps:
                tiles = _next_batch(data)
                if tiles is None:  # epoch exhausted
                    state["epoch"], state["skip"] = state["epoch"] + 1, 0
                    data = iter(batches(state["epoch"], 0))
                    tiles = _next_batch(data)
                    if tiles is None:
                        raise InvalidInput(f"no training batches in epoch {state['epoch']}")
                lr = schedule.apply(state["step"])
                b = tiles.shape[0]
                x1, x2 = two_views(tiles, augment, device, gen, rows=(dp.rank * b, dp.world_size * b))
                out = model.training_step(x1, x2, optimizer, scaler=scaler, amp_dtype=amp_dtype, generator=gen)
                state["step"] += 1
                state["skip"] += 1
                imgs += b * dp.world_size
                n_window += 1
                for k, v in out.items():
                    window[k] = window.get(k, 0) + v.float()
                step = state["step"]
                if step % log_every == 0 or step == config.steps:
                    record = {"step": step, "epoch": state["epoch"], "lr": lr}
                    record.update(_window_means(window, n_window, dp))
                    record["img_per_s"] = imgs / max(time.perf_counter() - t0, 1e-9)
                    if not math.isfinite(record["loss"]):
                        raise HiststoreError(
                            f"pretraining diverged: loss is {record['loss']} at step {step}",
                            hint="lower the learning rate or resume from the last checkpoint",
                        )
                    history.append(record)
                    if on_log is not None:
                        on_log(record)
                    window, n_window, imgs, t0 = {}, 0, 0, time.perf_counter()
                if bar is not None:
                    bar(step, config.steps)
                if step % config.checkpoint_every == 0 and step < config.steps:
                    save()
                if dp.any(interrupt.requested):
                    stopped = True
                    save()
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            # raised mid-step: save what we have, then stop (one process only: other ranks
            # are not at a step boundary to take part in the checkpoint's collectives)
            if not stopped and not distributed:
                save()
            raise
        finally:
            if bar is not None and hasattr(bar, "close"):
                bar.close()
    save()
    return history


# -- helpers -----------------------------------------------------------------------------------
def _window_means(window: dict[str, torch.Tensor], n: int, dp: DataParallel) -> dict[str, float]:
    """Means over the logging window's steps and over ranks (one small all-reduce)."""
    names = sorted(window, key=lambda k: (_METRIC_ORDER.index(k) if k in _METRIC_ORDER else 99, k))
    if not names:
        return {}
    values = torch.stack([window[k].detach().float().reshape(()) for k in names]) / n
    values = dp.all_reduce_mean_(values).cpu()
    return {k: float(v) for k, v in zip(names, values)}


@torch.no_grad()
def _init_bank(model, batches, augment, device, gen, amp_dtype, max_batches, dp: DataParallel = SINGLE) -> int:
    """Fill the AdCo bank with key embeddings of augmented tiles (passes over the data until
    the bank is full or `max_batches` batches were used); then rank 0's bank on every rank
    (equal already: every rank fills it with the gathered keys). Returns the number of batches."""
    used, epoch = 0, 0
    while not model.bank.is_full and (max_batches is None or used < max_batches):
        got = 0
        for tiles in batches(epoch, 0):
            b = tiles.shape[0]
            x = augmented_view(tiles_to_float(tiles, device), augment, gen, rows=(dp.rank * b, dp.world_size * b))
            model.init_bank_step(x, amp_dtype)
            used, got = used + 1, got + 1
            if model.bank.is_full or (max_batches is not None and used >= max_batches):
                break
        if got == 0:
            raise InvalidInput("no batches to initialise the negative bank")
        epoch += 1
    dp.broadcast_state(model.bank)
    return used


def _next_batch(it):
    try:
        return next(it)
    except StopIteration:
        return None


def _check_resumable(ckpt: dict, model, config: PretrainConfig, path: str) -> None:
    if ckpt["method"] != model.method:
        raise InvalidInput(f"{path} is a {ckpt['method']} checkpoint, not {model.method}")
    saved_model, now_model = _normalise(ckpt["model_config"]), _normalise(as_dict(model.config))
    if saved_model != now_model:
        diff = _diff(saved_model, now_model)
        raise InvalidInput(f"model settings differ from the checkpoint's: {diff}")
    saved, now = dict(ckpt["train_config"] or {}), as_dict(config)
    for k in _RESUME_FREE:
        saved.pop(k, None)
        now.pop(k, None)
    if _normalise(saved) != _normalise(now):
        raise InvalidInput(
            f"training settings differ from the checkpoint's: {_diff(_normalise(saved), _normalise(now))}",
            hint="resume with the checkpoint's settings",
        )


def _normalise(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _normalise(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_normalise(v) for v in d]
    return d


def _diff(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k} (saved {a.get(k)!r}, now {b.get(k)!r})" for k in keys)


def _get_rng(gen: torch.Generator, device: torch.device) -> dict:
    rng = {"torch": torch.get_rng_state(), "augment": gen.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _set_rng(rng: dict | None, gen: torch.Generator, device: torch.device) -> None:
    if not rng:
        return
    torch.set_rng_state(rng["torch"])
    gen.set_state(rng["augment"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def _progress_bar(progress, initial: int, total: int):
    if callable(progress):
        return progress
    if not progress:
        return None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit="step", desc="pretrain")

    class _Bar:
        def __call__(self, step, total):
            bar.update(step - bar.n)

        def close(self):
            bar.close()

    return _Bar()


class _DeferredInterrupt:
    """In the main thread, turn the first SIGINT into a flag checked between steps (so the
    checkpoint is taken at a step boundary); a second SIGINT interrupts at once.

    distributed: SIGINT and SIGTERM only ever set the flag. A launcher passes Ctrl-C on to its
    workers (a second SIGINT right after the terminal's) and stops them with SIGTERM; the
    ranks must reach the same step boundary to checkpoint together (the launcher kills them
    if they take too long)."""

    def __init__(self, distributed: bool = False):
        self.requested = False
        self.distributed = distributed
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.requested and not self.distributed:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            signals = (signal.SIGINT, signal.SIGTERM) if self.distributed else (signal.SIGINT,)
            for sig in signals:
                try:
                    self._old[sig] = signal.signal(sig, self._handler)
                except ValueError:
                    pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
