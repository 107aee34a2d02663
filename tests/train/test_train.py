"""`histstore train` on synthetic slides with planted tumour regions."""
import json

import numpy as np
import pytest

from histstore.errors import HiststoreError
from histstore.train import TrainSettings, resume, train


def _q(store, sql, *params):
    with store.read() as conn:
        return conn.exec_driver_sql(sql, params).all()


def _settings(**kw):
    base = dict(cohort="syn20", task="tumor", folds=5, seed=0, epochs=40, patience=10, device="cpu")
    return TrainSettings(**{**base, **kw})


def test_gated_attention_finds_planted_tumour(embedded, synth20):
    from histstore.wsi.synth import tumor_fraction_of_tiles

    rep = train(embedded, _settings(lr=5e-4), show_progress=False)
    assert rep.status == "finished"
    assert rep.summary["auc"][0] >= 0.9, rep.summary
    # the most attended tiles of each tested tumour slide lie mostly in its planted regions
    truth = synth20.truth()["slides"]
    rows = _q(embedded, """
        SELECT slide_id, x, y, size_l0 FROM tile_attention
        WHERE run_id = ? AND rank_in_slide <= 5 AND slide_id LIKE '%-01Z-%'""", rep.run_id)
    by_slide = {}
    for sid, x, y, s in rows:
        by_slide.setdefault(sid, []).append((x, y, s))
    assert len(by_slide) == 10  # every tumour slide is tested exactly once
    inside, base = [], []
    for sid, tiles in by_slide.items():
        x, y, s = map(np.array, zip(*tiles))
        inside.append(np.mean(tumor_fraction_of_tiles(truth[sid], x, y, s[0]) > 0.5))
        all_tiles = _q(embedded, "SELECT x, y, size_l0 FROM tiles WHERE slide_id = ?", sid)
        ax, ay, asz = map(np.array, zip(*all_tiles))
        base.append(np.mean(tumor_fraction_of_tiles(truth[sid], ax, ay, asz[0]) > 0.5))
    assert np.mean(inside) >= 0.7, (inside, base)
    assert np.mean(inside) > np.mean(base) + 0.2


def test_splits_grouped_by_case(embedded):
    rep = train(embedded, _settings(epochs=2), show_progress=False)
    # no case in two subsets of one fold
    assert _q(embedded, "SELECT count(*) FROM (SELECT fold, case_id FROM splits WHERE run_id = ? "
                        "GROUP BY 1, 2 HAVING count(DISTINCT subset) > 1)", rep.run_id) == [(0,)]
    # every case in exactly one test fold
    counts = _q(embedded, "SELECT case_id, count(DISTINCT fold) FROM splits WHERE run_id = ? AND subset = 'test' "
                          "GROUP BY 1", rep.run_id)
    assert len(counts) == 10 and all(n == 1 for _, n in counts)
    # each fold has train, val and test parts
    assert _q(embedded, "SELECT count(DISTINCT fold || subset) FROM splits WHERE run_id = ?", rep.run_id) == [(15,)]
    # a test prediction for every slide, attention for every tile of the test slides
    assert _q(embedded, "SELECT count(*) FROM predictions WHERE run_id = ? AND subset = 'test'", rep.run_id) == [(20,)]
    assert _q(embedded, "SELECT count(*) FROM attention WHERE run_id = ?", rep.run_id) == \
        _q(embedded, "SELECT count(*) FROM tiles")
    # patient-level metrics beside the slide-level ones, every fold; a case's tumour and normal
    # slides are two case units, so here there are as many units as slides
    units = _q(embedded, "SELECT fold, max(value) FILTER (WHERE name = 'case_n'), max(value) FILTER (WHERE name = 'n'), "
                         "count(*) FILTER (WHERE name LIKE 'case_%') FROM metrics WHERE run_id = ? AND subset = 'test' "
                         "GROUP BY fold ORDER BY fold", rep.run_id)
    assert len(units) == 5 and all(cn == n and k == 5 for _, cn, n, k in units)


