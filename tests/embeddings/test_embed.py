"""`histstore embed`: row alignment, resume, reuse, refusals, and reading bags back."""
import numpy as np
import pytest
import torch

from histstore.embed import embed
from histstore.embeddings import arrays
from histstore.embeddings.bags import load_bags
from histstore.embeddings.sets import resolve_set
from histstore.errors import EmptyCohort, InvalidInput, MissingStep, NotFound

OPTS = dict(allow_random=True, batch_size=16, workers=0, precision="fp32", show_progress=False)


def _count(store, table):
    with store.read() as conn:
        return conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()


def test_rows_align_with_tile_idx(ingested):
    rep = embed(ingested, "resnet18", "syn", stain_norm="macenko", **OPTS)
    assert rep.n_embedded == 3 and rep.n_tiles > 0
    with ingested.read() as conn:
        info = resolve_set(conn, rep.embedding_set)
        slide = conn.exec_driver_sql("SELECT slide_id FROM cohort_slides ORDER BY 1 LIMIT 1").scalar()
        bag, = load_bags(ingested, conn, info, [slide])
        tiles = conn.exec_driver_sql(
            "SELECT t.tile_id, t.x, t.y, s.path, g.settings FROM tiles t JOIN slides s USING (slide_id) "
            "JOIN tilings g USING (tiling_id) WHERE t.slide_id = ? ORDER BY t.idx", (slide,)).all()
    assert bag.features.shape == (len(tiles), 512)
    assert np.array_equal(bag.tile_ids, [t[0] for t in tiles])
    # re-embed single tiles by hand: row i must be tile idx i (normalised with the slide's fit)
    import json

    from histstore.embeddings.dataset import load_slide_tiles
    from histstore.embeddings.slide_stain import fit_slide_stain
    from histstore.embeddings.stain import apply_stain_fit
    from histstore.embeddings.stain_settings import StainSettings
    from histstore.encoders.backbones import build_backbone, preprocess
    from histstore.wsi.process import read_tile
    from histstore.wsi.reader import open_slide

    torch.manual_seed(0)
    model, _ = build_backbone("resnet18", None, allow_random=True)
    spec = json.loads(tiles[0][4])["read"] if isinstance(tiles[0][4], str) else tiles[0][4]["read"]
    with ingested.read() as conn:
        fit = fit_slide_stain(load_slide_tiles(conn, [slide], info.tiling_key)[0], StainSettings()).fit
    assert fit.ok
    with ingested.read() as conn:  # the fit recorded with the array is the one recomputed here
        recorded = conn.exec_driver_sql(
            "SELECT slide_id, stain_matrix, max_concentrations, tiles_fallback FROM slide_stain "
            "WHERE embedding_set_id = ? ORDER BY 1", (info.embedding_set_id,)).all()
    assert [r[0] for r in recorded] == sorted(conn_slides(ingested)) and all(r[3] == 0 for r in recorded)
    mine = next(r for r in recorded if r[0] == slide)
    assert np.array_equal(mine[1], fit.stain_matrix) and np.array_equal(mine[2], fit.max_c)
    rng = np.random.default_rng(0)
    with open_slide(tiles[0][3]) as reader, torch.inference_mode():
        for i in rng.choice(len(tiles), 4, replace=False):
            px = read_tile(reader, tiles[i][1], tiles[i][2], spec)
            x = preprocess(apply_stain_fit(torch.from_numpy(px[None]), fit.stain_matrix, fit.max_c)[0])
            ref = model(x)[0].numpy()
            assert np.allclose(bag.features[i], ref, atol=2e-2, rtol=1e-2), i
            # and it is not just close to every row
            other = (i + 7) % len(tiles)
            assert not np.allclose(bag.features[other], ref, atol=2e-2, rtol=1e-2)


def conn_slides(store):
    with store.read() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT slide_id FROM embedding_arrays").all()]


