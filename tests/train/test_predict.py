"""`histstore train --final` and `histstore predict`: a run trained on 6 cases of synth20 applied
to the other 4 (an external cohort of unseen patients), the evaluate run read by every command."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from histstore.errors import HiststoreError
from histstore.store import Store


def _q(store, sql, *params):
    with store.read() as conn:
        return conn.exec_driver_sql(sql, params).all()


def _cli(store, *args):
    from histstore.cli.main import main

    return CliRunner().invoke(main, ["--store", str(store.root), *map(str, args)])


@dataclass
class Fitted:
    root: Path
    run_id: int          # tumor, 2 folds + final model, trained on cohort 'dev' (6 cases)


SMALL = dict(folds=2, seed=0, epochs=6, patience=3, lr=5e-4, hidden_dim=16, attn_dim=8, device="cpu")


@pytest.fixture(scope="module")
def fitted(embedded_template, tmp_path_factory):
    from histstore.cohorts import create_cohort
    from histstore.train import TrainSettings, train

    root = tmp_path_factory.mktemp("predict") / "store"
    shutil.copytree(embedded_template.root, root)
    store = Store(root)
    cases = [c for c, in _q(store, "SELECT DISTINCT case_id FROM slides ORDER BY 1")]
    for name, part in (("dev", cases[:6]), ("ext", cases[6:])):
        create_cohort(store, name, from_cohort="syn20",
                      where="case_id IN (" + ", ".join(f"'{c}'" for c in part) + ")")
    rep = train(store, TrainSettings(cohort="dev", task="tumor", final=True, **SMALL), show_progress=False)
    assert rep.status == "finished"
    return Fitted(root, rep.run_id)


@pytest.fixture
def fit(fitted, tmp_path):
    """A private copy of the fitted store."""
    shutil.copytree(fitted.root, tmp_path / "store")
    return Store(tmp_path / "store")


def _snapshot(store) -> tuple:
    """Row counts of every table a run writes, and the store's files."""
    tables = ("runs", "predictions", "attention", "splits", "metrics", "artifacts")
    counts = tuple(_q(store, f"SELECT count(*) FROM {t}")[0][0] for t in tables)
    files = sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*")
                   if p.is_file() and p.name != "catalog.duckdb" and not p.name.endswith(".wal"))
    return counts, files


def test_final_model_is_saved_like_the_folds(fitted):
    import torch

    store = Store(fitted.root)
    rid = fitted.run_id
    (settings,), = _q(store, "SELECT settings FROM runs WHERE run_id = ?", rid)
    assert settings["final"] is True
    rows = _q(store, "SELECT fold, path, sha256 FROM artifacts WHERE run_id = ? AND kind = 'mil-checkpoint' "
                     "ORDER BY fold NULLS LAST", rid)
    assert [r[0] for r in rows] == [0, 1, None] and rows[-1][1] == f"checkpoints/runs/{rid}/final.pt"
    from histstore.hashing import sha256_file

    assert sha256_file(store.resolve(rows[-1][1])) == rows[-1][2]
    final = torch.load(store.resolve(rows[-1][1]), weights_only=True)
    fold0 = torch.load(store.resolve(rows[0][1]), weights_only=True)
    assert set(final) == set(fold0)
    assert final["classes"] == ["normal", "tumor"] and final["feature_standardization"]["fit_on"] == "train"
    # fit on all 12 slides of the 6 dev cases: one case (2 slides) validates, grouped by case
    m = dict(_q(store, "SELECT name, value FROM metrics WHERE run_id = ? AND subset = 'final' AND step IS NULL",
                rid))
    assert m["n_train"] + m["n_val"] == 12 and m["n_val"] == 2 and m["best_epoch"] >= 1
    # 12 slides in all: standardisation over the final model's training tiles, not a fold's
    assert final["feature_standardization"]["n_tiles"] != fold0["feature_standardization"]["n_tiles"]
    assert _q(store, "SELECT progress_done, progress_total FROM runs WHERE run_id = ?", rid) == [(3, 3)]


