"""`histstore train --genes ... --joint`: one multi-output model for a gene panel whose
results land in per-gene child runs, as per-gene runs do."""
import numpy as np
import pytest
import torch

from histstore.errors import HiststoreError
from histstore.train import TrainSettings
from histstore.train_joint import resume, train

GENES = ("TP53", "EGFR", "KRAS", "STK11")


def _q(store, sql, *params):
    with store.read() as conn:
        return conn.exec_driver_sql(sql, params).all()


def _settings(**kw):
    base = dict(cohort="syn20", task="fc", genes=GENES, joint=True, folds=3, seed=0, epochs=8, patience=5,
                lr=5e-4, device="cpu")
    return TrainSettings(**{**base, **kw})


def test_joint_fc_panel_lands_like_per_gene_runs(embedded, cli):
    # a case without TP53's fold change: masked out of TP53's loss, still trains the others
    with embedded.write() as conn:
        conn.exec_driver_sql("DELETE FROM fold_changes WHERE gene = 'TP53' AND case_id = 'TCGA-SY-0001'")
    rep = train(embedded, _settings(), show_progress=False)
    assert rep.status == "finished"
    (settings,), = _q(embedded, "SELECT settings FROM runs WHERE run_id = ?", rep.run_id)
    assert settings["joint"] is True and settings["genes"] == list(GENES)
    children = dict(_q(embedded, "SELECT task, run_id FROM runs WHERE parent_run_id = ? AND status = 'finished'",
                       rep.run_id))
    assert sorted(children) == sorted(f"fc:{g}" for g in GENES)
    # every gene's child run: its slides' predictions, attention of its test slides, metrics
    n_tp53 = _q(embedded, "SELECT count(*) FROM predictions WHERE run_id = ? AND subset = 'test'",
                children["fc:TP53"])[0][0]
    n_egfr = _q(embedded, "SELECT count(*) FROM predictions WHERE run_id = ? AND subset = 'test'",
                children["fc:EGFR"])[0][0]
    assert (n_tp53, n_egfr) == (9, 10)  # 10 tumour slides, one without TP53's fold change
    for task, rid in children.items():
        assert _q(embedded, "SELECT count(DISTINCT fold) FROM metrics WHERE run_id = ? AND name = 'case_pearson'",
                  rid) == [(3,)]
        n_att, n_tiles = _q(embedded, """
            SELECT (SELECT count(*) FROM attention WHERE run_id = $1),
                   (SELECT count(*) FROM tiles WHERE slide_id IN (SELECT slide_id FROM predictions
                    WHERE run_id = $1 AND subset = 'test'))""", rid)[0]
        assert n_att == n_tiles > 0
    # one split for the panel: a case is in the same subset of a fold for every gene
    assert _q(embedded, "SELECT count(*) FROM (SELECT fold, case_id FROM splits WHERE run_id IN "
                        "(SELECT run_id FROM runs WHERE parent_run_id = ?) GROUP BY 1, 2 "
                        "HAVING count(DISTINCT subset) > 1)", rep.run_id) == [(0,)]
    # each gene's attention is its own branch
    a = dict(_q(embedded, "SELECT tile_id, score FROM attention WHERE run_id = ?", children["fc:EGFR"]))
    b = dict(_q(embedded, "SELECT tile_id, score FROM attention WHERE run_id = ?", children["fc:STK11"]))
    assert a.keys() == b.keys() and not np.allclose([a[t] for t in a], [b[t] for t in a])
    # planted signal: the strong genes' fold changes are predicted (synth20: burden model)
    pearson = {t: _q(embedded, "SELECT mean FROM run_summary WHERE run_id = ? AND subset = 'test' "
                               "AND metric = 'pearson'", rid)[0][0] for t, rid in children.items()}
    assert pearson["fc:EGFR"] >= 0.8 and pearson["fc:TP53"] >= 0.8, pearson
    # one checkpoint file per fold, registered by every child with the same sha256
    rows = _q(embedded, "SELECT fold, path, count(DISTINCT run_id), count(DISTINCT sha256) FROM artifacts "
                        "WHERE kind = 'mil-checkpoint' GROUP BY 1, 2 ORDER BY 1")
    assert [(f, p, n, s) for f, p, n, s in rows] == [
        (f, f"checkpoints/runs/{rep.run_id}/fold{f}.pt", 4, 1) for f in range(3)]
    ck = torch.load(embedded.resolve(rows[0][1]), weights_only=True)
    assert ck["outputs"] == [f"fc:{g}" for g in GENES] and len(ck["decision_threshold"]) == 4
    assert ck["model_spec"]["name"] == "gated-attention-multi" and len(ck["target_scale"]) == 4
    # the parent's per-gene analysis and the usual views work unchanged
    names = dict(_q(embedded, "SELECT name, value FROM metrics WHERE run_id = ? AND subset = 'genes'", rep.run_id))
    assert names["n_genes_trained"] == 4 and "spearman_metric_vs_mean_abs_log2fc" in names
    r = cli("runs", "show", rep.run_id)
    assert r.exit_code == 0 and "fc:EGFR" in r.output
    r = cli("runs", "show", children["fc:EGFR"])
    assert r.exit_code == 0 and "pearson" in r.output
    (sid,), = _q(embedded, "SELECT slide_id FROM predictions WHERE run_id = ? AND subset = 'test' LIMIT 1",
                 children["fc:EGFR"])
    out = embedded.root / "egfr.geojson"
    r = cli("heatmap", "--run", children["fc:EGFR"], "--slide", sid, "--out", out)
    assert r.exit_code == 0 and out.exists(), r.output


