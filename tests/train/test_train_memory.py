"""`histstore train --memory-budget`: bags resident or streamed from zarr, same results; a budget
too small for a bag refused in one line; a gene sweep reads the cohort's bags once."""
import json

import pytest

from histstore.errors import InvalidInput
from histstore.train import TrainSettings, train


def _q(store, sql, *params):
    with store.read() as conn:
        return conn.exec_driver_sql(sql, params).all()


def _settings(**kw):
    base = dict(cohort="syn20", task="tumor", folds=3, seed=0, epochs=3, patience=None, device="cpu")
    return TrainSettings(**{**base, **kw})


def _bag_source(store, run_id):
    (settings,), = _q(store, "SELECT settings FROM runs WHERE run_id = ?", run_id)
    return (json.loads(settings) if isinstance(settings, str) else settings)["bag_source"]


def test_streamed_and_resident_runs_give_identical_results(embedded):
    (tiles, dim), = _q(embedded, "SELECT sum(n_rows), max(dim) FROM embedding_arrays")
    largest, = _q(embedded, "SELECT max(n_rows) FROM embedding_arrays")[0]
    a = train(embedded, _settings(), show_progress=False)
    # room for a few bags but not the cohort: streamed from zarr
    b = train(embedded, _settings(memory_budget=str(int(largest * dim * 6 * 3))), show_progress=False)
    assert _bag_source(embedded, a.run_id)["mode"] == "resident"
    assert _bag_source(embedded, b.run_id)["mode"] == "streamed"
    assert any("streamed" in n for n in b.notes)
    for q in ("SELECT fold, subset, name, step, value FROM metrics WHERE run_id = ? "
              "AND name <> 'seconds_per_epoch' ORDER BY ALL",
              "SELECT fold, slide_id, subset, score FROM predictions WHERE run_id = ? ORDER BY ALL",
              "SELECT fold, tile_id, score FROM attention WHERE run_id = ? ORDER BY ALL"):
        assert _q(embedded, q, a.run_id) == _q(embedded, q, b.run_id)
    assert len(_q(embedded, "SELECT tile_id FROM attention WHERE run_id = ?", b.run_id)) == tiles


def test_budget_too_small_for_a_bag_is_refused_in_one_line(embedded, cli):
    (sid, n), = _q(embedded, "SELECT slide_id, n_rows FROM embedding_arrays ORDER BY n_rows DESC, slide_id "
                             "LIMIT 1")
    with pytest.raises(InvalidInput, match=rf"too small for bag {sid} \({n} tiles"):
        train(embedded, _settings(memory_budget="1kB"), show_progress=False)
    with pytest.raises(InvalidInput, match="not a size"):
        train(embedded, _settings(memory_budget="plenty"), show_progress=False)
    from click.testing import CliRunner

    from histstore.cli.main import main

    r = CliRunner().invoke(main, ["--store", str(embedded.root), "train", "--cohort", "syn20", "--task",
                                  "tumor", "--memory-budget", "1kB"])
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1 and sid in r.output
    r = CliRunner().invoke(main, ["--store", str(embedded.root), "train", "--cohort", "syn20", "--task",
                                  "de", "--genes", "TP53,MYC", "--memory-budget", "1kB"])
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1 and sid in r.output
    assert _q(embedded, "SELECT count(*) FROM runs WHERE kind = 'train'") == [(0,)]


@pytest.mark.parametrize("budget", [None, "2MB"])
def test_gene_sweep_reads_the_cohort_once(embedded, monkeypatch, budget):
    from histstore.embeddings.bags import BagIndex

    reads = []
    real = BagIndex.read

    def counting(self, set_dir, i):
        reads.append(self.slide_ids[i])
        return real(self, set_dir, i)

    monkeypatch.setattr(BagIndex, "read", counting)
    rep = train(embedded, _settings(task="de", genes=("TP53", "MYC", "EGFR"), epochs=1, folds=2,
                                    memory_budget=budget), show_progress=False)
    assert rep.status == "finished" and len(rep.children) == 3
    (n_slides,), = _q(embedded, "SELECT count(*) FROM embedding_arrays")
    if budget is None:  # resident: every bag read once, for all genes
        assert len(reads) == n_slides and len(set(reads)) == n_slides
    else:  # streamed: read as steps need them, more than once, never packed
        assert _bag_source(embedded, rep.children[0].run_id)["mode"] == "streamed"
        assert len(reads) > n_slides
