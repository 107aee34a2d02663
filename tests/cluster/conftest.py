"""Dask clusters for the distributed tests: started once per module, on 127.0.0.1 with ports
the OS picks, always closed; every wait has a timeout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

START_TIMEOUT = 60
ALLOWED_FAILURES = 1  # a task whose worker dies is tried twice (fewer worker restarts to wait for)


FAULT_PLUGIN = "histstore-fault"


def arm_fault(spec: str):
    """A worker plugin arming a fault point on every worker, also on workers started later (a
    nanny's replacement for a killed one). Defined in a function so that cloudpickle sends the
    class by value: workers need not import the tests."""
    from distributed import WorkerPlugin

    class ArmFault(WorkerPlugin):
        name = FAULT_PLUGIN

        def setup(self, worker):
            from histstore import faults

            faults.configure(spec)

        def teardown(self, worker):
            from histstore import faults

            faults.configure(None)

    return ArmFault()


@pytest.fixture(scope="module")
def local_cluster():
    """A LocalCluster of 2 worker processes (one thread each) and a client on it."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                          "distributed.scheduler.worker-saturation": 1.0}):
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster, timeout=START_TIMEOUT)
    try:
        yield client
    finally:
        client.close(timeout=10)
        cluster.close(timeout=10)


def _dask(*args) -> list[str]:
    return [sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]]


@pytest.fixture(scope="module")
def subprocess_cluster(tmp_path_factory):
    """`dask scheduler` + 2 `dask worker`s as subprocesses; yields the scheduler's address."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask")
    sched_file = folder / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0"}
    procs = [subprocess.Popen(_dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                    "--scheduler-file", str(sched_file)),
                              stdout=subprocess.DEVNULL, stderr=open(folder / "scheduler.log", "w"), env=env)]
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not sched_file.is_file() or not sched_file.read_text().strip():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError("dask scheduler did not start: " + (folder / "scheduler.log").read_text()[-2000:])
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written whole, but give the writer a moment
        address = json.loads(sched_file.read_text())["address"]
        for k in range(2):
            procs.append(subprocess.Popen(
                _dask("worker", "--scheduler-file", str(sched_file), "--nthreads", "1", "--nworkers", "1",
                      "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{k}"),
                stdout=subprocess.DEVNULL, stderr=open(folder / f"worker{k}.log", "w"), env=env))
        with Client(address, timeout=START_TIMEOUT) as client:
            client.wait_for_workers(2, timeout=START_TIMEOUT)
        yield address
    finally:
        for p in reversed(procs):  # workers first, no graceful shutdown (their work is done)
            p.kill() if p is not procs[0] else p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def address_of(client) -> str:
    return client.scheduler.address
