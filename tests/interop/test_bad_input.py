"""Bad files: one line each, the others imported, nothing half-registered."""
import numpy as np
import pytest

from histstore.errors import InvalidInput
from histstore.interop import import_features

from .conftest import q, slide_tiles, write_h5

L0 = {"patch_size": 128, "patch_level": 0}


def _slides(store, n):
    return [r[0] for r in q(store, "SELECT slide_id FROM slides ORDER BY slide_id LIMIT ?", n)]


def _nothing_registered(store, slide_id, set_name):
    arrays = q(store, "SELECT count(*) FROM embedding_arrays a JOIN embedding_sets e USING (embedding_set_id) "
                      "WHERE e.name = ? AND a.slide_id = ?", set_name, slide_id)[0][0]
    tilings = q(store, "SELECT count(*) FROM tilings WHERE slide_id = ? AND kind = 'imported'", slide_id)[0][0]
    return arrays == 0 and tilings == 0


def test_each_bad_file_gets_one_line_and_the_rest_is_imported(embedded, tmp_path, run_cli):
    sids = _slides(embedded, 10)
    d = tmp_path / "in"
    d.mkdir()
    data = {sid: slide_tiles(embedded, sid) for sid in sids}
    good = sids[0]
    f, xy, _ = data[good]
    write_h5(d / f"{good}.h5", f, xy, L0)
    expected = {}

    def bad(i, msg, features=None, coords=None, attrs=L0, **kw):
        sid = sids[i]
        feats, xy, _ = data[sid]
        write_h5(d / f"{sid}.h5", feats if features is None else features, xy if coords is None else coords,
                 attrs, **kw)
        expected[sid] = msg

    f1, xy1, _ = data[sids[1]]
    nan = f1.astype(np.float32)
    nan[3, 7] = np.nan
    bad(1, "1 of %d rows hold NaN or inf (row 3)" % len(xy1), features=nan)
    f2, xy2, _ = data[sids[2]]
    bad(2, "feature dim 100 differs from the set's dim 512", features=f2[:, :100])
    f3, xy3, _ = data[sids[3]]
    out = xy3.copy()
    out[5] = (4000, 16)
    bad(3, "1 coords lie outside the slide (2048 x 2048): (4000, 16) at row 5", coords=out)
    f4, xy4, _ = data[sids[4]]
    dup = xy4.copy()
    dup[2] = dup[1]
    bad(4, f"1 duplicate coords: ({dup[1][0]}, {dup[1][1]}) at rows 1, 2", coords=dup)
    f5, xy5, _ = data[sids[5]]
    bad(5, f"features have {len(xy5)} rows but coords have {len(xy5) - 1}", coords=xy5[:-1])
    bad(6, "empty: no feature rows", features=np.zeros((0, 512), np.float16), coords=np.zeros((0, 2), np.int64))
    (d / f"{sids[7]}.h5").write_bytes(b"this is not an HDF5 file")
    expected[sids[7]] = "unreadable (OSError: Unable to"
    write_h5(d / f"{sids[8]}.h5", data[sids[8]][0], None)
    expected[sids[8]] = "no 'coords' dataset"
    bad(9, "no 'features' dataset (datasets: coords, feats)", features_name="feats")

    res = run_cli(embedded, "features", "import", d, "--name", "ext", "--cohort", "ext")
    assert res.exit_code == 1, res.output
    for sid, msg in expected.items():
        line = next((ln for ln in res.output.splitlines() if ln.startswith(f"failed: {sid}.h5: ")), None)
        assert line is not None and msg in line, (sid, msg, res.output)
        assert _nothing_registered(embedded, sid, "ext"), sid
    assert "9 of 10 files failed" in res.output
    got = {r[0] for r in q(embedded, "SELECT a.slide_id FROM embedding_arrays a JOIN embedding_sets e "
                                     "USING (embedding_set_id) WHERE e.name = 'ext'")}
    assert got == {good}
    assert q(embedded, "SELECT status FROM embedding_sets WHERE name = 'ext'")[0][0] == "partial"
    assert {r[0] for r in q(embedded, "SELECT slide_id FROM cohort_slides WHERE cohort = 'ext'")} == got
    set_dir = embedded.root / "embeddings.zarr" / "ext"
    assert sorted(p.name for p in set_dir.iterdir() if not p.name.startswith(".")) == sorted(got)
    assert not any((set_dir / ".partial").iterdir())

    # fix one file and run again: only it is imported, the set stays partial until all are fixed
    f1, xy1, _ = data[sids[1]]
    write_h5(d / f"{sids[1]}.h5", f1, xy1, L0)
    res = run_cli(embedded, "features", "import", d, "--name", "ext", "--cohort", "ext")
    assert res.exit_code == 1 and "1 files imported" in res.output and "1 already there" in res.output
    assert "8 of 10 files failed" in res.output


def test_option_contradicting_the_file_fails_that_file(embedded, tmp_path):
    sid = _slides(embedded, 1)[0]
    f, xy, _ = slide_tiles(embedded, sid)
    d = tmp_path / "c"
    d.mkdir()
    write_h5(d / f"{sid}.h5", f, xy, {"patch_size": 128, "patch_level": 0})
    rep = import_features(embedded, d, name="c", cohort="c", patch_size=256, show_progress=False)
    assert rep.failures[0].message == "--patch-size 256 contradicts the file's patch_size 128"
    # every file failed: no set, no cohort, no folder left behind
    assert rep.embedding_set is None
    assert q(embedded, "SELECT count(*) FROM embedding_sets WHERE name = 'c'")[0][0] == 0
    assert q(embedded, "SELECT count(*) FROM cohorts WHERE name = 'c'")[0][0] == 0
    assert not (embedded.root / "embeddings.zarr" / "c").exists()


def test_no_patch_size_anywhere_is_refused_per_file(embedded, tmp_path):
    sid = _slides(embedded, 1)[0]
    f, xy, _ = slide_tiles(embedded, sid)
    d = tmp_path / "n"
    d.mkdir()
    write_h5(d / f"{sid}.h5", f, xy)  # CLAM feature files carry no attributes
    rep = import_features(embedded, d, name="n", cohort="n", show_progress=False)
    assert "no patch size" in rep.failures[0].message and "--patch-size" in rep.failures[0].message
    rep = import_features(embedded, d, name="n", cohort="n", patch_size=128, show_progress=False)
    assert rep.ok and rep.outcomes[0].tiling == "matched grid tiling"


def test_unknown_slides_are_refused_with_a_list(embedded, tmp_path, run_cli):
    d = tmp_path / "u"
    d.mkdir()
    for name in ("NEW-1", "NEW-2"):
        write_h5(d / f"{name}.h5", np.ones((3, 4), np.float32), [[0, 0], [256, 0], [0, 256]], L0)
    n_sets = q(embedded, "SELECT count(*) FROM embedding_sets")[0][0]
    with pytest.raises(InvalidInput, match="2 of 2 files name slides that are not in the catalog: NEW-1, NEW-2"):
        import_features(embedded, d, name="u", cohort="u", show_progress=False)
    res = run_cli(embedded, "features", "import", d, "--name", "u", "--cohort", "u")
    assert res.exit_code == 2 and "--register-slides" in res.output
    assert q(embedded, "SELECT count(*) FROM embedding_sets")[0][0] == n_sets
    assert q(embedded, "SELECT count(*) FROM slides WHERE slide_id LIKE 'NEW-%'")[0][0] == 0
