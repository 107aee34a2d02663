"""`histstore pretrain`: registered encoders that `embed` accepts, metrics in the catalog,
resume from the saved step, refusals."""
import pytest

from histstore.embed import embed
from histstore.errors import HiststoreError, InvalidInput
from histstore.ingest import ingest
from histstore.pretrain import PretrainSettings, pretrain
from histstore.wsi.tiling import TilingSpec


@pytest.fixture
def small(store, synth6, tmp_path):
    m = tmp_path / "two.csv"
    m.write_text("path,slide_id\n" + "".join(f"{s.path},{s.slide_id}\n" for s in synth6.slides[:2]))
    ingest(store, m, TilingSpec(target_mpp=1.0, tile_size=64), cohort="syn", workers=1, show_progress=False)
    return store


def _q(store, sql, *p):
    with store.read() as conn:
        return conn.exec_driver_sql(sql, p).all()


@pytest.mark.parametrize("method", ["adco", "simclr"])
def test_short_run_registers_an_encoder_embed_accepts(small, method):
    s = PretrainSettings(cohort="syn", method=method, steps=4, batch_size=16, log_every=2, device="cpu",
                         amp="off", lr=0.03)
    rep = pretrain(small, s, show_progress=False)
    assert rep.steps == 4 and rep.encoder == f"{method}-resnet18-run{rep.run_id}"
    (method_db, arch, run_id, path), = _q(small, "SELECT method, architecture, pretrain_run_id, checkpoint_path FROM encoders")
    assert (method_db, arch, run_id) == (method, "resnet18", rep.run_id) and small.resolve(path).is_file()
    status, settings = _q(small, "SELECT status, settings FROM runs WHERE run_id = ?", rep.run_id)[0]
    assert status == "finished" and settings["batch_size"] == 16
    names = {r[0] for r in _q(small, "SELECT DISTINCT name FROM metrics WHERE run_id = ?", rep.run_id)}
    assert {"loss", "contrastive_acc", "lr", "img_per_s"} <= names
    if method == "adco":
        assert {"bank_loss", "pos_sim"} <= names
        # the bank is what was asked for: by default a fifth of the tiles, not clipped
        assert settings["bank"]["used"] == settings["bank"]["requested"] == settings["n_tiles"] // 5
        assert settings["model_config"]["bank_size"] == settings["n_tiles"] // 5
        assert settings["model_config"]["bn_splits"] == 8 and settings["world_size"] == 1
    e = embed(small, rep.encoder, "syn", stain_norm="none", workers=0, batch_size=32, show_progress=False)
    assert e.n_embedded == 2


