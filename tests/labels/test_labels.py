import pytest

from histstore.errors import InvalidInput
from histstore.labels import import_labels, labels_from_barcodes, tumor_label_from_barcode

from .conftest import SLIDES, snapshot


def _labels(store, task):
    with store.read() as conn:
        return dict(conn.exec_driver_sql(
            "SELECT slide_id, value FROM slide_labels WHERE task = ? ORDER BY 1", (task,)).all())


def test_import_slide_labels_csv_and_tsv(catalog, tmp_path, cli):
    f = tmp_path / "labels.csv"
    f.write_text("slide_id,tumor\n" + "".join(f"{s},{'tumor' if '-01Z' in s else 'normal'}\n"
                                            for s, _ in SLIDES[:8]))
    r = cli("labels", "import", f, "--task", "tumor")
    assert r.exit_code == 0, r.output
    assert "normal: 4" in r.output and "tumor: 4" in r.output
    assert _labels(catalog, "tumor")["TCGA-AA-0001-01Z-00-DX1"] == "tumor"
    # TSV, other column name, re-import replaces the task's labels
    g = tmp_path / "labels.tsv"
    g.write_text("slide_id\tgrade\nTCGA-AA-0001-01Z-00-DX1\tG2\n")
    r = cli("labels", "import", g, "--task", "tumor", "--column", "grade")
    assert r.exit_code == 0 and "replaced 8" in r.output
    assert _labels(catalog, "tumor") == {"TCGA-AA-0001-01Z-00-DX1": "G2"}


def test_case_level_labels_apply_to_all_slides(catalog, tmp_path):
    f = tmp_path / "cases.csv"
    f.write_text("case_id,subtype\nTCGA-AA-0001,LUAD\nTCGA-AA-0002,LUSC\n")
    r = import_labels(catalog, f, "subtype", level="case")
    assert r.class_counts == {"LUAD": 1, "LUSC": 1}
    got = _labels(catalog, "subtype")
    assert got == {"TCGA-AA-0001-01Z-00-DX1": "LUAD", "TCGA-AA-0001-11Z-00-DX1": "LUAD",
                   "TCGA-AA-0002-01Z-00-DX1": "LUSC", "TCGA-AA-0002-11Z-00-DX1": "LUSC"}


@pytest.mark.parametrize("content, words", [
    ("slide_id,tumor\nTCGA-AA-0001-01Z-00-DX1,tumor\nnope,normal\nnope2,normal\n", "not in the catalog (line 3, 4)"),
    ("slide_id,tumor\nTCGA-AA-0001-01Z-00-DX1,tumor\nTCGA-AA-0001-01Z-00-DX1,normal\n", "conflicting values"),
    ("slide_id,tumor\nTCGA-AA-0001-01Z-00-DX1,\n", "empty or non-finite"),
    ("slide_id,tumor\nTCGA-AA-0001-01Z-00-DX1,nan\n", "empty or non-finite"),
    ("", "is empty"),
    ("slide,tumor\nx,y\n", "no column 'slide_id'"),
    ("slide_id,tumor\n", "no rows"),
])
def test_bad_label_files_change_nothing(catalog, tmp_path, cli, content, words):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    before = snapshot(catalog)
    r = cli("labels", "import", f, "--task", "tumor")
    assert r.exit_code != 0
    assert words in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert snapshot(catalog) == before


def test_identical_duplicate_rows_are_fine(catalog, tmp_path):
    f = tmp_path / "dups.csv"
    f.write_text("slide_id,tumor\nTCGA-AA-0001-01Z-00-DX1,tumor\nTCGA-AA-0001-01Z-00-DX1,tumor\n")
    assert import_labels(catalog, f, "tumor").n_rows == 1


def test_barcode_codes():
    assert tumor_label_from_barcode("TCGA-05-4244-01Z-00-DX1") == "tumor"
    assert tumor_label_from_barcode("TCGA-05-4244-11A-01-TS1") == "normal"
    assert tumor_label_from_barcode("TCGA-05-4244-20A") is None
    assert tumor_label_from_barcode("slide7") is None


def test_labels_from_barcodes(catalog, cli):
    r = cli("labels", "from-barcodes", "--task", "tumor")
    assert r.exit_code == 0, r.output
    assert "normal: 4" in r.output and "tumor: 4" in r.output
    assert "local_slide_7" in r.output  # reported, not silently dropped
    got = _labels(catalog, "tumor")
    assert got["TCGA-AA-0003-11Z-00-DX1"] == "normal" and "local_slide_7" not in got


def test_sample_type_wins_over_barcode(catalog):
    with catalog.write() as conn:
        conn.exec_driver_sql("UPDATE slides SET sample_type = 'Solid Tissue Normal' "
                             "WHERE slide_id = 'local_slide_7'")
    labels_from_barcodes(catalog)
    assert _labels(catalog, "tumor")["local_slide_7"] == "normal"


def test_bad_task_name(catalog, tmp_path):
    f = tmp_path / "l.csv"
    f.write_text("slide_id,v\nTCGA-AA-0001-01Z-00-DX1,a\n")
    with pytest.raises(InvalidInput, match="reserved"):
        import_labels(catalog, f, "de:TP53")
