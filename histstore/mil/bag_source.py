"""Where training reads its bags from: one interface, two modes chosen by a memory budget.

A bag source holds n bags of D-dim tile features in their STORED dtype (float16 by default);
nothing here makes a float32 copy of the cohort. The model's float32 input is made per batch
(`x.float()` in the trainer), so both modes feed the model the very same numbers and a seed
gives the same fold results in either.

- resident (`PackedBags`, mil/bags.py): the whole cohort packed once into one tensor on the
  device; a step is a view or one `index_select`.
- streamed (`StreamedBags`): bags read from disk when a step needs them, by a few background
  threads that run `prefetch` parts ahead of the loop (bounded, so memory stays within the
  budget); each epoch's shuffled order is read as it goes, evaluation streams the same way.

The interface every trainer uses (and wrappers such as standardisation keep):

    len(src), src.lengths [n] (int64), src.offsets [n + 1], src.dim, src.device, src.dtype
    src.names            bag names for messages (slide ids), or None
    src.bag(i)           -> Tensor [N_i, D] on the device, stored dtype
    src.batch(idx)       -> (x [T_b, D], seg [T_b] position in idx) or (bag, None) for one bag
    src.batches(parts)   -> iterator of src.batch(p) for p in parts, in order (prefetched)
    src.subset(pos)      -> the bags `pos` as a source of their own (no copy)

`open_bag_source` chooses the mode from a budget in bytes (`choose_mode` says why) and refuses,
in one line naming it, a bag that does not fit the budget even alone.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from histstore.devices import resolve_device
from histstore.errors import InvalidInput
from histstore.mil.bags import PackedBags, SubsetBags

FLOAT32_BYTES = 4
DEFAULT_PREFETCH = 4       # parts read ahead of the loop in streamed mode (fewer if the budget says)
DEFAULT_READ_THREADS = 2   # reader threads in streamed mode


def size_text(n: float) -> str:
    """Bytes for people: '14.4 kB', '43.0 MB', '6.00 GB'."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def batch_of(bags: Sequence[Tensor], device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Bags (host tensors, in order) -> (x [T, D], seg) on device, as PackedBags.batch gives."""
    if len(bags) == 1:
        return bags[0].to(device, non_blocking=True), None
    lens = torch.as_tensor([b.shape[0] for b in bags])
    x = torch.cat(bags)
    seg = torch.repeat_interleave(torch.arange(len(bags)), lens)
    return x.to(device, non_blocking=True), seg.to(device, non_blocking=True)


class StreamedBags:
    """Bags read on demand by `read(i) -> ndarray [N_i, D]` (stored dtype), with background
    prefetch in `batches`. Holds at most prefetch + 1 parts in memory at a time."""

    def __init__(self, read: Callable[[int], np.ndarray], lengths: Sequence[int], dim: int,
                 dtype: torch.dtype, device: str | torch.device = "cpu", *,
                 names: Sequence[str] | None = None, prefetch: int = DEFAULT_PREFETCH,
                 threads: int = DEFAULT_READ_THREADS):
        self._read = read
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.dim = int(dim)
        self.dtype = dtype
        self.device = resolve_device(device)
        self.names = list(names) if names is not None else None
        self.prefetch = max(0, int(prefetch))
        self.threads = max(1, int(threads))

    def __len__(self) -> int:
        return len(self.lengths)

    def _host_bag(self, i: int) -> Tensor:
        a = self._read(int(i))
        if a.shape != (self.lengths[i], self.dim):
            name = self.names[i] if self.names else f"bag {i}"
            raise InvalidInput(f"{name}: read {tuple(a.shape)}, expected ({self.lengths[i]}, {self.dim})")
        t = torch.from_numpy(np.ascontiguousarray(a))
        if t.dtype != self.dtype:
            raise InvalidInput(f"bag {i} is {t.dtype}, the source holds {self.dtype}")
        return t.pin_memory() if self.device.type == "cuda" else t

    def _load(self, idx: np.ndarray) -> tuple[Tensor, Tensor | None]:
        return batch_of([self._host_bag(int(i)) for i in idx], self.device)

    def bag(self, i: int) -> Tensor:
        return self._host_bag(int(i)).to(self.device)

    def batch(self, idx: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor | None]:
        return self._load(np.asarray(idx, dtype=np.int64))

    def batches(self, parts: Iterable[Sequence[int]]) -> Iterator[tuple[Tensor, Tensor | None]]:
        """self.batch(p) for each part, in order, read `prefetch` parts ahead on threads."""
        if self.prefetch == 0:
            for p in parts:
                yield self._load(np.asarray(p, dtype=np.int64))
            return
        it = iter(parts)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bag-reader")
        pending: deque = deque()
        try:
            for p in it:
                pending.append(pool.submit(self._load, np.asarray(p, dtype=np.int64)))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                x = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(self._load, np.asarray(nxt, dtype=np.int64)))
                yield x
                del x
        finally:  # a loop left early (error, interrupt): drop what was read ahead
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def subset(self, positions: Sequence[int]) -> SubsetBags:
        return SubsetBags(self, positions)


# ----------------------------------------------------------------------------- the budget

@dataclass(frozen=True)
class ModePlan:
    """What `choose_mode` decided, with the figures it decided on (bytes)."""

    mode: str                 # "resident" or "streamed"
    budget: int
    cohort_bytes: int         # every bag in the stored dtype
    step_bytes: int           # the largest step in the stored dtype plus its float32 copy
    prefetch: int             # streamed: parts read ahead (0: each read when needed)

    def describe(self) -> str:
        gb = size_text
        if self.mode == "resident":
            return f"bags resident: cohort {gb(self.cohort_bytes)} within memory budget {gb(self.budget)}"
        return (f"bags streamed from disk ({self.prefetch} steps read ahead): cohort "
                f"{gb(self.cohort_bytes)} exceeds memory budget {gb(self.budget)}")


