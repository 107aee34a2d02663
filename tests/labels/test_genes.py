import math

import numpy as np
import pytest

from histstore.genes import import_fold_changes, import_genes
from histstore.tasks import parse_task, task_targets

from .conftest import snapshot


def _fc(store):
    with store.read() as conn:
        return {(c, g): (v, p) for c, g, v, p in conn.exec_driver_sql(
            "SELECT case_id, gene, log2_fold_change, p_adj FROM fold_changes").all()}


def test_gene_lists(catalog, tmp_path, cli):
    f = tmp_path / "drivers.txt"
    f.write_text("TP53\nKRAS\nEGFR\n")
    r = cli("genes", "import", f, "--drivers")
    assert r.exit_code == 0 and "3 new" in r.output
    g = tmp_path / "more.csv"
    g.write_text("symbol\nTP53\nMYC\n")
    import_genes(catalog, g)
    with catalog.read() as conn:
        rows = dict(conn.exec_driver_sql("SELECT symbol, is_driver FROM genes").all())
    assert rows == {"TP53": True, "KRAS": True, "EGFR": True, "MYC": False}


def test_long_and_wide_round_trip(catalog, tmp_path, cli):
    f = tmp_path / "fc.csv"
    f.write_text("case_id,gene,log2_fold_change,p_adj\nTCGA-AA-0001,TP53,2.5,0.01\n"
                 "TCGA-AA-0002,TP53,-0.5,\nTCGA-AA-0001,KRAS,-1.5,0.2\n")
    r = cli("foldchanges", "import", f, "--source", "study1")
    assert r.exit_code == 0, r.output
    got = _fc(catalog)
    assert got[("TCGA-AA-0001", "TP53")] == (2.5, 0.01)
    assert got[("TCGA-AA-0002", "TP53")][1] is None  # missing p_adj is NULL, not NaN
    w = tmp_path / "wide.tsv"
    w.write_text("case_id\tTP53\tMYC\nTCGA-AA-0003\t4\t0.5\nTCGA-AA-0004\t1\t\n")
    r = cli("foldchanges", "import", w, "--source", "ratios", "--format", "wide", "--value", "ratio")
    assert r.exit_code == 0, r.output
    with catalog.read() as conn:
        v = dict(conn.exec_driver_sql("SELECT case_id || gene, log2_fold_change FROM fold_changes "
                                      "WHERE source = 'ratios'").all())
    assert v == {"TCGA-AA-0003TP53": 2.0, "TCGA-AA-0003MYC": -1.0, "TCGA-AA-0004TP53": 0.0}
    with catalog.read() as conn:  # unknown gene MYC was added as a non-driver
        assert conn.exec_driver_sql("SELECT is_driver FROM genes WHERE symbol='MYC'").scalar() is False


@pytest.mark.parametrize("content, fmt, words", [
    ("case_id,gene,log2_fold_change\nTCGA-AA-0001,TP53,abc\n", "long", "non-numeric"),
    ("case_id,gene,log2_fold_change\nTCGA-AA-0001,TP53,inf\n", "long", "infinite"),
    ("case_id,gene,log2_fold_change\nTCGA-AA-0001,TP53,NaN\n", "long", "NaN"),
    ("case_id,gene,log2_fold_change\nTCGA-ZZ-9999,TP53,1\n", "long", "not in the catalog"),
    ("case_id,gene,log2_fold_change\nTCGA-AA-0001,TP53,1\nTCGA-AA-0001,TP53,2\n", "long", "conflicting"),
    ("case_id,gene\nTCGA-AA-0001,TP53\n", "long", "no column 'log2_fold_change'"),
    ("case_id,TP53\nTCGA-AA-0001,x\n", "wide", "non-numeric"),
    ("", "long", "is empty"),
])
def test_bad_fold_changes_change_nothing(catalog, tmp_path, cli, content, fmt, words):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    before = snapshot(catalog)
    r = cli("foldchanges", "import", f, "--source", "s", "--format", fmt)
    assert r.exit_code != 0 and words in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert snapshot(catalog) == before


def test_derived_de_labels_on_hand_made_table(catalog, tmp_path):
    f = tmp_path / "fc.csv"
    f.write_text("case_id,gene,log2_fold_change,p_adj\n"
                 "TCGA-AA-0001,TP53,2.0,0.001\n"    # up, significant
                 "TCGA-AA-0002,TP53,-1.0,0.01\n"    # down at exactly the threshold
                 "TCGA-AA-0003,TP53,0.99,0.001\n"   # under threshold
                 "TCGA-AA-0004,TP53,3.0,0.2\n")     # large but not significant
    import_fold_changes(catalog, f, "s1")
    slides = ["TCGA-AA-000%d-01Z-00-DX1" % i for i in range(1, 5)] + ["local_slide_7"]

    def targets(name, **kw):
        with catalog.read() as conn:
            t = task_targets(conn, parse_task(name, **kw), slides)
        return dict(zip(t.slide_ids, t.values)), t.missing

    de, missing = targets("de:TP53")
    assert [de[s] for s in slides[:4]] == ["de", "de", "not_de", "de"]
    assert missing == ["local_slide_7"]
    de_p, _ = targets("de:TP53", p_cut=0.05)
    assert [de_p[s] for s in slides[:4]] == ["de", "de", "not_de", "not_de"]
    up, _ = targets("up:TP53")
    assert [up[s] for s in slides[:4]] == ["up", "not_up", "not_up", "up"]
    down, _ = targets("down:TP53", threshold=0.5)
    assert [down[s] for s in slides[:4]] == ["not_down", "down", "not_down", "not_down"]
    fc, _ = targets("fc:TP53")
    assert np.allclose([fc[s] for s in slides[:4]], [2.0, -1.0, 0.99, 3.0])


def test_sql_joins_documented(catalog, tmp_path):
    """The join shown in docs/catalog.md: slides with a label and a gene's fold change."""
    f = tmp_path / "fc.csv"
    f.write_text("case_id,gene,log2_fold_change\nTCGA-AA-0001,TP53,2.0\n")
    import_fold_changes(catalog, f, "s1")
    lab = tmp_path / "l.csv"
    lab.write_text("slide_id,tumor\nTCGA-AA-0001-01Z-00-DX1,tumor\nTCGA-AA-0001-11Z-00-DX1,normal\n")
    from histstore.labels import import_labels

    import_labels(catalog, lab, "tumor")
    with catalog.read() as conn:
        rows = conn.exec_driver_sql("""
            SELECT l.slide_id, l.value AS tumor, f.log2_fold_change
            FROM slide_labels l JOIN fold_changes f ON f.case_id = l.case_id
            WHERE l.task = 'tumor' AND f.gene = 'TP53' ORDER BY 1""").all()
    assert rows == [("TCGA-AA-0001-01Z-00-DX1", "tumor", 2.0), ("TCGA-AA-0001-11Z-00-DX1", "normal", 2.0)]