def test_resume_continues_from_saved_step(small, monkeypatch):
    import histstore.encoders.trainer as trainer

    s = PretrainSettings(cohort="syn", steps=6, batch_size=16, log_every=1, device="cpu", amp="off",
                         checkpoint_every=2)
    calls = {"n": 0}
    real = trainer.save_checkpoint

    def counting_save(*a, **kw):
        calls["n"] += 1
        real(*a, **kw)
        if kw.get("step") == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", counting_save)
    with pytest.raises(KeyboardInterrupt):
        pretrain(small, s, show_progress=False)
    (run_id, status), = _q(small, "SELECT run_id, status FROM runs")
    assert status == "interrupted"
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    rep = pretrain(small, s, resume=True, show_progress=False)
    assert rep.run_id == run_id and rep.resumed_from == 4 and rep.steps == 6
    steps = [r[0] for r in _q(small, "SELECT step FROM metrics WHERE run_id = ? AND name = 'loss' ORDER BY step", run_id)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert _q(small, "SELECT status FROM runs") == [("finished",)]


def test_refusals(small):
    with pytest.raises(InvalidInput, match="exactly one of --steps or --epochs"):
        pretrain(small, PretrainSettings(cohort="syn"), show_progress=False)
    with pytest.raises(HiststoreError, match="no cohort"):
        pretrain(small, PretrainSettings(cohort="ghost", steps=1), show_progress=False)
    with pytest.raises(HiststoreError, match="nothing|no unfinished"):
        pretrain(small, PretrainSettings(cohort="syn", steps=1), resume=True, show_progress=False)
    with pytest.raises(InvalidInput, match="fewer than one batch"):
        pretrain(small, PretrainSettings(cohort="syn", steps=1, batch_size=100000), show_progress=False)
    assert _q(small, "SELECT count(*) FROM runs") == [(0,)]


def test_bank_limited_by_memory_is_said_and_recorded(monkeypatch):
    import histstore.pretrain as pretrain_mod

    s = PretrainSettings(cohort="syn", steps=1, batch_size=250, device="cpu")
    monkeypatch.setattr(pretrain_mod, "_free_memory", lambda device: 100 * 2**20)  # 100 MiB free
    model, cfg, bank, notes = pretrain_mod._build_model(s, n_tiles=100_000, device="cpu")
    assert bank["requested"] == 20000 and bank["limited_by_memory"] and cfg["bank_size"] == bank["used"] < 20000
    assert model.bank.size == bank["used"]
    assert len(notes) == 1 and "reduced from 20000 to" in notes[0] and "--bank-size" in notes[0]
    monkeypatch.setattr(pretrain_mod, "_free_memory", lambda device: None)  # unknown: as asked
    _, cfg, bank, notes = pretrain_mod._build_model(s, n_tiles=100_000, device="cpu")
    assert cfg["bank_size"] == 20000 and notes == [] and not bank["limited_by_memory"]


@pytest.mark.parametrize("kw,match", [(dict(batch_size=3), "--batch-size >= 4"),
                                      (dict(batch_size=16, bn_splits=1), "bn-splits 1"),
                                      (dict(batch_size=10, nproc_per_node=4), "split evenly over 4"),
                                      (dict(batch_size=16, bn_splits=3, nproc_per_node=2), "multiple of the 2")])
def test_shuffle_bn_settings_refused(kw, match):
    with pytest.raises(InvalidInput, match=match):
        PretrainSettings(cohort="syn", steps=1, **kw).validate()


def test_default_bn_groups():
    assert PretrainSettings(cohort="c", steps=1, batch_size=64).shuffle_bn_groups() == 8
    assert PretrainSettings(cohort="c", steps=1, batch_size=250).shuffle_bn_groups(2) == 8
    assert PretrainSettings(cohort="c", steps=1, batch_size=8).shuffle_bn_groups() == 4
    assert PretrainSettings(cohort="c", steps=1, batch_size=64).shuffle_bn_groups(3) == 6
    assert PretrainSettings(cohort="c", steps=1, batch_size=256).shuffle_bn_groups(16) == 16


def test_two_worker_processes_train_and_register_one_encoder(small):
    """--nproc-per-node 2: two gloo workers through torch.distributed's elastic launcher; rank 0
    alone writes the run, its metrics (means over both ranks) and the encoder."""
    s = PretrainSettings(cohort="syn", method="adco", steps=2, batch_size=8, log_every=1, device="cpu",
                         amp="off", nproc_per_node=2)
    rep = pretrain(small, s, show_progress=False)
    assert rep.world_size == 2 and rep.steps == 2
    (status, settings), = _q(small, "SELECT status, settings FROM runs WHERE run_id = ?", rep.run_id)
    assert status == "finished" and settings["world_size"] == 2 and settings["per_rank_batch_size"] == 4
    assert settings["model_config"]["bn_splits"] == 4
    steps = [r[0] for r in _q(small, "SELECT step FROM metrics WHERE run_id = ? AND name = 'loss' ORDER BY step",
                              rep.run_id)]
    assert steps == [1, 2]
    assert _q(small, "SELECT count(*) FROM encoders WHERE pretrain_run_id = ?", rep.run_id) == [(1,)]


def test_a_workers_error_comes_back_as_its_histstore_error():
    from histstore.encoders.distributed import _worker_error
    from histstore.errors import EmptyCohort

    err = _worker_error({"rank00001.json": {"type": "RuntimeError", "module": "builtins", "message": "closed",
                                            "hint": None},
                         "rank00000.json": {"type": "EmptyCohort", "module": "histstore.errors",
                                            "message": "cohort 'x' has no ingested slides", "hint": "ingest"}}, None)
    assert isinstance(err, EmptyCohort) and str(err) == "cohort 'x' has no ingested slides (ingest)"
    assert isinstance(_worker_error({"rank00000.json": {"type": "KeyboardInterrupt", "module": "builtins",
                                                        "message": "", "hint": None}}, None), KeyboardInterrupt)
    other = _worker_error({"rank00000.json": {"type": "OSError", "module": "builtins", "message": "disk full",
                                              "hint": None}}, None)
    assert type(other).__name__ == "HiststoreError" and "OSError: disk full" in str(other)
