"""`histstore ingest`: catalogue, tile, stay idempotent, isolate failures, resume."""
import shutil

import numpy as np
import pytest
import tifffile

from histstore.errors import InvalidInput
from histstore.ingest import ingest
from histstore.wsi.tiling import TilingSpec

SPEC = TilingSpec()


def _table(store, sql):
    with store.read() as conn:
        return conn.exec_driver_sql(sql).all()


def _snapshot(store):
    return {t: _table(store, f"SELECT * FROM {t} ORDER BY ALL")
            for t in ("slides", "cases", "tilings", "tiles", "cohort_slides")}


def test_ingest_manifest_registers_everything(store, synth6, cli):
    r = cli("ingest", synth6.manifest, "--cohort", "syn", "--workers", "2")
    assert r.exit_code == 0, r.output
    assert "6 ingested" in r.output
    rows = _table(store, "SELECT s.slide_id, s.case_id, s.status, s.mpp, t.n_tiles, "
                         "(SELECT count(*) FROM tiles x WHERE x.tiling_id = t.tiling_id) "
                         "FROM slides s JOIN tilings t USING (slide_id) ORDER BY 1")
    assert len(rows) == 6
    for sid, case, status, mpp, n_tiles, n_rows in rows:
        assert status == "ingested" and mpp == pytest.approx(0.5) and case == sid[:12]
        assert n_tiles == n_rows > 20
    # tile idx is 0..n-1 per tiling and every tile lies inside its slide
    bad = _table(store, "SELECT count(*) FROM tiles t JOIN slides s USING (slide_id) "
                        "WHERE t.x < 0 OR t.y < 0 OR t.x + t.size_l0 > s.width OR t.y + t.size_l0 > s.height")
    assert bad == [(0,)]
    idx = _table(store, "SELECT tiling_id, min(idx), max(idx), count(*) FROM tiles GROUP BY 1")
    assert all(lo == 0 and hi == n - 1 for _, lo, hi, n in idx)
    assert _table(store, "SELECT count(*) FROM cohort_slides WHERE cohort = 'syn'") == [(6,)]
    for (qc,) in _table(store, "SELECT qc_path FROM tilings"):
        assert store.resolve(qc).is_file()


def test_reingest_is_idempotent_and_new_tiling_adds(store, synth6):
    ingest(store, synth6.manifest, SPEC, cohort="syn", workers=1, show_progress=False)
    before = _snapshot(store)
    rep = ingest(store, synth6.manifest, SPEC, cohort="syn", workers=1, show_progress=False)
    assert rep.count("skipped") == 6 and rep.count("ingested") == 0
    assert _snapshot(store) == before
    other = TilingSpec(target_mpp=1.0, tile_size=64)
    rep = ingest(store, synth6.manifest, other, workers=1, show_progress=False)
    assert rep.count("ingested") == 6
    assert _table(store, "SELECT count(DISTINCT settings_key), count(*) FROM tilings") == [(2, 12)]
    # 64 px at 1.0 um/px covers the same 128 level-0 px as 128 px at 0.5 um/px
    assert _table(store, "SELECT DISTINCT size_l0 FROM tilings") == [(128,)]
    assert sorted(_table(store, "SELECT DISTINCT tile_size, read_size FROM tilings")) == [(64, 128), (128, 128)]


def test_failures_are_isolated(store, synth6, tmp_path, cli):
    corrupt = tmp_path / "broken.svs"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 1000)
    manifest = tmp_path / "m.csv"
    good = synth6.slides[0].path
    manifest.write_text(f"path,slide_id\n{good},good1\n{tmp_path / 'missing.svs'},missing1\n{corrupt},corrupt1\n")
    r = cli("ingest", manifest, "--case-id", "slide")
    assert r.exit_code != 0
    assert "1 ingested" in r.output and "2 failed" in r.output
    assert "Traceback" not in r.output
    rows = dict((s, (st, err)) for s, st, err in _table(store, "SELECT slide_id, status, error FROM slides"))
    assert rows["good1"][0] == "ingested"
    assert rows["missing1"][0] == "failed" and "not found" in rows["missing1"][1]
    assert rows["corrupt1"][0] == "failed" and rows["corrupt1"][1]
    assert _table(store, "SELECT count(*) FROM tilings WHERE slide_id <> 'good1'") == [(0,)]


