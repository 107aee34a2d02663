"""Data-parallel pretraining: which rank this process is, and the collectives AdCo and SimCLR
need, written so that one process (world size 1, no process group) runs the same code.

A `DataParallel` is made once per process (`from_environment`, from the variables torchrun /
torch.distributed's elastic launcher set: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
Backends: NCCL when the device is a GPU, gloo on CPU; a second gloo group carries the small
CPU-side messages (the stop flag, the run plan) so they never wait on the GPU stream.

Every rank holds an equal share of the global batch, in rank order: rank r has global rows
[r * b, (r + 1) * b). `all_gather` therefore returns rows in global order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DataParallel:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None      # the process group of the tensors (None: one process, no group)
    control: Any = None    # gloo group for CPU-side messages
    backend: str | None = None
    _owns_group: bool = field(default=False, repr=False)

    @property
    def active(self) -> bool:
        """True when a process group exists (also for a launched world of size 1)."""
        return self.group is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (identity in one process) -------------------------------------------------
    @torch.no_grad()
    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """[n, ...] on every rank -> [world * n, ...] in rank order (no gradient).
        A channels-last image batch stays channels-last (gathered as NHWC, no copy)."""
        if not self.active or self.world_size == 1:
            return t
        if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
            return self.all_gather(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        t = t.contiguous()
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t, group=self.group)
        return torch.cat(out)

    def all_gather_with_grad(self, t: torch.Tensor) -> torch.Tensor:
        """As `all_gather`, but the gradient of every rank's use of the result flows back to
        the rank that contributed each row (sum over ranks), as a single process would get."""
        if not self.active or self.world_size == 1:
            return t
        return _GatherWithGrad.apply(t, self)

    @torch.no_grad()
    def all_reduce_mean_(self, t: torch.Tensor) -> torch.Tensor:
        if self.active and self.world_size > 1:
            dist.all_reduce(t, group=self.group)
            t.div_(self.world_size)
        return t

    @torch.no_grad()
    def broadcast_(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.active and self.world_size > 1:
            dist.broadcast(t, src=src, group=self.group)
        return t

    @torch.no_grad()
    def broadcast_cpu_(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        """A small CPU tensor from rank `src` (over the CPU group: no GPU sync)."""
        if self.active and self.world_size > 1:
            dist.broadcast(t, src=src, group=self.control)
        return t

    @torch.no_grad()
    def broadcast_state(self, module: nn.Module, src: int = 0) -> None:
        """Every parameter and buffer of `module` from rank `src` to all ranks."""
        for t in list(module.parameters()) + list(module.buffers()):
            self.broadcast_(t.data, src)

    def broadcast_object(self, obj: Any = None, src: int = 0) -> Any:
        """A picklable object from rank `src` (others pass None) -> on every rank."""
        if not self.active or self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.control)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any rank (CPU message; no GPU sync)."""
        if not self.active or self.world_size == 1:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def barrier(self) -> None:
        if self.active and self.world_size > 1:
            dist.barrier(group=self.control)

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.group = self.control = None
            self._owns_group = False


SINGLE = DataParallel()


