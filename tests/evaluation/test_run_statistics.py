"""Patient-level metrics, fold counts, pooled intervals, paired tests and gene permutation
tests as `runs show`, `compare`, run_summary and reports show them (runs planted with chosen
scores: no training)."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from histstore.evaluation import stats
from histstore.evaluation.case_level import case_metrics
from tests.evaluation.scored_runs import cohort_frame, plant_parent, plant_scored_run


def _cli(store, *args):
    from histstore.cli.main import main

    return CliRunner().invoke(main, ["--store", str(store.root), *map(str, args)], catch_exceptions=False)


def test_case_metrics_average_slide_scores_per_case_and_label():
    cases = ["A", "A", "B", "B", "C", "D", "E", "E"]
    y = np.array([1, 1, 0, 0, 0, 1, 1, 0])   # E: a tumour and a normal slide -> two case units
    s = np.array([0.9, 0.3, 0.4, 0.6, 0.2, 0.55, 0.8, 0.1])
    m = case_metrics(cases, y, s, regression=False, n_classes=2).values
    # units: A+ 0.6, B- 0.5, C- 0.2, D+ 0.55, E+ 0.8, E- 0.1
    assert m["case_n"] == 6
    assert m["case_auc"] == pytest.approx(1.0)
    assert m["case_accuracy"] == pytest.approx(1.0)  # B's mean 0.5 is not > 0.5: normal
    assert stats.auc(y, s) < 1
    r = case_metrics(["A", "A", "B", "C"], [1.0, 1.0, 2.0, 3.0], [0.0, 2.0, 2.5, 2.5], regression=True).values
    assert r["case_n"] == 3 and r["case_mse"] == pytest.approx((0 + 0.25 + 0.25) / 3)


def test_undefined_folds_are_counted_and_named(store):
    preds = cohort_frame(12, 1, 3, seed=0, signal=2.0)
    preds.loc[preds["fold"] == 1, "label"] = "normal"  # fold 1 tests one class only: AUC undefined
    rid = plant_scored_run(store, preds)
    with store.read() as conn:
        row = conn.exec_driver_sql("SELECT n_folds, n_undefined, undefined_folds, mean FROM run_summary "
                                   "WHERE run_id = ? AND metric = 'auc' AND subset = 'test'", (rid,)).one()
        acc = conn.exec_driver_sql("SELECT n_folds, n_undefined FROM run_summary WHERE run_id = ? AND "
                                   "metric = 'accuracy'", (rid,)).one()
    assert (row[0], row[1], list(row[2])) == (2, 1, [1]) and row[3] is not None
    assert tuple(acc) == (3, 0)
    cmp = _cli(store, "compare", rid)
    auc_line = next(line for line in cmp.output.splitlines() if line.startswith("auc "))
    assert "n=2 (undefined in fold 1)" in auc_line
    assert "n=3" in next(line for line in cmp.output.splitlines() if line.startswith("accuracy "))
    shown = _cli(store, "runs", "show", rid).output
    assert "undefined_folds" in shown and "pooled test predictions" in shown


def test_a_metric_undefined_everywhere_still_has_its_row(store):
    preds = cohort_frame(6, 1, 3, seed=1, signal=1.0).assign(label="tumor")
    rid = plant_scored_run(store, preds)
    with store.read() as conn:
        row = conn.exec_driver_sql("SELECT n_folds, n_undefined, mean FROM run_summary WHERE run_id = ? AND "
                                   "metric = 'auc'", (rid,)).one()
    assert tuple(row) == (0, 3, None)
    assert "undefined (undefined in folds 0, 1, 2)" in _cli(store, "compare", rid).output


def test_compare_pools_and_pairs_runs_on_the_same_splits(store):
    good = cohort_frame(30, 2, 5, seed=2, signal=2.5)
    weak = good.assign(score=cohort_frame(30, 2, 5, seed=3, signal=0.4)["score"])
    a, b = plant_scored_run(store, good), plant_scored_run(store, weak, model="mean")
    other = good.assign(fold=(good.index // 2 + 1) % 5)   # the same slides, split differently
    c = plant_scored_run(store, other, model="max")
    res = _cli(store, "compare", a, b, c)
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    pooled = next(line for line in lines if line.startswith("auc, pooled [95% CI]"))
    delong = next(line for line in lines if line.startswith(f"auc difference vs run {a} (DeLong)"))
    # the paired test: B - A, matching DeLong computed directly on the pooled predictions
    y = (good["label"] == "tumor").to_numpy(int)
    t = stats.delong_test(y, weak["score"], good["score"])
    assert "reference" in delong and f"{t.diff:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}]" in delong
    assert t.diff < 0 and t.p < 0.05
    assert any(line.startswith(f"case_auc difference vs run {a} (paired bootstrap)") for line in lines)
    est = stats.auc(y, good["score"])
    assert f"{est:.3f} [" in pooled
    # run c is refused in one line, on stderr; the table still has its per-fold column
    assert res.stderr.strip() == (f"no paired test of runs {a} and {c}: their splits differ "
                                  "(a paired test needs the same folds of the same slides)")
    assert f"{c}:max (tumor)" in lines[0]
    assert "," in _cli(store, "compare", a, b, "--format", "csv").stdout.splitlines()[-1]


def test_gene_runs_get_permutation_p_and_bh_q(store, tmp_path):
    parent = plant_parent(store, ["G1", "G2", "G3"])
    for seed, (gene, signal) in enumerate((("G1", 3.0), ("G2", 0.0), ("G3", 0.0))):
        f = cohort_frame(40, 1, 4, seed=11 + seed, signal=signal, case_labels=True)
        f["label"] = f["label"].map({"tumor": "de", "normal": "not_de"})
        f["slide_id"], f["case_id"] = "T" + f["slide_id"], "T" + f["case_id"]
        plant_scored_run(store, f, classes=("not_de", "de"), task=f"de:{gene}", parent=parent)
    out = _cli(store, "runs", "show", parent).output
    assert "10,000 permutations" in out and "p >= 1.0e-04" in out
    table = out.split("passes: q < 0.05:")[1]
    rows = {line.split()[1]: line.split() for line in table.splitlines()[3:6]}
    assert rows["de:G1"][-1] == "True" and float(rows["de:G1"][3]) == pytest.approx(1 / 10_001, rel=1e-3)
    assert rows["de:G2"][-1] == "False" and rows["de:G3"][-1] == "False"
    from histstore.reports.report import write_report

    html = write_report(store, parent, tmp_path / "rep").html.read_text()
    assert "bh_q" in html and html.count(">yes<") == 1 and html.count(">no<") == 2


def test_report_shows_fold_counts_and_pooled_intervals(store, tmp_path):
    preds = cohort_frame(12, 2, 3, seed=4, signal=2.0)
    rid = plant_scored_run(store, preds)
    from histstore.reports.report import write_report

    html = write_report(store, rid, tmp_path / "r").html.read_text()
    assert "Pooled test predictions (95 % intervals)" in html and "undefined_folds" in html
    assert ">folds<" in html and "case_auc" in html
    pooled = html.split("Pooled test predictions")[1].split("</table>")[0]
    est = stats.auc(preds["label"] == "tumor", preds["score"])
    assert f'<td>slide</td><td>auc</td><td class="num">{est:.3f}</td>' in pooled
