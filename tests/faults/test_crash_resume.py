"""Crash safety: each job runs through the CLI in another process that SIGKILLs itself at a
named fault point (histstore.faults: after N units, inside a commit, in the middle of a zarr
write); the same command is then run again. Afterwards `verify` finds nothing wrong, nothing
registered is lost, and the results equal an uninterrupted run's (identical embedding arrays,
identical train folds for the same seed, the same pretrained encoder).

The killed processes are forked from this one (no seconds spent importing torch again); the
uninterrupted baselines and the re-runs use the library in this process.
"""
import numpy as np

from histstore.store import Store

from .conftest import (EMBED, EMBED_CLI, PRETRAIN, PRETRAIN_CLI, SPEC, TRAIN_CLI, assert_verify_clean, copy_store,
                       killed_at, q)


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
    killed_at(store, "train.mid_commit:2", *TRAIN_CLI)
    (run_id, status), = q(store, "SELECT run_id, status FROM runs WHERE kind = 'train'")
    assert status == "running" and q(store, "SELECT DISTINCT fold FROM predictions") == [(0,)]
    rep = resume(store, run_id, show_progress=False)
    assert rep.status == "finished"
    sql = ("SELECT fold, slide_id, subset, label, score FROM predictions WHERE run_id = ? ORDER BY 1, 2, 3")
    assert q(store, sql, run_id) == q(stages["results"], sql, stages["train_run"])
    att = "SELECT fold, tile_id, score FROM attention WHERE run_id = ? ORDER BY 1, 2"
    assert q(store, att, run_id) == q(stages["results"], att, stages["train_run"])
    assert_verify_clean(store)


def test_predict_killed_in_a_commit_resumes_to_the_same_predictions(tmp_path, stages):
    from histstore.predict import predict, resume_predict

    run = stages["train_run"]
    baseline = copy_store(stages["results"], tmp_path / "a")
    want = predict(baseline, run, "c", device="cpu", show_progress=False).run_id
    store = copy_store(stages["results"], tmp_path / "b")
    killed_at(store, "predict.mid_commit:1", "predict", "--run", run, "--cohort", "c", "--device", "cpu")
    (eval_id, status), = q(store, "SELECT run_id, status FROM runs WHERE kind = 'evaluate'")
    assert status == "running" and q(store, "SELECT count(*) FROM predictions WHERE run_id = ?", eval_id) == [(0,)]
    rep = resume_predict(store, eval_id, device="cpu", show_progress=False)
    assert rep.status == "finished" and rep.n_slides == 6
    for sql in ("SELECT slide_id, label, score, predicted FROM predictions WHERE run_id = ? ORDER BY 1",
                "SELECT tile_id, score FROM attention WHERE run_id = ? ORDER BY 1",
                "SELECT name, value FROM metrics WHERE run_id = ? ORDER BY 1"):
        assert q(store, sql, eval_id) == q(baseline, sql, want)
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