@pytest.mark.parametrize("content, words", [
    ("file,slide_id\na.svs,a\n", "no column 'path'"),
    ("path,slide_id\na.svs,x\nb.svs,x\n", "repeat a slide_id"),
    ("", "is empty"),
])
def test_malformed_manifest_refused_before_writing(store, tmp_path, cli, content, words):
    m = tmp_path / "m.csv"
    m.write_text(content)
    before = _snapshot(store)
    r = cli("ingest", m)
    assert r.exit_code != 0 and words in r.output and len(r.output.strip().splitlines()) == 1
    assert _snapshot(store) == before


def test_changed_file_is_reported_not_overwritten(store, synth6, tmp_path):
    a, b = synth6.slides[0].path, synth6.slides[1].path
    work = tmp_path / "slide.tiff"
    shutil.copy(a, work)
    m = tmp_path / "m.csv"
    m.write_text(f"path,slide_id,case_id\n{work},s1,p1\n")
    ingest(store, m, SPEC, workers=1, show_progress=False)
    before = _snapshot(store)
    shutil.copy(b, work)  # a different scan under the same slide_id
    rep = ingest(store, m, SPEC, workers=1, show_progress=False)
    assert rep.count("changed") == 1 and not rep.ok
    assert _snapshot(store) == before


def test_interrupted_ingest_leaves_no_half_slide_and_resumes(store, synth6, monkeypatch):
    import histstore.ingest as mod

    real = mod._register_success
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            real(*args, **kwargs)  # slide, tiling and tiles written ...
            raise KeyboardInterrupt  # ... then killed before commit
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "_register_success", flaky)
    with pytest.raises(KeyboardInterrupt):
        ingest(store, synth6.manifest, SPEC, cohort="syn", workers=1, show_progress=False)
    assert _table(store, "SELECT count(*) FROM slides") == [(2,)]
    assert _table(store, "SELECT count(*) FROM tiles WHERE slide_id NOT IN "
                         "(SELECT slide_id FROM slides)") == [(0,)]
    assert _table(store, "SELECT count(*) FROM tilings") == [(2,)]
    monkeypatch.setattr(mod, "_register_success", real)
    rep = ingest(store, synth6.manifest, SPEC, cohort="syn", workers=1, show_progress=False)
    assert rep.count("skipped") == 2 and rep.count("ingested") == 4
    assert _table(store, "SELECT count(*) FROM cohort_slides") == [(6,)]


def test_real_slide(store, real_slide, cli):
    r = cli("ingest", real_slide, "--cohort", "real", "--case-id", "slide")
    assert r.exit_code == 0, r.output
    (sid, mpp, obj, vendor, w, h), = _table(store, "SELECT slide_id, mpp, objective_power, vendor, width, height FROM slides")
    assert sid == "cmu_small_region" and mpp == pytest.approx(0.499) and obj == 20
    assert vendor == "aperio" and (w, h) == (2220, 2967)
    (n_tiles, area_mm2, size_l0, min_tissue, settings), = _table(
        store, "SELECT n_tiles, tissue_area_mm2, size_l0, min_tissue, settings FROM tilings")
    tile_mm2 = (size_l0 * 0.499 / 1000) ** 2
    # the default (CLAM's rule) keeps tiles touching the tissue: they cover a bit more than it
    assert 1.0 * area_mm2 <= n_tiles * tile_mm2 <= 1.5 * area_mm2
    assert 50 < n_tiles < (w // size_l0) * (h // size_l0)
    assert min_tissue is None and settings["tile_rule"] == "clam-four-pt" and "min_tissue" not in settings
    assert "clam-four-pt" in r.output
    # the old rule, asked for, is a second tiling of the same slide with fewer tiles (the slide
    # keeps the case it was catalogued with: no --case-id needed again)
    assert "--min-tissue goes with --tile-rule min-tissue" in cli("ingest", real_slide, "--min-tissue", "0.5").output
    r = cli("ingest", real_slide, "--tile-rule", "min-tissue", "--min-tissue", "0.5")
    assert r.exit_code == 0 and "min tissue 0.5" in r.output and "1 ingested" in r.output, r.output
    rows = _table(store, "SELECT min_tissue, n_tiles FROM tilings ORDER BY tiling_id")
    assert rows[0] == (None, n_tiles) and rows[1][0] == 0.5 and rows[1][1] < n_tiles


def test_unknown_mpp_needs_assume_mpp(store, tmp_path, cli):
    img = np.full((1024, 1024, 3), 240, np.uint8)
    img[200:800, 200:800] = (200, 80, 160)  # a pink "tissue" square
    path = tmp_path / "nompp.tiff"
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="jpeg")
    m = tmp_path / "m.csv"
    m.write_text(f"path\n{path}\n")
    r = cli("ingest", m, "--case-id", "slide")
    assert r.exit_code != 0 and "--assume-mpp" in r.output
    r = cli("ingest", m, "--assume-mpp", "0.5", "--case-id", "slide")
    assert r.exit_code == 0, r.output
    assert _table(store, "SELECT status, mpp, mpp_source FROM slides") == [("ingested", 0.5, "assumed")]


