"""Export -> import is lossless, and imported rows land on the right tiles."""
import h5py
import numpy as np

from histstore.interop import export_features, import_features

from .conftest import q, slide_tiles, write_h5

S1, S2, S3 = "TCGA-SY-0001-01Z-00-DX1", "TCGA-SY-0001-11Z-00-DX1", "TCGA-SY-0002-01Z-00-DX1"


def test_export_import_round_trip_is_lossless(embedded, tmp_path, run_cli):
    out = tmp_path / "exp"
    res = run_cli(embedded, "features", "export", "1", out, "--format", "h5")
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("*.h5"))
    assert len(files) == 20
    with h5py.File(out / f"{S1}.h5", "r") as f:
        assert f["features"].dtype == np.float16 and f["features"].ndim == 2
        assert f["coords"].dtype == np.int64 and f["coords"].shape[1] == 2
        assert f["coords"].attrs["patch_size"] == 128 and f["coords"].attrs["patch_level"] == 0
        assert f["coords"].attrs["patch_size_level0"] == 128
        assert f.attrs["histstore_embedding_set_id"] == 1 and f.attrs["histstore_slide_id"] == S1
    n_tilings = q(embedded, "SELECT count(*) FROM tilings")[0][0]
    res = run_cli(embedded, "features", "export", "1", out)  # files there: refused, then --force
    assert res.exit_code == 2 and "20 files exist" in res.output and "--force" in res.output
    assert run_cli(embedded, "features", "export", "1", out, "--force").exit_code == 0

    rep = import_features(embedded, out, name="rt", cohort="rt", show_progress=False)
    assert rep.ok and rep.count("imported") == 20 and rep.created
    assert (rep.dim, rep.dtype, rep.source_format) == (512, "float16", "h5")
    assert q(embedded, "SELECT count(*) FROM tilings")[0][0] == n_tilings  # every file matched its tiling
    kind, status, fmt = q(embedded, "SELECT kind, status, source_format FROM embedding_sets WHERE name = 'rt'")[0]
    assert (kind, status, fmt) == ("imported", "complete", "h5")
    for sid in [S1, S2, S3, "TCGA-SY-0010-11Z-00-DX1"]:
        a, xy_a, t_a = slide_tiles(embedded, sid, 1)
        b, xy_b, t_b = slide_tiles(embedded, sid, rep.embedding_set_id)
        assert t_a == t_b and a.dtype == b.dtype and np.array_equal(a, b) and np.array_equal(xy_a, xy_b)
    assert q(embedded, "SELECT count(*) FROM cohort_slides WHERE cohort = 'rt'")[0][0] == 20

    # exporting the imported set gives the same bytes of features and coords
    out2 = tmp_path / "exp2"
    export_features(embedded, "rt", out2, show_progress=False)
    for f1 in files[:5]:
        with h5py.File(f1, "r") as a, h5py.File(out2 / f1.name, "r") as b:
            assert np.array_equal(a["features"][...], b["features"][...])
            assert np.array_equal(a["coords"][...], b["coords"][...])

    # a second run skips what is there
    again = import_features(embedded, out, name="rt", cohort="rt", show_progress=False)
    assert again.count("skipped") == 20 and again.count("imported") == 0 and not again.created