def test_same_seed_same_results(embedded):
    a = train(embedded, _settings(epochs=3), show_progress=False)
    b = train(embedded, _settings(epochs=3), show_progress=False)
    q = "SELECT fold, subset, name, step, value FROM metrics WHERE run_id = ? AND name <> 'seconds_per_epoch' ORDER BY ALL"
    assert _q(embedded, q, a.run_id) == _q(embedded, q, b.run_id)
    q = "SELECT fold, slide_id, subset FROM splits WHERE run_id = ? ORDER BY ALL"
    assert _q(embedded, q, a.run_id) == _q(embedded, q, b.run_id)
    c = train(embedded, _settings(epochs=3, seed=1), show_progress=False)
    assert _q(embedded, q, a.run_id) != _q(embedded, q, c.run_id)


@pytest.mark.parametrize("model", ["mean", "max", "attention", "dsmil", "mil-rnn"])
def test_baselines_train_and_evaluate(embedded, model):
    rep = train(embedded, _settings(model=model, epochs=3, folds=2), show_progress=False)
    assert rep.status == "finished" and "auc" in rep.summary
    # readable with plain SQL: mean test AUC per model for the cohort
    rows = _q(embedded, "SELECT model, avg(value) FROM metrics JOIN runs USING (run_id) "
                        "WHERE cohort = 'syn20' AND metrics.name = 'auc' AND subset = 'test' GROUP BY model")
    assert rows and rows[0][0] == model and 0 <= rows[0][1] <= 1


@pytest.mark.parametrize("kw, words", [
    (dict(cohort="ghost"), "no cohort 'ghost'"),
    (dict(task="nope"), "unknown task 'nope'"),
    (dict(task="de:STK11", threshold=50.0), "single class"),
    (dict(folds=11), "fewer than --folds 11"),
    (dict(embeddings="ghost-set"), "no embedding set"),
    (dict(model="transformer"), "unknown model"),
    (dict(val_fraction=1.0), "val-fraction"),
    (dict(task="de", genes=("TP53",), gene_slides="some"), "gene-slides"),
    (dict(decision_threshold="0.3"), "decision_threshold"),
    (dict(model="mean", attn_dim=8), "no setting attn_dim"),
])
def test_bad_input_writes_nothing(embedded, kw, words):
    with pytest.raises(HiststoreError, match=words):
        train(embedded, _settings(**kw), show_progress=False)
    assert _q(embedded, "SELECT count(*) FROM runs WHERE kind = 'train'") == [(0,)]


def test_no_embeddings_says_what_to_run(embedded):
    with embedded.write() as conn:
        conn.exec_driver_sql("INSERT INTO cohorts (name) VALUES ('bare')")
        conn.exec_driver_sql("INSERT INTO cohort_slides (cohort, slide_id) SELECT 'bare', slide_id FROM slides")
        conn.exec_driver_sql("DELETE FROM embedding_arrays")
    with pytest.raises(HiststoreError, match="histstore embed"):
        train(embedded, _settings(cohort="bare"), show_progress=False)


def test_interrupted_run_resumes(embedded, monkeypatch):
    import histstore.train as mod

    real = mod._write_fold
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "_write_fold", dying)
    with pytest.raises(KeyboardInterrupt):
        train(embedded, _settings(epochs=2), show_progress=False)
    (run_id, status), = _q(embedded, "SELECT run_id, status FROM runs WHERE kind = 'train'")
    assert status == "interrupted"
    assert _q(embedded, "SELECT count(DISTINCT fold) FROM predictions") == [(2,)]
    assert _q(embedded, "SELECT count(*) FROM run_summary WHERE run_id = ? AND metric = 'auc' "
                        "AND subset = 'test'", run_id) == [(1,)]
    monkeypatch.setattr(mod, "_write_fold", real)
    rep = resume(embedded, run_id, show_progress=False)
    assert rep.status == "finished" and rep.run_id == run_id
    assert _q(embedded, "SELECT count(DISTINCT fold) FROM predictions WHERE run_id = ?", run_id) == [(5,)]
    with pytest.raises(HiststoreError, match="already finished"):
        resume(embedded, run_id, show_progress=False)