def test_gdc_sample_sheet_and_folder(store, synth6, tmp_path):
    src = synth6.slides[0].path
    folder = tmp_path / "gdc" / "file-uuid-1"
    folder.mkdir(parents=True)
    name = "TCGA-AB-1234-11A-01-TS1.0a1b2c3d-uuid.tiff"
    shutil.copy(src, folder / name)
    sheet = tmp_path / "gdc" / "gdc_sample_sheet.tsv"
    sheet.write_text("File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\tSample Type\n"
                     f"file-uuid-1\t{name}\tBiospecimen\tSlide Image\tTCGA-LUAD\tTCGA-AB-1234\t"
                     "TCGA-AB-1234-11A\tSolid Tissue Normal\n")
    rep = ingest(store, sheet, SPEC, workers=1, show_progress=False)
    assert rep.count("ingested") == 1
    assert _table(store, "SELECT slide_id, case_id, sample_type FROM slides") == [
        ("TCGA-AB-1234-11A-01-TS1", "TCGA-AB-1234", "Solid Tissue Normal")]
    assert _table(store, "SELECT project FROM cases") == [("TCGA-LUAD",)]
    assert _table(store, "SELECT case_id_source FROM slides") == [("gdc",)]
    rep = ingest(store, tmp_path / "gdc", SPEC, workers=1, show_progress=False)  # folder scan
    assert rep.count("skipped") == 1


def test_bad_options(store, synth6):
    with pytest.raises(InvalidInput):
        ingest(store, synth6.manifest, SPEC, cohort="1bad name")
    with pytest.raises(InvalidInput):
        TilingSpec(tile_size=0)


def _blocks(synth6, tmp_path):
    """The issue's case: two blocks of one patient, non-TCGA names, a manifest with paths only."""
    for name, s in (("patientA_block1.tiff", synth6.slides[0]), ("patientA_block2.tiff", synth6.slides[1])):
        shutil.copy(s.path, tmp_path / name)
    m = tmp_path / "m.csv"
    m.write_text("path\npatientA_block1.tiff\npatientA_block2.tiff\n")
    return m


def test_slides_without_case_ids_are_refused_unless_said(store, synth6, tmp_path, cli):
    m = _blocks(synth6, tmp_path)
    before = _snapshot(store)
    r = cli("ingest", m, "--mpp", "1", "--tile-size", "64")
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1
    assert "no case id" in r.output and "leakage" in r.output and "line 2, line 3" in r.output
    assert "--case-id slide" in r.output
    assert _snapshot(store) == before
    r = cli("ingest", m, "--mpp", "1", "--tile-size", "64", "--case-id", "slide")
    assert r.exit_code == 0, r.output
    assert _table(store, "SELECT slide_id, case_id, case_id_source FROM slides ORDER BY 1") == [
        ("patientA_block1", "patientA_block1", "slide"), ("patientA_block2", "patientA_block2", "slide")]


def test_case_id_sources(synth6, tmp_path):
    from histstore.sources import read_source

    a, b = synth6.slides[0].path, synth6.slides[1].path
    m = tmp_path / "m.csv"
    m.write_text(f"path,slide_id,case_id\n{a},blockA1,patientA\n{b},blockA2,patientA\n")
    assert [(s.case_id, s.case_id_source) for s in read_source(m)] == [("patientA", "manifest")] * 2
    m.write_text(f"path,slide_id\n{a},TCGA-AB-1234-01Z-00-DX1\n{b},TCGA-AB-1234-11Z-00-DX1\n")
    assert [(s.case_id, s.case_id_source) for s in read_source(m)] == [("TCGA-AB-1234", "tcga-barcode")] * 2
    # mixed: case ids for some rows, none (and no barcode) for others - refused, even with --case-id slide
    m.write_text(f"path,slide_id,case_id\n{a},blockA1,patientA\n{b},blockA2,\n")
    for mode in (None, "slide"):
        with pytest.raises(InvalidInput, match=r"1 slide\(s\) have no case id while others have one \(line 3\)"):
            read_source(m, mode)