def test_shuffled_rows_are_aligned_to_tile_idx(embedded, tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "clam"
    d.mkdir()
    truth = {}
    for sid, attrs in [
        (S1, {"patch_size": 128, "patch_level": 0}),
        # CLAM at level 1 (downsample 4 on the synthetic pyramid): 32 px there = 128 at level 0
        (S2, {"patch_size": 32, "patch_level": 1, "downsample": np.array([4.0, 4.0])}),
        # no downsample attribute: the slide file's pyramid says level 1 is 4x
        (S3, {"patch_size": 32, "patch_level": 1}),
    ]:
        feats, xy, tiling_id = slide_tiles(embedded, sid)
        feats = feats.astype(np.float32) + rng.normal(size=feats.shape).astype(np.float32)
        perm = rng.permutation(len(xy))
        write_h5(d / f"{sid}.h5", feats[perm], xy[perm], attrs)
        truth[sid] = (feats, tiling_id)
    rep = import_features(embedded, d, name="clam", cohort="syn20", show_progress=False)
    assert rep.ok, [o.line() for o in rep.outcomes]
    assert rep.dtype == "float32"
    for sid, (feats, tiling_id) in truth.items():
        got, _, got_tiling = slide_tiles(embedded, sid, rep.embedding_set_id)
        assert got_tiling == tiling_id  # matched the ingest's grid tiling
        assert np.array_equal(got, feats)  # row i = tile idx i
    assert all(o.tiling == "matched grid tiling" for o in rep.outcomes)


def test_partial_coverage_gets_its_own_imported_tiling(embedded, tmp_path):
    from histstore.embeddings.bags import load_bags
    from histstore.embeddings.sets import resolve_set

    feats, xy, grid_tiling = slide_tiles(embedded, S1)
    keep = np.arange(0, len(xy), 2)[::-1]  # every other tile, reversed order
    d = tmp_path / "sub"
    d.mkdir()
    write_h5(d / f"{S1}.h5", feats[keep], xy[keep], {"patch_size": 128, "patch_level": 0, "overlap": 0})
    rep = import_features(embedded, d, name="sub", cohort="sub", show_progress=False)
    (o,) = rep.outcomes
    assert o.status == "imported" and o.tiling == "new imported tiling" and o.tiling_id != grid_tiling
    assert f"{len(keep)} of {len(keep)} corners are tiles of tiling {grid_tiling}" in o.message
    kind, n_tiles, size_l0, settings = q(embedded, "SELECT kind, n_tiles, size_l0, settings FROM tilings "
                                                   "WHERE tiling_id = ?", o.tiling_id)[0]
    assert (kind, n_tiles, size_l0) == ("imported", len(keep), 128)
    rows = np.array(q(embedded, "SELECT idx, x, y FROM tiles WHERE tiling_id = ? ORDER BY idx", o.tiling_id))
    assert np.array_equal(rows[:, 0], np.arange(len(keep)))
    assert np.array_equal(rows[:, 1:], xy[keep])  # idx = the file's row order
    with embedded.read() as conn:
        (bag,) = load_bags(embedded, conn, resolve_set(conn, "sub"), [S1], dtype=np.float16)
    assert np.array_equal(bag.features, feats[keep]) and len(bag.tile_ids) == len(keep)

    # the same corners again (another order, another set): the imported tiling is reused
    d2 = tmp_path / "sub2"
    d2.mkdir()
    write_h5(d2 / f"{S1}.h5", feats[keep[::-1]], xy[keep[::-1]], {"patch_size": 128, "patch_level": 0})
    rep2 = import_features(embedded, d2, name="sub2", cohort="sub", show_progress=False)
    assert rep2.outcomes[0].tiling_id == o.tiling_id and rep2.outcomes[0].tiling == "matched imported tiling"
    got, _, _ = slide_tiles(embedded, S1, rep2.embedding_set_id)
    assert np.array_equal(got, feats[keep])


def test_mapping_csv_names_the_slides(embedded, tmp_path):
    feats, xy, tiling_id = slide_tiles(embedded, S1)
    d = tmp_path / "m"
    d.mkdir()
    write_h5(d / "slide_a.h5", feats, xy, {"patch_size": 128, "patch_level": 0})
    write_h5(d / "other.h5", feats, xy, {"patch_size": 128, "patch_level": 0})
    m = tmp_path / "map.csv"
    m.write_text("file,slide_id\nslide_a.h5," + S1 + "\n")
    rep = import_features(embedded, d, name="mapped", cohort="m", mapping=m, show_progress=False)
    assert rep.ok and rep.count("imported") == 1 and rep.ignored_files == 1
    assert rep.outcomes[0].slide_id == S1 and rep.outcomes[0].tiling_id == tiling_id
