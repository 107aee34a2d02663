"""Shared by the crash and side-by-side tests: one tiny synthetic cohort (6 slides of 3 cases,
512 px: 8-11 tiles each) and uninterrupted baseline stores built from it once per session."""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal

import pytest

from histstore.store import Store

SPEC = dict(target_mpp=1.0, tile_size=64)
EMBED = dict(allow_random=True, stain_norm="none", workers=0, precision="fp32", batch_size=4,
             show_progress=False)
EMBED_CLI = ["embed", "--encoder", "resnet18", "--cohort", "c", "--random-init", "--stain-norm", "none",
             "--workers", "0", "--precision", "fp32", "--batch-size", "4", "--device", "cpu"]
TRAIN = dict(cohort="c", task="tumor", folds=3, epochs=1, seed=7, device="cpu")
TRAIN_CLI = ["train", "--cohort", "c", "--task", "tumor", "--folds", "3", "--epochs", "1", "--seed", "7",
             "--device", "cpu"]
PRETRAIN = dict(cohort="c", method="adco", steps=4, batch_size=8, checkpoint_every=2, log_every=1,
                device="cpu", amp="off", lr=0.03, workers=0)
PRETRAIN_CLI = ["pretrain", "--cohort", "c", "--method", "adco", "--steps", "4", "--batch-size", "8",
                "--checkpoint-every", "2", "--log-every", "1", "--device", "cpu", "--amp", "off",
                "--workers", "0"]


def _child(store_root: str, args: list[str], fault: str | None) -> None:
    """In a forked process: `histstore --store ROOT ARGS` through the CLI, with a fault armed."""
    os.environ["HISTSTORE_PROGRESS"] = "0"
    from histstore import faults
    from histstore.cli.main import main

    faults.configure(fault)
    main(["--store", store_root, *map(str, args)])  # exits


def histstore_process(store: Store, *args, fault: str | None = None):
    """A started process running `histstore ARGS` on the store. Forked from this one (torch
    is already imported here: a fresh interpreter would spend seconds importing it), so the
    caller must hold no catalog connection while it starts."""
    ctx = mp.get_context("fork")
    proc = ctx.Process(target=_child, args=(str(store.root), list(args), fault))
    proc.start()
    return proc


def killed_at(store: Store, fault: str, *args) -> None:
    """Run `histstore ARGS` in a process that dies (SIGKILL) at fault point `fault`."""
    proc = histstore_process(store, *args, fault=fault)
    proc.join(300)
    assert proc.exitcode == -signal.SIGKILL, f"not killed at {fault}: exit code {proc.exitcode}"


def copy_store(template: Store, dest) -> Store:
    shutil.copytree(template.root, dest / "store")
    return Store(dest / "store")


def q(store: Store, sql: str, *params):
    with store.read() as conn:
        return conn.exec_driver_sql(sql, params).all()


def assert_verify_clean(store: Store) -> None:
    from histstore.verify import verify

    rep = verify(store, show_progress=False)
    assert rep.ok, [p.line() for p in rep.problems]


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    from histstore.wsi.synth import synth_cohort

    return synth_cohort(tmp_path_factory.mktemp("faults-slides"), n_slides=6, seed=3, size=(512, 512))


@pytest.fixture(scope="session")
def stages(tmp_path_factory, cohort):
    """Uninterrupted baselines: 'ingested' (slides + labels), 'embedded' (+ one embedding
    set), and on a copy of 'embedded' a train run and a pretraining run."""
    from histstore.embed import embed
    from histstore.ingest import ingest
    from histstore.labels import import_labels
    from histstore.pretrain import PretrainSettings, pretrain
    from histstore.train import TrainSettings, train
    from histstore.wsi.tiling import TilingSpec

    base = tmp_path_factory.mktemp("faults-stages")
    ingested, _ = Store.init(base / "ingested")
    ingest(ingested, cohort.manifest, TilingSpec(**SPEC), cohort="c", workers=1, show_progress=False)
    import_labels(ingested, cohort.labels, "tumor")
    embedded = Store(shutil.copytree(ingested.root, base / "embedded"))
    embed(embedded, "resnet18", "c", **EMBED)
    results = Store(shutil.copytree(embedded.root, base / "results"))
    run = train(results, TrainSettings(**TRAIN), show_progress=False).run_id
    pre = pretrain(results, PretrainSettings(**PRETRAIN), show_progress=False)
    return {"ingested": ingested, "embedded": embedded, "results": results, "train_run": run,
            "pretrain": pre}
