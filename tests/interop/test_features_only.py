"""A cohort that exists only as imported features: train, show, export predictions/attention."""
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from histstore.interop import ATTENTION_COLUMNS, PREDICTION_COLUMNS, export_attention, export_predictions
from histstore.train import TrainSettings, train

from .conftest import q, write_h5

DIM, N_TILES = 16, 24


@pytest.fixture
def features_only(store, tmp_path, run_cli):
    """10 TCGA-named cases x (tumour, normal) slide as CLAM h5 files with a planted signal:
    a third of a tumour slide's tiles are shifted along the first 4 feature dims."""
    rng = np.random.default_rng(7)
    d = tmp_path / "clam"
    d.mkdir()
    labels = ["slide_id,tumor"]
    xy = np.stack(np.meshgrid(np.arange(6) * 224, np.arange(4) * 224), -1).reshape(-1, 2).astype(np.int64)
    for case in range(1, 11):
        for code, tumour in (("01Z", True), ("11Z", False)):
            sid = f"TCGA-FO-{case:04d}-{code}-00-DX1"
            f = rng.normal(size=(N_TILES, DIM)).astype(np.float32)
            if tumour:
                f[: N_TILES // 3, :4] += 3.0
            perm = rng.permutation(N_TILES)
            write_h5(d / f"{sid}.h5", f[perm], xy[perm], {"patch_size": 224, "patch_level": 0})
            labels.append(f"{sid},{'tumor' if tumour else 'normal'}")
    res = run_cli(store, "features", "import", d, "--name", "uni-like", "--cohort", "fo", "--register-slides")
    assert res.exit_code == 0, res.output
    assert "20 slides registered without pixels" in res.output
    lab = tmp_path / "labels.csv"
    lab.write_text("\n".join(labels) + "\n")
    from histstore.labels import import_labels

    import_labels(store, lab, "tumor")
    return store


def test_features_only_cohort_trains_and_exports(features_only, tmp_path, run_cli):
    store = features_only
    assert q(store, "SELECT count(*), count(DISTINCT case_id) FROM slides WHERE status = 'registered' "
                    "AND path IS NULL")[0] == (20, 10)
    assert q(store, "SELECT count(*) FROM tilings WHERE kind = 'imported'")[0][0] == 20

    rep = train(store, TrainSettings(cohort="fo", task="tumor", folds=5, epochs=15, patience=None, lr=1e-3,
                                     device="cpu"), show_progress=False)
    assert rep.status == "finished" and rep.n_bags == 20
    assert rep.summary["auc"][0] >= 0.8, rep.summary  # the planted shift is found
    res = run_cli(store, "runs", "show", rep.run_id)
    assert res.exit_code == 0 and "finished" in res.output and "auc" in res.output

    # predictions: parquet (from the suffix) and csv, with the documented columns
    p = export_predictions(store, rep.run_id, tmp_path / "pred.parquet")
    df = pq.read_table(p.path).to_pandas()
    assert tuple(df.columns) == PREDICTION_COLUMNS and p.fmt == "parquet" and len(df) == p.n_rows
    test = df[df.subset == "test"]
    assert len(test) == 20 and set(test.slide_id) == {r[0] for r in q(store, "SELECT slide_id FROM slides")}
    assert (test.case_id == test.slide_id.str[:12]).all() and test.label.isin(["tumor", "normal"]).all()
    res = run_cli(store, "export", "predictions", rep.run_id, tmp_path / "pred.csv")
    assert res.exit_code == 0, res.output
    csv = pd.read_csv(tmp_path / "pred.csv")
    assert tuple(csv.columns) == PREDICTION_COLUMNS and len(csv) == len(df)
    assert np.allclose(csv.score.to_numpy(), df.score.to_numpy())
    res = run_cli(store, "export", "predictions", rep.run_id, tmp_path / "pred.csv")  # exists: refused
    assert res.exit_code == 2 and "exists" in res.output and "--force" in res.output
    assert run_cli(store, "export", "predictions", rep.run_id, tmp_path / "pred.csv", "--force").exit_code == 0

    # attention: every test tile once, coordinates of the imported tiles, normalised in-slide score
    a = export_attention(store, rep.run_id, tmp_path / "att.parquet")
    att = pq.read_table(a.path).to_pandas()
    assert tuple(att.columns) == ATTENTION_COLUMNS and len(att) == 20 * N_TILES
    g = att.groupby(["run", "fold", "slide_id"])
    assert np.allclose(g.score_norm.max(), 1.0) and np.allclose(g.score_norm.min(), 0.0)
    assert (att[att.rank_in_slide == 1].score_norm == 1.0).all()
    tiles = pd.DataFrame(q(store, "SELECT tile_id, x, y, size_l0 FROM tiles"), columns=["tile_id", "x", "y", "s"])
    m = att.merge(tiles, on="tile_id")
    assert (m.x_x == m.x_y).all() and (m.y_x == m.y_y).all() and (m.size_l0 == 224).all()
    res = run_cli(store, "export", "attention", rep.run_id, tmp_path / "att.tsv")
    assert res.exit_code == 2 and "suffix" in res.output
    res = run_cli(store, "export", "attention", rep.run_id, tmp_path / "att.tsv", "--format", "csv")
    assert res.exit_code == 0 and len(pd.read_csv(tmp_path / "att.tsv")) == len(att)

    # commands that need pixels say so
    from histstore.errors import EmptyCohort
    from histstore.embed import embed

    with pytest.raises(EmptyCohort, match="no ingested slides"):
        embed(store, "resnet18", "fo", allow_random=True, device="cpu", show_progress=False)


def test_export_of_a_run_without_results_says_why(features_only, run_cli):
    from histstore.runs import create_run

    with features_only.write() as conn:
        rid = create_run(conn, kind="train", settings={}, cohort="fo", task="tumor", model="mean")
    res = run_cli(features_only, "export", "attention", rid, "x.parquet")
    assert res.exit_code == 1 and f"run {rid} has no attention (status running)" in res.output
    res = run_cli(features_only, "export", "predictions", 999, "x.parquet")
    assert res.exit_code == 1 and "no run 999" in res.output