def test_gene_runs_and_fold_change_analysis(embedded, cli):
    rep = train(embedded, _settings(task="de", genes=("TP53", "MYC", "EGFR", "KRAS", "STK11"), epochs=5,
                                    folds=3), show_progress=False)
    assert rep.status == "finished"
    children = _q(embedded, "SELECT task, status FROM runs WHERE parent_run_id = ? ORDER BY 1", rep.run_id)
    assert [c[0] for c in children] == ["de:EGFR", "de:KRAS", "de:MYC", "de:STK11", "de:TP53"]
    names = dict(_q(embedded, "SELECT name, value FROM metrics WHERE run_id = ? AND fold IS NULL", rep.run_id))
    assert names["n_genes"] == 5
    from click.testing import CliRunner

    from histstore.cli.main import main

    r = CliRunner().invoke(main, ["--store", str(embedded.root), "runs", "show", str(rep.run_id)])
    assert r.exit_code == 0, r.output
    assert "per gene" in r.output and "de:TP53" in r.output and "mean_abs_log2fc" in r.output


def test_regression_task(embedded):
    rep = train(embedded, _settings(task="fc:TP53", epochs=5, folds=3), show_progress=False)
    assert rep.status == "finished" and "pearson" in rep.summary and "mse" in rep.summary
    rows = _q(embedded, "SELECT target, score FROM predictions WHERE run_id = ? AND subset = 'test'", rep.run_id)
    # fold changes belong to the tumour slides: 10 of the 20
    assert len(rows) == 10 and all(np.isfinite(t) and np.isfinite(s) for t, s in rows)


def test_cli_train_runs_compare(embedded):
    from click.testing import CliRunner

    from histstore.cli.main import main

    def run(*args):
        return CliRunner().invoke(main, ["--store", str(embedded.root), *args])

    first = _q(embedded, "SELECT max(run_id) FROM runs")[0][0] + 1  # the template has an embed run
    r = run("train", "--cohort", "syn20", "--task", "tumor", "--epochs", "3", "--folds", "2")
    assert r.exit_code == 0, r.output
    assert "cohort syn20, task tumor: 20 slides of 10 cases in 2 folds grouped by case" in r.output
    assert f"run {first} (tumor, gated-attention, 20 slides of 10 cases): auc" in r.output
    r = run("train", "--cohort", "syn20", "--task", "tumor", "--epochs", "3", "--folds", "2", "--model", "mean")
    assert r.exit_code == 0
    r = run("compare", str(first), str(first + 1))
    assert r.exit_code == 0 and f"{first}:gated-attention (tumor)" in r.output
    assert f"{first + 1}:mean (tumor)" in r.output and "±" in r.output
    r = run("runs", "list", "--kind", "train", "--format", "json")
    listed = json.loads(r.output)
    assert [x["model"] for x in listed] == ["gated-attention", "mean"]
    assert [x["status"] for x in listed] == ["finished", "finished"]
    assert [x["progress"] for x in listed] == ["2/2 fold", "2/2 fold"]
    r = run("train", "--cohort", "syn20", "--task", "nope")
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1