def test_predict_external_cohort_finds_the_planted_tumours(fit):
    from histstore.predict import predict

    r = predict(fit, fitted_run(fit), "ext", device="cpu", show_progress=False)
    assert r.status == "finished" and r.use == "final" and r.n_slides == 8 and r.n_labelled == 8
    assert r.metrics["auc"] >= 0.9 and r.metrics["case_auc"] >= 0.9, r.metrics
    run = _q(fit, "SELECT kind, parent_run_id, cohort, task, status, settings FROM runs WHERE run_id = ?", r.run_id)[0]
    assert run[:5] == ("evaluate", fitted_run(fit), "ext", "tumor", "finished")
    assert run[5]["use"] == "final" and run[5]["models"] == ["final"] and run[5]["run"] == fitted_run(fit)
    # slide and case level metrics in run_summary (one fold), intervals from the bootstrap
    summary = dict(_q(fit, "SELECT metric, mean FROM run_summary WHERE run_id = ? AND subset = 'test'", r.run_id))
    assert summary["auc"] == r.metrics["auc"] and "case_auc" in summary and summary["n"] == 8
    assert set(r.intervals["level"]) == {"slide", "case"} and (r.intervals["ci_low"] <= r.intervals["estimate"]).all()
    # attention for every tile of the cohort, softmax weights summing to 1 per slide
    sums = _q(fit, "SELECT slide_id, sum(score) FROM tile_attention WHERE run_id = ? GROUP BY 1", r.run_id)
    assert len(sums) == 8 and all(abs(s - 1) < 1e-4 for _, s in sums)
    # the fold ensemble predicts too, and finds the same tumours
    f = predict(fit, fitted_run(fit), "ext", use="folds", device="cpu", show_progress=False)
    assert f.use == "folds" and f.metrics["auc"] >= 0.9
    (st,), = _q(fit, "SELECT settings FROM runs WHERE run_id = ?", f.run_id)
    assert st["models"] == ["fold 0", "fold 1"] and "mean" in st["ensemble"]


def fitted_run(store) -> int:
    return _q(store, "SELECT min(run_id) FROM runs WHERE kind = 'train'")[0][0]


def test_fold_model_reproduces_its_training_test_scores(fit):
    """A fold model applied by predict gives the scores training stored for its test slides."""
    from histstore.predict import predict

    rid = fitted_run(fit)
    with fit.write() as conn:  # the run keeps only its fold 0 model
        conn.exec_driver_sql("DELETE FROM artifacts WHERE run_id = ? AND (fold IS NULL OR fold = 1)", (rid,))
    r = predict(fit, rid, "dev", device="cpu", show_progress=False)
    assert r.use == "folds"
    got = dict(_q(fit, "SELECT slide_id, score FROM predictions WHERE run_id = ?", r.run_id))
    want = dict(_q(fit, "SELECT slide_id, score FROM predictions WHERE run_id = ? AND fold = 0 AND subset = 'test'",
                   rid))
    assert want and all(abs(got[s] - v) < 1e-6 for s, v in want.items())
    att = _q(fit, "SELECT a.tile_id, a.score, b.score FROM attention a JOIN attention b USING (tile_id) "
                  "WHERE a.run_id = ? AND b.run_id = ? AND b.fold = 0", r.run_id, rid)
    assert att and max(abs(x - y) for _, x, y in att) < 1e-5


def test_heatmap_report_export_and_runs_show_read_the_evaluate_run(fit, tmp_path):
    from histstore.interop import export_predictions
    from histstore.predict import predict
    from histstore.reports.heatmap import render_heatmap
    from histstore.reports.report import write_report

    r = predict(fit, fitted_run(fit), "ext", device="cpu", show_progress=False)
    slide = _q(fit, "SELECT slide_id FROM predictions WHERE run_id = ? AND label = 'tumor' ORDER BY 1", r.run_id)[0][0]
    h = render_heatmap(fit, r.run_id, slide)
    assert h.path.is_file() and h.n_tiles > 0 and h.prediction["label"] == "tumor"
    rep = write_report(fit, r.run_id)
    assert rep.html.is_file() and rep.mean_auc >= 0.9
    ex = export_predictions(fit, r.run_id, tmp_path / "p.csv")
    assert ex.n_rows == 8
    out = _cli(fit, "runs", "show", r.run_id)
    assert out.exit_code == 0, out.output
    assert "evaluate tumor" in out.output and "pooled test predictions" in out.output
    # the train run's own report is unchanged by its evaluate runs (they are not its children)
    out = _cli(fit, "runs", "show", fitted_run(fit))
    assert out.exit_code == 0 and "per gene" not in out.output
    listed = json.loads(_cli(fit, "runs", "list", "--kind", "evaluate", "--format", "json").output)
    assert [x["run_id"] for x in listed] == [r.run_id] and listed[0]["test_metric"] >= 0.9
    # the web viewer offers its map; verify finds the store consistent (final checkpoint included)
    from histstore.browse import viewer_runs
    from histstore.verify import verify

    assert [(v.run_id, v.genes) for v in viewer_runs(fit, slide)] == [(r.run_id, [])]
    assert verify(fit, quick=True, show_progress=False).ok