def choose_mode(lengths: Sequence[int], dim: int, itemsize: int, budget: int, *,
                names: Sequence[str] | None = None, bags_per_step: int = 1,
                prefetch: int = DEFAULT_PREFETCH,
                force: str | None = None) -> ModePlan:
    """Resident when the packed cohort plus the float32 copy of its largest step fits `budget`, else
    streamed with as many parts read ahead (<= prefetch) as fit. A bag that does not fit
    alone (stored + its float32 working copy) is refused, naming it. force: "resident" or
    "streamed" overrides the choice (tests, benchmarks), still checked against the budget."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        raise InvalidInput("no bags to train on")
    per_tile = dim * itemsize
    work_tile = dim * (itemsize + (0 if itemsize == FLOAT32_BYTES else FLOAT32_BYTES))
    big = int(np.argmax(lengths))
    need_one = int(lengths[big]) * work_tile
    if need_one > budget:
        name = names[big] if names is not None else f"bag {big}"
        raise InvalidInput(f"memory budget {size_text(budget)} is too small for bag {name} "
                           f"({int(lengths[big])} tiles x {dim}: needs {size_text(need_one)} with its "
                           f"float32 working copy); raise --memory-budget")
    k = min(max(1, bags_per_step), len(lengths))
    step_tiles = int(np.sort(lengths)[-k:].sum())
    step_bytes = step_tiles * work_tile
    cohort = int(lengths.sum()) * per_tile
    resident_need = cohort + step_tiles * (work_tile - per_tile)
    mode = force or ("resident" if resident_need <= budget else "streamed")
    if mode not in ("resident", "streamed"):
        raise InvalidInput(f"unknown bag mode {mode!r}: resident or streamed")
    if mode == "resident":
        if resident_need > budget:
            raise InvalidInput(f"resident bags need {size_text(resident_need)}, over the memory "
                               f"budget {size_text(budget)}")
        return ModePlan("resident", budget, cohort, step_bytes, 0)
    if step_bytes > budget:
        raise InvalidInput(f"a step of {k} bags needs {size_text(step_bytes)}, over the memory "
                           f"budget {size_text(budget)}: lower --bags-per-step or raise --memory-budget")
    # in memory at once: the part in use (stored + float32 copy) and `depth` parts read ahead
    # (stored); depth 0 reads each part when it is needed
    ahead = step_tiles * per_tile
    depth = int(max(0, min(prefetch, (budget - step_bytes) // ahead)))
    return ModePlan("streamed", budget, cohort, step_bytes, depth)


def parse_budget(text: str | None, device: str | torch.device = "cpu",
                 fraction: float = 0.5) -> int:
    """'auto'/None: `fraction` of the memory available now (free RAM, or free GPU memory when
    bags live on a GPU); else a size: '6GB', '512MB', '2.5G', or plain bytes."""
    if text is None or str(text).strip().lower() in ("", "auto"):
        return int(fraction * available_memory(device))
    s = str(text).strip().upper().replace(" ", "")
    units = {"TB": 1e12, "T": 1e12, "GB": 1e9, "G": 1e9, "MB": 1e6, "M": 1e6, "KB": 1e3, "K": 1e3,
             "GIB": 2**30, "MIB": 2**20, "B": 1}
    for unit in sorted(units, key=len, reverse=True):
        if s.endswith(unit):
            num, mult = s[: -len(unit)], units[unit]
            break
    else:
        num, mult = s, 1
    try:
        value = float(num) * mult
    except ValueError:
        raise InvalidInput(f"--memory-budget {text!r} is not a size (e.g. 6GB, 512MB, auto)") from None
    if not value > 0:
        raise InvalidInput(f"--memory-budget must be positive, got {text!r}")
    return int(value)


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes free now (histstore.devices.available_memory), else the free physical pages."""
    import os

    from histstore.devices import available_memory as device_free

    free = device_free(resolve_device(device))
    return free if free is not None else int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def open_bag_source(read: Callable[[int], np.ndarray], lengths: Sequence[int], dim: int, dtype: str,
                    plan: ModePlan, device: str | torch.device = "cpu", *,
                    names: Sequence[str] | None = None,
                    threads: int = DEFAULT_READ_THREADS):
    """A source in plan.mode: resident bags are read (on `threads`, in order) straight into
    the packed tensor (peak: the packed cohort plus the bags in flight); streamed ones are
    read when needed."""
    if np.dtype(dtype) not in (np.float16, np.float32):
        raise InvalidInput(f"features stored as {dtype}: float16 or float32 expected")
    tdtype = torch.float16 if np.dtype(dtype) == np.float16 else torch.float32
    dev = resolve_device(device)
    lengths = np.asarray(lengths, dtype=np.int64)
    if plan.mode == "streamed":
        return StreamedBags(read, lengths, dim, tdtype, dev, names=names, prefetch=plan.prefetch,
                            threads=threads)
    stream = StreamedBags(read, lengths, dim, tdtype, "cpu", names=names, prefetch=2, threads=threads)
    features = torch.empty((int(lengths.sum()), int(dim)), dtype=tdtype, device=dev)
    start = 0
    for i, (x, _) in enumerate(stream.batches([[i] for i in range(len(lengths))])):
        n = int(lengths[i])
        features[start:start + n].copy_(x)
        start += n
    return PackedBags(features, lengths, names=names)
