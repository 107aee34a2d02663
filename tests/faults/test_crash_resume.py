"""Crash safety: each job runs in a subprocess that SIGKILLs itself at a named fault point
(histstore.faults: after N units, inside a commit, in the middle of a zarr write); the same
command is then run again. Afterwards `verify` finds nothing wrong, nothing registered is
lost, and the results equal an uninterrupted run's (identical embedding arrays, identical
train folds for the same seed, the same pretrained encoder).

The uninterrupted baselines and the re-runs use the library in this process (same code as
the CLI, without paying a process start each time); only the runs that are killed are
subprocesses. One tiny synthetic cohort: 6 slides of 3 cases, 768 px.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from histstore.store import Store

SPEC = dict(target_mpp=1.0, tile_size=64)
EMBED = dict(allow_random=True, stain_norm="none", workers=0, precision="fp32", batch_size=16,
             show_progress=False)
EMBED_CLI = ["embed", "--encoder", "resnet18", "--cohort", "c", "--random-init", "--stain-norm", "none",
             "--workers", "0", "--precision", "fp32", "--batch-size", "16", "--device", "cpu"]
TRAIN = dict(cohort="c", task="tumor", folds=3, epochs=2, seed=7, device="cpu")
PRETRAIN = dict(cohort="c", method="adco", steps=4, batch_size=16, checkpoint_every=2, log_every=1,
                device="cpu", amp="off", lr=0.03, workers=0)
PRETRAIN_CLI = ["pretrain", "--cohort", "c", "--method", "adco", "--steps", "4", "--batch-size", "16",
                "--checkpoint-every", "2", "--log-every", "1", "--device", "cpu", "--amp", "off",
                "--workers", "0"]


def killed_at(store: Store, fault: str, *args: str) -> None:
    """Run `histstore ARGS` in a subprocess that dies (SIGKILL) at fault point `fault`."""
    env = {**os.environ, "HISTSTORE_FAULT": fault, "HISTSTORE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "histstore", "--store", str(store.root), *args],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == -signal.SIGKILL, f"not killed at {fault}: rc {r.returncode}\n{r.stderr[-2000:]}"


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


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from histstore.wsi.synth import synth_cohort

    return synth_cohort(tmp_path_factory.mktemp("faults-slides"), n_slides=6, seed=3, size=(768, 768))


@pytest.fixture(scope="module")
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


def _tiles(store):
    return q(store, "SELECT t.slide_id, t.idx, t.x, t.y FROM tiles t ORDER BY 1, 2")


def _arrays(store, set_ref=1):
    from histstore.embeddings import arrays
    from histstore.embeddings.sets import resolve_set

    with store.read() as conn:
        info = resolve_set(conn, set_ref)
        rows = conn.exec_driver_sql("SELECT slide_id, checksum FROM embedding_arrays WHERE embedding_set_id = ? "
                                    "ORDER BY 1", (info.embedding_set_id,)).all()
    return {sid: (checksum, arrays.read_array(info.directory(store), sid)) for sid, checksum in rows}


def test_ingest_killed_in_a_commit_resumes(tmp_path, cohort, stages):
    from histstore.ingest import ingest
    from histstore.wsi.tiling import TilingSpec

    store, _ = Store.init(tmp_path / "store")
    killed_at(store, "ingest.mid_commit:3", "ingest", str(cohort.manifest), "--cohort", "c", "--mpp", "1",
              "--tile-size", "64", "--workers", "1")
    assert q(store, "SELECT count(*) FROM slides") == [(2,)]  # two commits survived, the third never happened
    assert q(store, "SELECT count(*) FROM tiles WHERE slide_id NOT IN (SELECT slide_id FROM slides)") == [(0,)]
    assert_verify_clean(store)
    rep = ingest(store, cohort.manifest, TilingSpec(**SPEC), cohort="c", workers=1, show_progress=False)
    assert rep.count("skipped") == 2 and rep.count("ingested") == 4
    assert _tiles(store) == _tiles(stages["ingested"])
    assert q(store, "SELECT count(*) FROM cohort_slides") == [(6,)]
    assert_verify_clean(store)


def test_embed_killed_mid_array_and_mid_commit_gives_identical_arrays(tmp_path, stages):
    from histstore.embed import embed
    from histstore.verify import verify

    store = copy_store(stages["ingested"], tmp_path)
    killed_at(store, "array.mid_write:2", *EMBED_CLI)    # in the middle of a slide's zarr array
    n1 = len(q(store, "SELECT slide_id FROM embedding_arrays"))
    kinds = sorted(p.kind for p in verify(store, show_progress=False).problems)
    assert n1 <= 1 and kinds == ["dead-run", "partial-leftover"], kinds
    killed_at(store, "embed.mid_commit:2", *EMBED_CLI)   # array moved into place, row not committed
    assert len(q(store, "SELECT slide_id FROM embedding_arrays")) == n1 + 1
    kinds = sorted(p.kind for p in verify(store, show_progress=False).problems)
    assert kinds == ["dead-run", "orphan-array"], kinds  # the 2nd run cleared the 1st's leftovers
    rep = embed(store, "resnet18", "c", **EMBED)
    assert rep.n_skipped == n1 + 1 and rep.n_embedded == 5 - n1
    got, want = _arrays(store), _arrays(stages["embedded"])
    assert got.keys() == want.keys()
    for sid in want:
        assert got[sid][0] == want[sid][0] and np.array_equal(got[sid][1], want[sid][1]), sid
    assert q(store, "SELECT status, count(*) FROM runs GROUP BY 1 ORDER BY 1") == [("finished", 1), ("interrupted", 2)]
    assert_verify_clean(store)


def test_train_killed_in_a_fold_commit_resumes_to_the_same_folds(tmp_path, stages):
    from histstore.train import resume

    store = copy_store(stages["embedded"], tmp_path)
    killed_at(store, "train.mid_commit:2", "train", "--cohort", "c", "--task", "tumor", "--folds", "3",
              "--epochs", "2", "--seed", "7", "--device", "cpu")
    (run_id, status), = q(store, "SELECT run_id, status FROM runs WHERE kind = 'train'")
    assert status == "running" and q(store, "SELECT DISTINCT fold FROM predictions") == [(0,)]
    rep = resume(store, run_id, show_progress=False)
    assert rep.status == "finished"
    sql = ("SELECT fold, slide_id, subset, label, score FROM predictions WHERE run_id = ? ORDER BY 1, 2, 3")
    assert q(store, sql, run_id) == q(stages["results"], sql, stages["train_run"])
    att = "SELECT fold, tile_id, score FROM attention WHERE run_id = ? ORDER BY 1, 2"
    assert q(store, att, run_id) == q(stages["results"], att, stages["train_run"])
    assert_verify_clean(store)


def test_pretrain_killed_between_checkpoints_resumes_to_the_same_encoder(tmp_path, stages):
    from histstore.pretrain import PretrainSettings, pretrain

    store = copy_store(stages["embedded"], tmp_path)
    killed_at(store, "pretrain.after_log:3", *PRETRAIN_CLI)  # step 3 logged, last checkpoint at step 2
    rep = pretrain(store, PretrainSettings(**PRETRAIN), resume=True, show_progress=False)
    assert rep.resumed_from == 2 and rep.steps == 4
    assert _backbone(store, rep.run_id) == _backbone(stages["results"], stages["pretrain"].run_id)
    loss = "SELECT step, value FROM metrics WHERE run_id = ? AND name = 'loss' ORDER BY step"
    assert q(store, loss, rep.run_id) == q(stages["results"], loss, stages["pretrain"].run_id)  # one row per step
    assert_verify_clean(store)


def _backbone(store, run_id):
    """The exported encoder's weights (the file also names its source checkpoint's sha256,
    which differs between runs: their settings name the run)."""
    import torch

    (path,), = q(store, "SELECT checkpoint_path FROM encoders WHERE pretrain_run_id = ?", run_id)
    state = torch.load(store.resolve(path), weights_only=True)["state_dict"]
    return {k: v.numpy().tobytes() for k, v in state.items()}


def test_features_import_killed_in_a_commit_resumes(tmp_path, stages):
    from histstore.interop import export_features, import_features

    export_features(stages["embedded"], 1, tmp_path / "h5", show_progress=False)
    store = copy_store(stages["ingested"], tmp_path)
    killed_at(store, "import.mid_commit:3", "features", "import", str(tmp_path / "h5"), "--name", "imp",
              "--cohort", "imp")
    assert len(q(store, "SELECT slide_id FROM embedding_arrays")) == 2
    rep = import_features(store, tmp_path / "h5", name="imp", cohort="imp", show_progress=False)
    assert rep.ok and rep.count("skipped") == 2 and rep.count("imported") == 4
    got, want = _arrays(store, "imp"), _arrays(stages["embedded"])
    for sid in want:
        assert np.array_equal(got[sid][1], want[sid][1]), sid
    assert_verify_clean(store)