def test_cli_predict_and_unlabelled_slides(fit):
    with fit.write() as conn:  # half of the external cohort has no label
        conn.exec_driver_sql("DELETE FROM labels WHERE task = 'tumor' AND slide_id IN (SELECT slide_id FROM "
                             "cohort_slides WHERE cohort = 'ext' ORDER BY slide_id LIMIT 4)")
    out = _cli(fit, "predict", "--run", fitted_run(fit), "--cohort", "ext", "--device", "cpu")
    assert out.exit_code == 0, out.output
    assert "8 slides, 4 labelled" in out.output
    rid = _q(fit, "SELECT max(run_id) FROM runs WHERE kind = 'evaluate'")[0][0]
    assert _q(fit, "SELECT count(*), count(label) FROM predictions WHERE run_id = ?", rid) == [(8, 4)]
    assert dict(_q(fit, "SELECT name, value FROM metrics WHERE run_id = ? AND subset = 'test'", rid))["n"] == 4


def test_resume_skips_committed_slides(fit, monkeypatch):
    import histstore.predict as mod
    from histstore.predict import predict, resume_predict

    monkeypatch.setattr(mod, "COMMIT_SLIDES", 3)
    real = mod._commit_batch
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "_commit_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        predict(fit, fitted_run(fit), "ext", device="cpu", show_progress=False)
    rid, status = _q(fit, "SELECT run_id, status FROM runs WHERE kind = 'evaluate'")[0]
    assert status == "interrupted" and _q(fit, "SELECT count(*) FROM predictions WHERE run_id = ?", rid) == [(3,)]
    monkeypatch.setattr(mod, "_commit_batch", real)
    import histstore.mil.apply as apply_mod

    applied = []
    real_apply = apply_mod.apply_models

    def counting(models, bags, positions, regression):
        applied.extend(positions)
        return real_apply(models, bags, positions, regression)

    monkeypatch.setattr(apply_mod, "apply_models", counting)
    r = resume_predict(fit, rid, device="cpu", show_progress=False)
    assert len(applied) == 5  # the 3 committed slides are not predicted again
    assert r.run_id == rid and r.status == "finished" and r.n_slides == 8
    assert _q(fit, "SELECT count(*), count(DISTINCT slide_id) FROM predictions WHERE run_id = ?", rid) == [(8, 8)]
    with pytest.raises(HiststoreError, match="already finished"):
        resume_predict(fit, rid, device="cpu", show_progress=False)


def _mismatched_set(store, stain="macenko") -> str:
    """A second embedding set of the same slides with another stain normalisation (catalog rows
    only: predict refuses before reading arrays)."""
    with store.write() as conn:
        conn.exec_driver_sql(
            "INSERT INTO embedding_sets (name, kind, encoder_id, settings_key, tiling_key, tiling_settings, "
            "stain_norm, dim, dtype, zarr_path, settings, code_version, status) "
            "SELECT 'other', kind, encoder_id, 'k2', tiling_key, tiling_settings, ?, dim, dtype, 'embeddings.zarr/other', "
            "json_merge_patch(settings, json_object('stain_norm', ?)), code_version, status FROM embedding_sets "
            "WHERE embedding_set_id = 1", (stain, stain))
        conn.exec_driver_sql(
            "INSERT INTO embedding_arrays (embedding_set_id, slide_id, tiling_id, n_rows, dim, status, checksum) "
            "SELECT (SELECT embedding_set_id FROM embedding_sets WHERE name = 'other'), slide_id, tiling_id, n_rows, "
            "dim, status, checksum FROM embedding_arrays WHERE embedding_set_id = 1")
    return "other"


