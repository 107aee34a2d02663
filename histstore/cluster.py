"""Where a job's per-slide work runs: in this process, a local process pool, or Dask distributed.

`--cluster` of `ingest`, `embed` and `features import`:
- `none`: this process (or, for ingest, a local spawn pool): the path the jobs always had;
- `local`: a Dask `LocalCluster` of `--workers` processes on this machine;
- `tcp://HOST:PORT`: an existing Dask scheduler (`dask scheduler` + `dask worker` elsewhere);
- `slurm` / `pbs`: a dask-jobqueue cluster configured the Dask way (`jobqueue.yaml`), scaled to
  `--workers` jobs.

Every runner has one interface: `runner.run(tasks)` yields each task's outcome as it completes
(`Done`: value, or a one-line error), largest tasks submitted first. The calling process is the
only catalog writer: it registers each outcome as it arrives. Workers must see the store at the
same path (`check_shared_store`, at start, and `require_store` in each task).

Dask is imported only when a cluster is asked for, so `histstore sql`/`status` stay fast.
"""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from histstore.errors import HiststoreError, InvalidInput

KINDS = ("none", "local", "slurm", "pbs")
CLUSTER_HELP = ("Where per-slide work runs: none (this machine, as always), local (a Dask cluster of "
                "--workers processes), tcp://HOST:PORT (a running Dask scheduler), slurm or pbs "
                "(dask-jobqueue, configured in jobqueue.yaml; --workers jobs).")
# a worker that dies while running a task: the task is run again on another worker this many
# times before it is recorded as failed (Dask's `distributed.scheduler.allowed-failures`; set
# for clusters histstore starts, an existing scheduler keeps its own setting)
ALLOWED_FAILURES = 2
# each worker holds only the slide it runs, none queued behind it: a worker that dies then
# counts against that one slide alone (Dask counts a death against every task assigned to the
# worker), and a long slide never waits behind another on a busy worker while others idle
SCHEDULER_CONFIG = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                    "distributed.scheduler.worker-saturation": 1.0}
CHECK_PREFIX = ".histstore-cluster-check-"
_ADDRESS = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class ClusterSpec:
    kind: str                   # none | local | address | slurm | pbs
    address: str | None = None  # kind 'address'
    workers: int | None = None

    @property
    def distributed(self) -> bool:
        return self.kind != "none"

    def __str__(self) -> str:
        return self.address if self.kind == "address" else self.kind


def parse_cluster(value: str | None, workers: int | None = None) -> ClusterSpec:
    """`--cluster` and `--workers` -> a ClusterSpec (InvalidInput naming the bad value)."""
    if workers is not None and workers < 1:
        raise InvalidInput(f"--workers must be >= 1, got {workers}")
    text = (value if value is not None else "none").strip()
    if text.lower() in KINDS:
        return ClusterSpec(text.lower(), None, workers)
    m = _ADDRESS.match(text)
    if m and 0 < int(m.group(2)) < 65536:
        return ClusterSpec("address", text, workers)
    raise InvalidInput(f"--cluster must be none, local, tcp://HOST:PORT, slurm or pbs, not {text!r}")


@dataclass
class Task:
    """One unit of work: fn(*args) on a worker. `key` names it (a slide id); `size` orders
    submission (largest first: the longest task does not start last)."""
    key: str
    fn: Callable
    args: tuple
    size: float = 0.0


@dataclass
class Done:
    task: Task
    value: Any = None
    error: str | None = None  # the task raised, or its workers died too often


