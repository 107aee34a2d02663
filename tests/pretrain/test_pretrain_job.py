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
        bank = _q(small, "SELECT json_extract(settings, '$.model_config.bank_size') FROM runs WHERE run_id = ?", rep.run_id)
        assert int(bank[0][0]) >= 1
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