@pytest.mark.parametrize("case", ["mismatched set", "not embedded", "sha256", "no checkpoints", "not train",
                                  "other task", "no run", "no cohort", "no final"])
def test_bad_input_is_one_line_and_changes_nothing(fit, case):
    from histstore.predict import predict

    rid = fitted_run(fit)
    kw = dict(run=rid, cohort="ext")
    if case == "mismatched set":
        kw["embeddings"] = _mismatched_set(fit)
        words = "stain normalisation none vs macenko.*histstore embed --encoder"
    elif case == "not embedded":
        _mismatched_set(fit)
        with fit.write() as conn:
            conn.exec_driver_sql("DELETE FROM embedding_arrays WHERE embedding_set_id = 1 AND slide_id IN "
                                 "(SELECT slide_id FROM cohort_slides WHERE cohort = 'ext' ORDER BY 1 LIMIT 1)")
        words = r"1 of 8 slides of cohort 'ext' have no array.*'other' differs: stain normalisation"
    elif case == "sha256":
        path = fit.resolve(f"checkpoints/runs/{rid}/final.pt")
        path.write_bytes(path.read_bytes() + b"\0")
        words = "does not match the sha256"
    elif case == "no checkpoints":
        with fit.write() as conn:
            conn.exec_driver_sql("DELETE FROM artifacts WHERE run_id = ?", (rid,))
        words = "has no checkpoints"
    elif case == "not train":
        kw["run"] = _q(fit, "SELECT min(run_id) FROM runs WHERE kind = 'embed'")[0][0]
        words = "is an embed run, not a train run"
    elif case == "other task":
        kw["task"] = "de:TP53"
        words = "trained task tumor, not de:TP53"
    elif case == "no run":
        kw["run"] = 999
        words = "no run 999"
    elif case == "no cohort":
        kw["cohort"] = "ghost"
        words = "no cohort 'ghost'"
    else:
        with fit.write() as conn:
            conn.exec_driver_sql("DELETE FROM artifacts WHERE run_id = ? AND fold IS NULL", (rid,))
        kw["use"] = "final"
        words = "has no final model"
    before = _snapshot(fit)
    with pytest.raises(HiststoreError, match=words) as err:
        predict(fit, device="cpu", show_progress=False, **kw)
    assert "\n" not in str(err.value)
    assert _snapshot(fit) == before


def test_gene_run_with_final_predicts_every_gene(fit):
    from histstore.predict import predict
    from histstore.train import TrainSettings, train

    small = {**SMALL, "epochs": 1}
    rep = train(fit, TrainSettings(cohort="dev", task="de", genes=("TP53", "MYC"), final=True, **small),
                show_progress=False)
    kids = _q(fit, "SELECT run_id, task FROM runs WHERE parent_run_id = ? ORDER BY task", rep.run_id)
    assert [t for _, t in kids] == ["de:MYC", "de:TP53"]
    assert all(_q(fit, "SELECT count(*) FROM artifacts WHERE run_id = ? AND fold IS NULL", k) == [(1,)]
               for k, _ in kids)
    r = predict(fit, rep.run_id, "ext", device="cpu", show_progress=False)
    assert r.task == "de:*" and [c.task for c in r.children] == ["de:MYC", "de:TP53"]
    assert all(c.use == "final" and c.n_slides == 8 for c in r.children)
    rows = _q(fit, "SELECT run_id, parent_run_id, task, settings FROM runs WHERE kind = 'evaluate' ORDER BY run_id")
    assert rows[0][:3] == (r.run_id, rep.run_id, "de:*")
    assert [(p, t, s["run"]) for _, p, t, s in rows[1:]] == [(r.run_id, t, k) for k, t in kids]
    out = _cli(fit, "runs", "show", r.run_id)
    assert out.exit_code == 0 and "per gene" in out.output and "de:TP53" in out.output
    # each gene's external |log2FC| beside its AUC, as train writes it for the AUC-vs-fold-change plot
    assert _q(fit, "SELECT count(*) FROM metrics WHERE name = 'mean_abs_log2fc' AND run_id IN "
                   "(SELECT run_id FROM runs WHERE parent_run_id = ?)", r.run_id) == [(2,)]
    # one gene of the run only; a gene it did not train is refused
    one = predict(fit, rep.run_id, "ext", task="de:TP53", device="cpu", show_progress=False)
    assert [c.task for c in one.children] == ["de:TP53"]
    with pytest.raises(HiststoreError, match="did not train task de:EGFR"):
        predict(fit, rep.run_id, "ext", task="de:EGFR", device="cpu", show_progress=False)
    # a gene without checkpoints is skipped, and said so
    with fit.write() as conn:
        conn.exec_driver_sql("DELETE FROM artifacts WHERE run_id = ?", (kids[0][0],))
    part = predict(fit, rep.run_id, "ext", device="cpu", show_progress=False)
    assert [c.task for c in part.children] == ["de:TP53"] and any("de:MYC: no checkpoints" in n for n in part.notes)