def test_resume_after_kill_mid_slide(ingested, monkeypatch):
    calls = {"n": 0}
    real_write = arrays.ArrayWriter.write

    def dying_write(self, block):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return real_write(self, block)

    monkeypatch.setattr(arrays.ArrayWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        embed(ingested, "resnet18", "syn", stain_norm="none", **OPTS)
    done = _count(ingested, "embedding_arrays")
    assert 0 < done < 3  # some slides finished, the one in progress did not
    with ingested.read() as conn:
        info = resolve_set(conn, 1)
    assert not any((info.directory(ingested) / arrays.PARTIAL_DIR).iterdir())
    monkeypatch.setattr(arrays.ArrayWriter, "write", real_write)
    rep = embed(ingested, "resnet18", "syn", stain_norm="none", **OPTS)
    assert not rep.created and rep.n_skipped == done and rep.n_embedded == 3 - done
    assert _count(ingested, "embedding_arrays") == 3
    with ingested.read() as conn:
        slides = [r[0] for r in conn.exec_driver_sql("SELECT slide_id FROM cohort_slides").all()]
        bags = load_bags(ingested, conn, resolve_set(conn, 1), slides)
        status = conn.exec_driver_sql("SELECT status FROM embedding_sets").scalar()
    assert status == "complete"
    for b in bags:
        assert np.isfinite(b.features).all() and np.abs(b.features).sum(1).min() > 0


def test_reuse_and_new_set_for_other_settings(ingested):
    a = embed(ingested, "resnet18", "syn", stain_norm="none", **OPTS)
    b = embed(ingested, "resnet18", "syn", stain_norm="none", **OPTS)
    assert a.created and not b.created and b.n_embedded == 0 and a.embedding_set == b.embedding_set
    c = embed(ingested, "resnet18", "syn", stain_norm="macenko", **OPTS)
    assert c.created and c.embedding_set != a.embedding_set
    with pytest.raises(InvalidInput, match="already have embedding set"):
        embed(ingested, "resnet18", "syn", stain_norm="none", name="other", **OPTS)


def _catalog_rows(store):
    return {t: _count(store, t) for t in ("encoders", "embedding_sets", "embedding_arrays")}


def test_bad_inputs_register_nothing(ingested, tmp_path):
    before = _catalog_rows(ingested)
    with pytest.raises(InvalidInput, match="no encoder 'nope'"):
        embed(ingested, "nope", "syn", **OPTS)
    with pytest.raises(InvalidInput, match="needs weights"):
        embed(ingested, "resnet18", "syn", **{**OPTS, "allow_random": False})
    wrong = tmp_path / "r18.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), wrong)
    with pytest.raises(InvalidInput, match="do not fit resnet50-layer3"):
        embed(ingested, "resnet50-layer3", "syn", weights=wrong, **OPTS)
    from histstore.errors import CohortNotFound

    with pytest.raises(CohortNotFound):
        embed(ingested, "resnet18", "ghost", **OPTS)
    with ingested.write() as conn:  # a cohort whose slide has no tiles
        conn.exec_driver_sql("INSERT INTO cases VALUES ('c9', NULL, now())")
        conn.exec_driver_sql("INSERT INTO slides (slide_id, case_id, status) VALUES ('bare', 'c9', 'registered')")
        conn.exec_driver_sql("INSERT INTO cohorts (name) VALUES ('bare')")
        conn.exec_driver_sql("INSERT INTO cohort_slides (cohort, slide_id) VALUES ('bare', 'bare')")
    with pytest.raises(EmptyCohort, match="no ingested slides"):
        embed(ingested, "resnet18", "bare", **OPTS)
    assert _catalog_rows(ingested) == before


def test_imagenet_style_weights_file(ingested, tmp_path):
    import torchvision

    f = tmp_path / "resnet18_weights.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), f)
    rep = embed(ingested, "resnet18", "syn", weights=f, stain_norm="none", **{**OPTS, "allow_random": False})
    with ingested.read() as conn:
        method, sha = conn.exec_driver_sql("SELECT method, checkpoint_sha256 FROM encoders").one()
    assert method == "pretrained" and len(sha) == 64 and rep.n_embedded == 3


def test_missing_slides_named_when_reading_bags(ingested):
    rep = embed(ingested, "resnet18", "syn", stain_norm="none", **OPTS)
    with ingested.read() as conn:
        info = resolve_set(conn, rep.embedding_set)
        with pytest.raises(MissingStep, match="ghost-slide"):
            load_bags(ingested, conn, info, ["ghost-slide"])


def test_embed_cli(ingested, cli):
    r = cli("embed", "--encoder", "resnet18", "--cohort", "syn", "--random-init", "--workers", "0",
            "--stain-norm", "none", "--batch-size", "32")
    assert r.exit_code == 0, r.output
    assert "tiles/s" in r.output
    r = cli("embeddings", "list", "--format", "csv")
    assert "resnet18-random-seed0" in r.output and "complete" in r.output
    r = cli("embed", "--encoder", "nope", "--cohort", "syn")
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1


def test_weights_changed_mid_run_discard_the_slide(ingested, monkeypatch):
    """Frozen means frozen: a slide embedded after the weights changed is not registered."""
    from histstore.embeddings import slide_embed
    from histstore.errors import HiststoreError

    real_loop = slide_embed.embed_loop

    def tampering_loop(slides, model, *args):  # called as embed_loop(..., on_slide, on_batch)
        *rest, on_slide, on_batch = args
        calls = {"n": 0}

        def on_slide_after_tamper(writer, slide_no):
            calls["n"] += 1
            if calls["n"] == 2:  # the second slide finishes with changed weights
                with torch.no_grad():
                    next(model.parameters()).add_(1.0)
            on_slide(writer, slide_no)

        return real_loop(slides, model, *rest, on_slide_after_tamper, on_batch)

    monkeypatch.setattr(slide_embed, "embed_loop", tampering_loop)
    with pytest.raises(HiststoreError, match="weights changed during embedding"):
        embed(ingested, "resnet18", "syn", stain_norm="none", **OPTS)
    assert _count(ingested, "embedding_arrays") == 1
    with ingested.read() as conn:
        info = resolve_set(conn, 1)
        run = conn.exec_driver_sql("SELECT status FROM runs WHERE kind = 'embed'").scalar()
    assert run == "failed"
    assert not any((info.directory(ingested) / arrays.PARTIAL_DIR).iterdir())