def launched_by_torch() -> bool:
    """True in a process started by torchrun / torch.distributed's elastic launcher."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def from_environment(device: str | torch.device = "auto") -> tuple[DataParallel, torch.device]:
    """Join the process group torchrun described in the environment (or return SINGLE and
    the resolved device when not launched by it). GPU: this rank's GPU is cuda:LOCAL_RANK and
    the backend NCCL; CPU: gloo."""
    from histstore.devices import resolve_device
    from histstore.errors import InvalidInput

    if not launched_by_torch():
        return SINGLE, resolve_device(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise InvalidInput(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible)",
                               hint="use at most one process per GPU (--nproc-per-node)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    if dist.is_initialized():
        group = dist.group.WORLD
        owns = False
    else:
        kw = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kw)
        group, owns = dist.group.WORLD, True
    control = group if backend == "gloo" else dist.new_group(backend="gloo")
    return DataParallel(rank, world, local, group, control, backend, owns), dev


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, dp: DataParallel):
        ctx.dp, ctx.n = dp, t.shape[0]
        out = [torch.empty_like(t) for _ in range(dp.world_size)]
        dist.all_gather(out, t.contiguous(), group=dp.group)
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        dp = ctx.dp
        grad = grad.contiguous()
        dist.all_reduce(grad, group=dp.group)  # every rank's loss uses every row
        return grad[dp.rank * ctx.n:(dp.rank + 1) * ctx.n], None


# -- launching workers on this machine (`histstore pretrain --nproc-per-node N`) ---------------
def launch_local(fn, args: tuple, nproc_per_node: int, cpu_threads: int | None = None) -> Any:
    """Run fn(*args) in `nproc_per_node` worker processes started by torch.distributed's
    elastic launcher (what torchrun runs: a c10d rendezvous on a free local port, RANK /
    WORLD_SIZE / LOCAL_RANK / MASTER_ADDR set for each worker). Returns rank 0's result.

    fn must be importable by name (workers are spawned). A worker's error is re-raised here
    as the same histstore error (KeyboardInterrupt for an interrupted run), with its message;
    Ctrl-C here reaches the workers, which stop together at a step boundary.
    cpu_threads: torch threads per worker (CPU runs share the cores)."""
    import json
    import shutil
    import tempfile
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    import logging

    errors = tempfile.mkdtemp(prefix="histstore-workers-")
    # the launcher logs a worker's failure with its traceback; we report it in one line
    quiet = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing.spawn")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc_per_node,
                          run_id=f"histstore-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d",
                          rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.5,
                          start_method="spawn")
    try:
        try:
            results = elastic_launch(config, _reporting_worker)(fn, args, errors, cpu_threads)
        except SignalException:
            raise KeyboardInterrupt from None
        except ChildFailedError as exc:
            reports = {}
            for name in sorted(os.listdir(errors)):
                with open(os.path.join(errors, name)) as f:
                    reports[name] = json.load(f)
            raise _worker_error(reports, exc) from None
        return results.get(0)
    finally:
        shutil.rmtree(errors, ignore_errors=True)
        for log, level in zip(quiet, levels):
            log.setLevel(level)


def _reporting_worker(fn, args: tuple, error_dir: str, cpu_threads: int | None):
    """The launched process: run fn, and leave a report of what stopped it for the parent."""
    import json

    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    try:
        return fn(*args)
    except BaseException as exc:
        report = {"type": type(exc).__name__, "module": type(exc).__module__,
                  "message": getattr(exc, "message", None) or str(exc) or type(exc).__name__,
                  "hint": getattr(exc, "hint", None)}
        path = os.path.join(error_dir, f"rank{int(os.environ.get('RANK', '0')):05d}.json")
        with open(path, "w") as f:
            json.dump(report, f)
        # a plain exception: the launcher's wrapper records it and exits non-zero (it would
        # swallow a KeyboardInterrupt and exit 0); the report above says what it was
        raise RuntimeError(f"{report['type']}: {report['message']}") from None


def _worker_error(reports: dict[str, dict], exc: Exception) -> BaseException:
    """The error to raise in the launching process: rank 0's if it reported one (other ranks
    then usually only saw the broken connection), else the first rank's."""
    from histstore import errors as hs_errors

    if not reports:
        first = next(iter(exc.failures.values()), None) if getattr(exc, "failures", None) else None
        code = getattr(first, "exitcode", "?")
        return hs_errors.HiststoreError(f"a pretraining worker died (exit code {code}) without an error report")
    name = sorted(reports)[0]
    r = reports[name]
    if r["type"] == "KeyboardInterrupt":
        return KeyboardInterrupt()
    cls = getattr(hs_errors, r["type"], None) if r["module"] == hs_errors.__name__ else None
    if isinstance(cls, type) and issubclass(cls, hs_errors.HiststoreError):
        return cls(r["message"], hint=r["hint"])
    return hs_errors.HiststoreError(f"pretraining worker {name.split('.')[0]} failed: {r['type']}: {r['message']}")