def test_run_interrupted_before_the_final_model_resumes_it(embedded, monkeypatch):
    import histstore.train as mod

    def dying(*args, **kwargs):
        raise KeyboardInterrupt

    real = mod._final_model
    monkeypatch.setattr(mod, "_final_model", dying)
    with pytest.raises(KeyboardInterrupt):
        mod.train(embedded, mod.TrainSettings(cohort="syn20", task="tumor", final=True, **{**SMALL, "epochs": 2}),
                  show_progress=False)
    (rid, status), = _q(embedded, "SELECT run_id, status FROM runs WHERE kind = 'train'")
    assert status == "interrupted" and _q(embedded, "SELECT count(DISTINCT fold) FROM predictions") == [(2,)]
    monkeypatch.setattr(mod, "_final_model", real)
    folds_before = _q(embedded, "SELECT count(*) FROM metrics WHERE run_id = ? AND fold IS NOT NULL", rid)
    rep = mod.resume(embedded, rid, show_progress=False)
    assert rep.status == "finished"
    assert _q(embedded, "SELECT count(*) FROM metrics WHERE run_id = ? AND fold IS NOT NULL", rid) == folds_before
    assert _q(embedded, "SELECT count(*) FROM artifacts WHERE run_id = ? AND fold IS NULL", rid) == [(1,)]


def test_joint_checkpoint_output_is_selected_by_task(tmp_path):
    """A hand-made 2-output joint checkpoint (contract with the joint gene model): each gene's
    run takes its own output column, threshold and attention branch."""
    import torch

    from histstore.hashing import sha256_file
    from histstore.mil.apply import apply_models
    from histstore.mil.bags import pack_bags
    from histstore.mil.models import build_model
    from histstore.mil.saved_models import load_saved_model, select_output

    torch.manual_seed(0)
    model = build_model("gated-attention", 4, 2, hidden_dim=8, attn_dim=4)  # 2 outputs: one log-odds per gene
    path = tmp_path / "fold0.pt"
    torch.save({"model_spec": model.spec(), "state_dict": model.state_dict(), "classes": ["not_de", "de"],
                "target_scale": None, "embedding_set": "s", "decision_threshold": [0.3, 0.7],
                "feature_standardization": None, "outputs": ["de:TP53", "de:MYC"]}, path)
    sha = sha256_file(path)
    tp53 = load_saved_model(path, sha, "fold 0", "de:TP53")
    myc = load_saved_model(path, sha, "fold 0", "de:MYC")
    assert (tp53.output, tp53.threshold, myc.output, myc.threshold) == (0, 0.3, 1, 0.7)
    with pytest.raises(HiststoreError, match="no output for task de:KRAS"):
        load_saved_model(path, sha, "fold 0", "de:KRAS")
    bag = torch.randn(5, 4)
    logits = model.forward_segments(bag, None, 1).logits.detach()
    for sm, i in ((tp53, 0), (myc, 1)):
        out = next(apply_models([sm], pack_bags([bag], "cpu"), [0], regression=False))
        assert np.allclose(out.output[1], torch.sigmoid(logits[0, i]).item(), atol=1e-6)
    # per-output logit pairs and one attention branch per output
    z, att = select_output(torch.arange(8.).reshape(2, 4), torch.arange(6.).reshape(3, 2), 1, 2, regression=False)
    assert z.tolist() == [[2.0, 3.0], [6.0, 7.0]] and att.tolist() == [1.0, 3.0, 5.0]
    z, _ = select_output(torch.tensor([[1.0, 2.0]]), None, 1, 2, regression=True)
    assert z.tolist() == [[2.0]]