def largest_first(tasks: Iterable[Task]) -> list[Task]:
    return sorted(tasks, key=lambda t: -t.size)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class InProcess:
    """Tasks run here, one after another, in the given order."""

    def run(self, tasks: list[Task]) -> Iterator[Done]:
        for t in tasks:
            yield Done(t, t.fn(*t.args))

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class LocalPool(InProcess):
    """A pool of spawned processes on this machine (never forked: the parent may hold the
    DuckDB file)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = None

    def run(self, tasks: list[Task]) -> Iterator[Done]:
        import concurrent.futures as cf
        import multiprocessing as mp

        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(max_workers=min(self.workers, max(1, len(tasks))),
                                                mp_context=mp.get_context("spawn"))
        futures = {self._pool.submit(t.fn, *t.args): t for t in tasks}
        try:
            for fut in cf.as_completed(futures):
                yield Done(futures[fut], fut.result())
        except BaseException:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class DaskRunner(InProcess):
    """Tasks submitted to a Dask cluster (started here, or a running scheduler), largest first;
    outcomes yielded as they complete. `close` (the end of the `with` block, also after an
    error or Ctrl-C) cancels what is left and closes the client and any cluster started here.

    abandon(value): called at close for tasks that finished but were never handed out, so
    that what they wrote (an array under .partial/) does not stay behind."""

    SETTLE_S = 0.5  # at close: how long results already on their way may take to arrive

    def __init__(self, spec: ClusterSpec, resources: dict | None = None,
                 abandon: Callable[[Any], None] | None = None):
        self.spec, self.resources, self.abandon = spec, resources, abandon
        self.client, self.cluster = connect(spec)
        self._pending: dict = {}

    def workers(self) -> dict[str, dict]:
        return self.client.scheduler_info(n_workers=-1)["workers"]

    def has_resource(self, name: str) -> bool:
        return any(name in (w.get("resources") or {}) for w in self.workers().values())

    def run(self, tasks: list[Task]) -> Iterator[Done]:
        from distributed import as_completed

        ordered = largest_first(tasks)
        for rank, t in enumerate(ordered):
            fut = self.client.submit(t.fn, *t.args, key=f"histstore-{t.key}-{uuid.uuid4().hex[:8]}",
                                     pure=False, priority=len(ordered) - rank, resources=self.resources)
            self._pending[fut] = t
        # no cancelling here on an error: the caller first withdraws its lease (the token
        # file), then closes the runner, so tasks ending meanwhile clean up after themselves
        for fut in as_completed(list(self._pending)):
            t = self._pending.pop(fut)
            if fut.status == "finished":
                value = fut.result()
                fut.release()
                yield Done(t, value)
            else:
                exc = fut.exception()
                fut.release()
                yield Done(t, error=_task_error(exc, t))

    def cancel(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        if self.abandon is not None:
            from distributed import wait

            try:
                wait(list(pending), timeout=self.SETTLE_S)
            except Exception:
                pass
            for fut in pending:
                if fut.status == "finished":
                    try:
                        self.abandon(fut.result(timeout=10))
                    except Exception:
                        pass
        try:
            self.client.cancel(list(pending), force=True)
        except Exception:
            pass

    def close(self) -> None:
        try:
            self.cancel()
            self.client.close(timeout=10)
        finally:
            if self.cluster is not None:
                self.cluster.close(timeout=10)
                self.cluster = None


def _task_error(exc: BaseException | None, t: Task) -> str:
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return (f"{t.key}: the workers running it died each time it was tried (out of memory, a crash, "
                f"a lost node; Dask's allowed-failures); {_one_line(exc)}")
    return f"{t.key}: {_one_line(exc) if exc is not None else 'cancelled'}"


def _local_env(n_workers: int) -> dict:
    """Each worker's share of this machine's cores for torch/BLAS threads (Dask's default is one)."""
    threads = str(max(1, (os.cpu_count() or 1) // max(1, n_workers)))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))


def connect(spec: ClusterSpec):
    """(Client, cluster started here or None) for a distributed spec."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    timeout = float(os.environ.get("HISTSTORE_CLUSTER_WAIT", "600"))
    cluster = None
    try:
        if spec.kind == "local":
            n = spec.workers or default_workers()
            with dask.config.set(SCHEDULER_CONFIG):
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR,
                                       env=_local_env(n))
            client = Client(cluster, timeout=timeout)
        elif spec.kind == "address":
            try:
                client = Client(spec.address, timeout=min(timeout, 30))
            except (OSError, TimeoutError) as exc:
                raise InvalidInput(f"cannot reach the Dask scheduler at {spec.address}: {_one_line(exc)}") from None
        elif spec.kind in ("slurm", "pbs"):
            cluster = _jobqueue(spec)
            client = Client(cluster, timeout=timeout)
        else:
            raise InvalidInput(f"--cluster {spec} is not a Dask cluster")
        if spec.kind != "local":
            try:  # queued batch jobs: wait for the first worker only
                client.wait_for_workers(1, timeout=timeout)
            except TimeoutError:
                client.close()
                raise HiststoreError(f"no Dask worker joined {spec} within {timeout:.0f} s "
                                     "(HISTSTORE_CLUSTER_WAIT)") from None
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    return client, cluster


def _jobqueue(spec: ClusterSpec):
    try:
        import dask_jobqueue
    except ImportError:
        raise InvalidInput(f"--cluster {spec.kind} needs dask-jobqueue",
                           hint="pip install 'histstore[cluster]'") from None
    import dask

    cls = dask_jobqueue.SLURMCluster if spec.kind == "slurm" else dask_jobqueue.PBSCluster
    try:
        with dask.config.set(SCHEDULER_CONFIG):  # the scheduler runs here
            cluster = cls()  # cores, memory, queue, ... from jobqueue.yaml (Dask's config directories)
    except ValueError as exc:
        what = ("no cores and memory per job configured" if "cores and memory" in str(exc)
                else _one_line(exc))
        raise InvalidInput(f"--cluster {spec.kind}: {what}",
                           hint=f"set jobqueue.{spec.kind} (cores, memory, ...) in a Dask config file "
                                "such as ~/.config/dask/jobqueue.yaml") from None
    cluster.scale(jobs=spec.workers or 1)
    return cluster


# -- the shared file system -----------------------------------------------------------------

def _sees_token(path: str, token: str) -> bool:
    """On a worker: is the client's token file there with the client's token?"""
    from histstore.faults import active

    if active("cluster.store_hidden"):  # tests: a worker with another view of the file system
        return False
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def check_shared_store(runner: DaskRunner, store_root: Path) -> Path:
    """Write a token into the store and have every worker read it back; InvalidInput naming
    the workers that cannot. Returns the token file (tasks call `require_store` on it; remove
    it with `remove_token` at the end)."""
    token = uuid.uuid4().hex
    path = Path(store_root) / f"{CHECK_PREFIX}{token[:12]}"
    path.write_text(token)
    try:
        seen = runner.client.run(_sees_token, str(path), token)
    except BaseException:
        remove_token(path)
        raise
    blind = sorted(w for w, ok in seen.items() if not ok)
    if blind:
        remove_token(path)
        raise InvalidInput(f"{len(blind)} of {len(seen)} Dask workers cannot see the store {store_root} "
                           f"({', '.join(blind)}): the store must be on a file system all workers share, "
                           "at the same path")
    return path


def require_store(token_path: str) -> None:
    """In a task: fail in one line when this worker cannot see the store (a worker that joined
    after the start-up check)."""
    if not os.path.exists(token_path):
        import socket

        raise HiststoreError(f"worker on {socket.gethostname()} cannot see the store "
                             f"({os.path.dirname(token_path)}): it must be on a shared file system")


def guarded(token_path: str, fn: Callable, *args):
    """A task on a worker: fn(*args) once the worker is known to see the store."""
    require_store(token_path)
    return fn(*args)


def remove_token(path: Path | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def open_runner(spec: ClusterSpec, local_workers: int = 1, resources: dict | None = None):
    """The runner for a spec: Dask for a cluster; for `none`, this process (local_workers 1)
    or a local spawn pool."""
    if spec.distributed:
        return DaskRunner(spec, resources)
    return InProcess() if local_workers <= 1 else LocalPool(local_workers)