def test_gene_tasks_use_the_tumour_slides(embedded):
    """A case's fold change is measured on its tumour sample: by default only the case's
    tumour slides carry it; --gene-slides all gives it to every slide (noted)."""
    def run_slides(run_id):
        return {r[0] for r in _q(embedded, "SELECT DISTINCT slide_id FROM splits WHERE run_id = ?", run_id)}

    tumour = {r[0] for r in _q(embedded, "SELECT slide_id FROM slide_labels WHERE task = 'tumor' AND value = 'tumor'")}
    assert len(tumour) == 10
    rep = train(embedded, _settings(task="de:EGFR", epochs=2, folds=3), show_progress=False)
    assert rep.n_bags == 10 and run_slides(rep.run_id) == tumour
    assert any("10 slides that are not labelled tumour" in n for n in rep.notes)
    (settings,), = _q(embedded, "SELECT settings FROM runs WHERE run_id = ?", rep.run_id)
    assert settings["gene_slides"] == "tumour"
    assert _q(embedded, "SELECT value FROM metrics WHERE run_id = ? AND name = 'n_not_tumour_left_out'",
              rep.run_id) == [(10.0,)]
    rep = train(embedded, _settings(task="de:EGFR", epochs=2, folds=3, gene_slides="all"), show_progress=False)
    assert rep.n_bags == 20 and any("labelled normal" in n for n in rep.notes)
    # a cohort of tumour slides: nothing left out, nothing to say
    from histstore.cohorts import create_cohort

    create_cohort(embedded, "tum", from_cohort="syn20",
                  where="slide_id IN (SELECT slide_id FROM slide_labels WHERE task = 'tumor' AND value = 'tumor')")
    rep = train(embedded, _settings(cohort="tum", task="de:EGFR", epochs=2, folds=3), show_progress=False)
    assert not rep.notes and rep.n_bags == 10
    # label tasks are not filtered
    assert train(embedded, _settings(epochs=1, folds=2), show_progress=False).n_bags == 20
    # without tumour labels every slide is used, and the run says why
    with embedded.write() as conn:
        conn.exec_driver_sql("DELETE FROM labels WHERE task = 'tumor'")
    rep = train(embedded, _settings(task="de:EGFR", epochs=2, folds=3), show_progress=False)
    assert rep.n_bags == 20 and any("no tumor labels" in n for n in rep.notes)
    with pytest.raises(HiststoreError, match="gene-slides"):
        train(embedded, _settings(task="de:EGFR", gene_slides="normal"), show_progress=False)


def test_fold_checkpoints_carry_standardisation_and_threshold(embedded):
    """What prediction needs besides the weights: the training folds' feature statistics
    (key feature_standardization) and the decision threshold, chosen on validation slides."""
    import torch
    from click.testing import CliRunner

    from histstore.cli.main import main
    from histstore.embeddings.bags import load_bags
    from histstore.embeddings.sets import resolve_set

    def run(*args):
        return CliRunner().invoke(main, ["--store", str(embedded.root), "train", "--cohort", "syn20", "--task",
                                         "tumor", "--epochs", "2", "--folds", "2", "--hidden-dim", "16",
                                         "--attn-dim", "8", *args])

    def last_train_run() -> int:
        return _q(embedded, "SELECT max(run_id) FROM runs WHERE kind = 'train'")[0][0]

    r = run("--decision-threshold", "val", "--min-epochs", "2")
    assert r.exit_code == 0, r.output
    rid = last_train_run()
    (settings,), = _q(embedded, "SELECT settings FROM runs WHERE run_id = ?", rid)
    assert settings["standardize"] and settings["decision_threshold"] == "val" and settings["hidden_dim"] == 16
    assert settings["train_config"]["model_cfg"] == {"hidden_dim": 16, "attn_dim": 8}
    thresholds = _q(embedded, "SELECT fold, value FROM metrics WHERE run_id = ? AND name = 'decision_threshold'",
                    rid)
    assert sorted(f for f, _ in thresholds) == [0, 1]
    with embedded.read() as conn:
        info = resolve_set(conn, "1")
        train_ids = [s for s, in conn.exec_driver_sql(
            "SELECT slide_id FROM splits WHERE run_id = ? AND fold = 0 AND subset = 'train' ORDER BY 1",
            (rid,)).all()]
        bags = load_bags(embedded, conn, info, train_ids)
    ck = torch.load(embedded.resolve(f"checkpoints/runs/{rid}/fold0.pt"), weights_only=True)
    st = ck["feature_standardization"]
    tiles = np.concatenate([b.features for b in bags]).astype(np.float64)
    np.testing.assert_allclose(st["mean"].numpy(), tiles.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st["std"].numpy(), np.where(tiles.std(0) > 0, tiles.std(0), 1.0), rtol=1e-3, atol=1e-5)
    assert st["n_tiles"] == len(tiles) and st["fit_on"] == "train"
    assert ck["decision_threshold"] == dict(thresholds)[0]
    r = run("--no-standardize")
    assert r.exit_code == 0, r.output
    assert torch.load(embedded.resolve(f"checkpoints/runs/{last_train_run()}/fold0.pt"), weights_only=True)[
        "feature_standardization"] is None
    r = run("--model", "mean", "--attn-dim", "8")
    assert r.exit_code != 0 and "no setting attn_dim" in r.output
