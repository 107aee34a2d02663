"""Two jobs on one store at once both finish correctly: each holds the catalog only while it
commits, so the other (and any reader) gets its turn. embed of cohort A with ingest of cohort
B; two train runs. Results equal those of the same jobs run alone. One job of each pair runs
in another process (the CLI), the other in this process at the same time."""
from .conftest import EMBED_CLI, SPEC, TRAIN, TRAIN_CLI, assert_verify_clean, copy_store, histstore_process, q


def _together(store, args, job):
    """Start `histstore ARGS` in another process, run `job()` here meanwhile; both must succeed."""
    proc = histstore_process(store, *args)
    try:
        job()
    finally:
        proc.join(300)
    assert proc.exitcode == 0


def test_embed_of_one_cohort_while_another_is_ingested(tmp_path, cohort, stages):
    store = copy_store(stages["ingested"], tmp_path)
    # cohort B: the same files under other slide ids (one case each, said explicitly)
    manifest_b = tmp_path / "b.csv"
    manifest_b.write_text("path,slide_id,case_id\n" + "".join(
        f"{s.path},B-{i},patient-B{i}\n" for i, s in enumerate(cohort.slides)))
    from histstore.ingest import ingest
    from histstore.wsi.tiling import TilingSpec

    _together(store, EMBED_CLI,
              lambda: ingest(store, manifest_b, TilingSpec(**SPEC), cohort="b", workers=1, show_progress=False))
    sql = "SELECT slide_id, checksum FROM embedding_arrays ORDER BY 1"
    assert q(store, sql) == q(stages["embedded"], sql)  # the same arrays as embed alone
    tiles = ("SELECT c.cohort, t.idx, t.x, t.y FROM tiles t JOIN cohort_slides c USING (slide_id) "
             "ORDER BY 1, t.slide_id, 2")
    rows = q(store, tiles)
    assert [r[1:] for r in rows if r[0] == "b"] == [r[1:] for r in rows if r[0] == "c"]
    assert_verify_clean(store)


def test_two_train_runs_at_once(tmp_path, stages):
    store = copy_store(stages["embedded"], tmp_path)
    from histstore.train import TrainSettings, train

    _together(store, TRAIN_CLI, lambda: train(store, TrainSettings(**TRAIN), show_progress=False))
    runs = [r[0] for r in q(store, "SELECT run_id FROM runs WHERE kind = 'train' AND status = 'finished'")]
    assert len(runs) == 2
    sql = "SELECT fold, slide_id, subset, score FROM predictions WHERE run_id = ? ORDER BY 1, 2, 3"
    want = q(stages["results"], sql, stages["train_run"])  # the same seed alone
    assert q(store, sql, runs[0]) == want and q(store, sql, runs[1]) == want
    assert_verify_clean(store)