def test_joint_de_resumes_skipping_finished_folds(embedded, monkeypatch):
    import histstore.mil.joint as mod

    real = mod.train_joint_fold
    calls, die = [], [True]

    def dying(*args, **kwargs):
        calls.append(kwargs["fold"])
        if die[0] and len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "train_joint_fold", dying)
    with pytest.raises(KeyboardInterrupt):
        train(embedded, _settings(task="de", genes=("TP53", "EGFR"), epochs=3, final=True), show_progress=False)
    (parent, status), = _q(embedded, "SELECT run_id, status FROM runs WHERE parent_run_id IS NULL AND kind = 'train'")
    assert status == "interrupted"
    assert _q(embedded, "SELECT DISTINCT status FROM runs WHERE parent_run_id = ?", parent) == [("interrupted",)]
    assert _q(embedded, "SELECT DISTINCT fold FROM predictions") == [(0,)]
    calls.clear()
    die[0] = False
    with pytest.raises(HiststoreError, match=f"resume that run .*--resume {parent}"):
        resume(embedded, _q(embedded, "SELECT min(run_id) FROM runs WHERE parent_run_id = ?", parent)[0][0],
               show_progress=False)
    rep = resume(embedded, parent, show_progress=False)
    assert rep.status == "finished" and calls == [1, 2, None]  # fold 0 not trained again; None: final
    assert _q(embedded, "SELECT run_id, count(DISTINCT fold), count(*) FILTER (WHERE fold = 0) FROM predictions "
                        "WHERE subset = 'test' GROUP BY 1 ORDER BY 1") == \
        [(c, 3, n0) for (c, n0) in _q(embedded, "SELECT run_id, count(*) FILTER (WHERE fold = 0 AND subset = 'test') "
                                                "FROM predictions GROUP BY 1 ORDER BY 1")]
    assert _q(embedded, "SELECT DISTINCT status FROM runs WHERE run_id = ? OR parent_run_id = ?", parent, parent) \
        == [("finished",)]
    # --final: one joint model on all slides, registered by both genes; predict applies it per gene
    assert _q(embedded, "SELECT DISTINCT path FROM artifacts WHERE fold IS NULL") == \
        [(f"checkpoints/runs/{parent}/final.pt",)]
    assert _q(embedded, "SELECT count(DISTINCT run_id) FROM artifacts WHERE fold IS NULL") == [(2,)]
    from histstore.predict import predict

    r = predict(embedded, parent, "syn20", device="cpu", show_progress=False)
    assert sorted(c.task for c in r.children) == ["de:EGFR", "de:TP53"] and all(c.use == "final" for c in r.children)
    n_pred = dict(_q(embedded, "SELECT r.task, count(*) FROM predictions p JOIN runs r USING (run_id) "
                               "WHERE r.kind = 'evaluate' AND r.parent_run_id = ? GROUP BY 1", r.run_id))
    assert n_pred == {"de:EGFR": 20, "de:TP53": 20}  # every slide of the cohort


@pytest.mark.parametrize("kw, words", [
    (dict(genes=None), "--joint needs --genes"),
    (dict(model="mean"), "no multi-output form"),
    (dict(model="dsmil"), "no multi-output form"),
    (dict(task="de:TP53"), "gene task kind"),
    (dict(genes=("NOPE",)), "no gene of the panel"),
])
def test_joint_bad_input_writes_nothing(embedded, kw, words):
    with pytest.raises(HiststoreError, match=words):
        train(embedded, _settings(**kw), show_progress=False)
    assert _q(embedded, "SELECT count(*) FROM runs WHERE kind = 'train'") == [(0,)]


def test_cli_joint_flag(embedded, cli):
    from click.testing import CliRunner

    from histstore.cli.main import main

    r = CliRunner().invoke(main, ["--store", str(embedded.root), "train", "--cohort", "syn20", "--task", "de",
                                  "--joint", "--model", "max"])
    assert r.exit_code != 0 and "--joint needs --genes" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["--store", str(embedded.root), "train", "--cohort", "syn20", "--task", "de",
                                  "--genes", "TP53", "--joint", "--model", "max"])
    assert r.exit_code != 0 and "no multi-output form" in r.output
    assert _q(embedded, "SELECT count(*) FROM runs WHERE kind = 'train'") == [(0,)]
