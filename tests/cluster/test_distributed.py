"""ingest and embed on Dask distributed give what `--cluster none` gives; a worker killed
mid-job loses nothing; an interrupted run resumes; workers that cannot see the store and bad
--cluster values are refused in one line."""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from histstore.embed import embed
from histstore.embeddings import arrays
from histstore.embeddings.sets import resolve_set
from histstore.errors import InvalidInput
from histstore.ingest import ingest
from histstore.store import Store
from histstore.wsi.tiling import TilingSpec

from .conftest import FAULT_PLUGIN, address_of, arm_fault

SPEC = TilingSpec(target_mpp=1.0, tile_size=64)
EMBED = dict(allow_random=True, batch_size=16, workers=None, precision="fp32", show_progress=False,
             stain_norm="macenko", stain_tiles=16)
N_SLIDES = 3
SLIDE_COLS = "slide_id, case_id, path, fingerprint, file_size, width, height, mpp, status"
TILING_COLS = "slide_id, settings_key, read_level, read_size, size_l0, n_tiles, tissue_area_mm2, qc_path"


def rows(store: Store, sql: str):
    with store.read() as conn:
        return conn.exec_driver_sql(sql).all()


def copy_store(template: Store, dest) -> Store:
    shutil.copytree(template.root, dest)
    return Store(dest)


def _manifest(synth6, folder):
    m = folder / "slides.csv"
    m.write_text("path,slide_id\n" + "".join(f"{s.path},{s.slide_id}\n" for s in synth6.slides[:N_SLIDES]))
    return m


@pytest.fixture(scope="module")
def manifest(synth6, tmp_path_factory):
    return _manifest(synth6, tmp_path_factory.mktemp("manifest"))


@pytest.fixture(scope="module")
def ingested(manifest, tmp_path_factory):
    """Slides ingested the usual way (--cluster none), not embedded."""
    store, _ = Store.init(tmp_path_factory.mktemp("ingested") / "store")
    ingest(store, manifest, SPEC, cohort="syn", workers=1, show_progress=False)
    return store


@pytest.fixture(scope="module")
def reference(ingested, tmp_path_factory):
    """`ingested` embedded in this process (--cluster none): the arrays to match."""
    store = copy_store(ingested, tmp_path_factory.mktemp("ref") / "store")
    rep = embed(store, "resnet18", "syn", **EMBED)
    assert rep.n_embedded == N_SLIDES
    return store


def embedded_arrays(store: Store) -> dict[str, np.ndarray]:
    with store.read() as conn:
        info = resolve_set(conn, 1)
        slides = [r[0] for r in conn.exec_driver_sql("SELECT slide_id FROM embedding_arrays").all()]
    return {s: arrays.read_array(info.directory(store), s) for s in slides}


def assert_same_embeddings(store: Store, reference: Store) -> None:
    got, want = embedded_arrays(store), embedded_arrays(reference)
    assert sorted(got) == sorted(want) and len(got) == N_SLIDES
    for s in want:
        assert got[s].shape == want[s].shape and got[s].dtype == np.float16
        # float16 storage: equal, or one rounding step apart where float32 sums differ
        assert np.allclose(got[s].astype(np.float32), want[s].astype(np.float32), rtol=2e-3, atol=2e-3), s
        assert np.abs(got[s].astype(np.float32)).sum() > 0
    q = ("SELECT a.slide_id, a.tiling_id, a.n_rows, a.dim, a.status, s.method, s.stain_matrix, "
         "s.max_concentrations, s.tiles_sampled, s.n_tiles, s.tiles_fallback, s.note FROM embedding_arrays a "
         "JOIN slide_stain s USING (embedding_set_id, slide_id) ORDER BY 1")
    a, b = rows(store, q), rows(reference, q)
    assert len(a) == N_SLIDES and [r[:6] + r[8:] for r in a] == [r[:6] + r[8:] for r in b]
    for ra, rb in zip(a, b):  # the same per-slide stain fit
        assert np.allclose(np.array(ra[6], float), np.array(rb[6], float), atol=1e-5)
    assert rows(store, "SELECT status FROM embedding_sets") == [("complete",)]


def assert_verify_clean(store: Store) -> None:
    from histstore.verify import verify

    rep = verify(store, show_progress=False)
    assert rep.ok, [p.line() for p in rep.problems]


def wait_empty(folder, timeout: float = 60) -> list:
    """What is left in `folder` once it is empty or `timeout` has passed (a task cancelled
    while running still runs to its end on its worker, then removes its array)."""
    deadline = time.monotonic() + timeout
    while (left := list(folder.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_ingest_on_scheduler_and_worker_subprocesses_equals_none(ingested, manifest, subprocess_cluster, tmp_path):
    store, _ = Store.init(tmp_path / "store")
    rep = ingest(store, manifest, SPEC, cohort="syn", cluster=subprocess_cluster, show_progress=False)
    assert rep.count("ingested") == N_SLIDES and rep.ok
    for q in (f"SELECT {SLIDE_COLS} FROM slides ORDER BY 1", f"SELECT {TILING_COLS} FROM tilings ORDER BY 1",
              "SELECT slide_id, idx, x, y, size_l0, tissue_fraction FROM tiles ORDER BY 1, 2",
              "SELECT cohort, slide_id FROM cohort_slides ORDER BY 2"):
        got, want = rows(store, q), rows(ingested, q)
        assert got == want and len(got) >= N_SLIDES, q
    assert not list(store.root.glob(".histstore-cluster-check-*"))  # the token is removed
    # run again: everything is skipped, nothing is submitted twice
    again = ingest(store, manifest, SPEC, cohort="syn", cluster=subprocess_cluster, show_progress=False)
    assert again.count("skipped") == N_SLIDES


def test_embed_on_a_local_cluster_equals_none(ingested, reference, local_cluster, tmp_path):
    store = copy_store(ingested, tmp_path / "store")
    rep = embed(store, "resnet18", "syn", cluster=address_of(local_cluster), **EMBED)
    assert rep.n_embedded == N_SLIDES and rep.n_tiles == rows(store, "SELECT count(*) FROM tiles")[0][0]
    assert_same_embeddings(store, reference)
    assert rows(store, "SELECT kind, status, progress_done FROM runs") == [("embed", "finished", N_SLIDES)]
    assert_verify_clean(store)


def test_a_worker_killed_mid_embed_loses_nothing(ingested, reference, local_cluster, tmp_path):
    from histstore import faults

    store = copy_store(ingested, tmp_path / "store")
    victim = rows(store, "SELECT slide_id FROM slides ORDER BY 1")[1][0]
    marker = tmp_path / "killed-once"
    # every worker is armed; the marker file lets only the first one to reach the slide die
    local_cluster.run(faults.configure_once, f"embed.worker_slide/{victim}", str(marker))
    pids_before = set(local_cluster.run(lambda: __import__("os").getpid()).values())
    try:
        rep = embed(store, "resnet18", "syn", cluster=address_of(local_cluster), **EMBED)
    finally:
        local_cluster.run(faults.configure, None)
    assert marker.exists()  # a worker really died on the victim slide ...
    pids_after = set(local_cluster.run(lambda: __import__("os").getpid()).values())
    assert pids_after != pids_before  # ... and its nanny started a new one
    assert rep.n_embedded == N_SLIDES  # ... which the slide was retried on
    assert_same_embeddings(store, reference)
    assert_verify_clean(store)  # the dead worker's array under .partial/ was cleared


def test_a_slide_that_kills_every_worker_is_recorded_failed_and_the_rest_goes_on(manifest, synth6, local_cluster,
                                                                               tmp_path):
    from histstore import faults

    store, _ = Store.init(tmp_path / "store")
    deadly = synth6.slides[0]
    local_cluster.register_plugin(arm_fault(f"ingest.worker_slide/{deadly.path.name}"))
    try:
        rep = ingest(store, manifest, SPEC, cohort="syn", cluster=address_of(local_cluster), show_progress=False)
    finally:
        local_cluster.unregister_worker_plugin(FAULT_PLUGIN)
        local_cluster.run(faults.configure, None)
    failed = [o for o in rep.outcomes if o.status == "failed"]
    assert [o.slide_id for o in failed] == [deadly.slide_id] and "died" in failed[0].message
    assert rep.count("ingested") == N_SLIDES - 1
    assert rows(store, f"SELECT status FROM slides WHERE slide_id = '{deadly.slide_id}'") == [("failed",)]
    again = ingest(store, manifest, SPEC, cohort="syn", cluster=address_of(local_cluster), show_progress=False)
    assert again.count("ingested") == 1 and again.count("skipped") == N_SLIDES - 1  # resumes


def test_interrupted_distributed_embed_resumes(ingested, reference, subprocess_cluster, tmp_path, monkeypatch):
    """On the scheduler + worker subprocesses: Ctrl-C while registering the second slide."""
    import histstore.embed as embed_module

    store = copy_store(ingested, tmp_path / "store")
    real = embed_module._register_result
    calls = {"n": 0}

    def ctrl_c_on_second(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(embed_module, "_register_result", ctrl_c_on_second)
    with pytest.raises(KeyboardInterrupt):
        embed(store, "resnet18", "syn", cluster=subprocess_cluster, **EMBED)
    monkeypatch.setattr(embed_module, "_register_result", real)
    assert rows(store, "SELECT count(*) FROM embedding_arrays") == [(1,)]
    assert rows(store, "SELECT status FROM runs") == [("interrupted",)]
    with store.read() as conn:
        set_dir = resolve_set(conn, 1).directory(store)
    assert wait_empty(set_dir / arrays.PARTIAL_DIR) == []  # nothing left for nobody to register
    assert_verify_clean(store)
    rep = embed(store, "resnet18", "syn", cluster=subprocess_cluster, **EMBED)
    assert rep.n_skipped == 1 and rep.n_embedded == N_SLIDES - 1
    assert_same_embeddings(store, reference)
    assert_verify_clean(store)


def test_features_import_on_a_local_cluster_equals_none(ingested, reference, local_cluster, tmp_path):
    """Files exported from the reference set, imported with and without a cluster: the same
    rows (matched to the grid tiling) and the same arrays."""
    from histstore.interop import import_features
    from histstore.interop.exporter import export_features

    export_features(reference, 1, tmp_path / "h5")
    results = {}
    for where in ("none", address_of(local_cluster)):
        store = copy_store(ingested, tmp_path / f"store-{len(results)}")
        rep = import_features(store, tmp_path / "h5", name="imp", cohort="imp", cluster=where, show_progress=False)
        assert rep.ok and rep.count("imported") == N_SLIDES
        assert {o.tiling for o in rep.outcomes} == {"matched grid tiling"}
        results[where] = (rows(store, "SELECT slide_id, tiling_id, n_rows, dim, checksum FROM embedding_arrays "
                                      "ORDER BY 1"), embedded_arrays(store), store)
    (rows_a, arr_a, _), (rows_b, arr_b, dist) = results.values()
    assert rows_a == rows_b and len(rows_a) == N_SLIDES
    assert all(np.array_equal(arr_a[s], arr_b[s]) for s in arr_a)
    assert_verify_clean(dist)


def test_a_worker_that_cannot_see_the_store_is_named(manifest, tmp_path):
    """Simulated: the worker's check is told (env var) that its view of the file system differs."""
    import logging

    from distributed import Client, LocalCluster

    store, _ = Store.init(tmp_path / "store")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR,
                      env={"HISTSTORE_FAULT": "cluster.store_hidden"}) as cluster, \
            Client(cluster, timeout=60) as client:
        worker = next(iter(client.scheduler_info()["workers"]))
        with pytest.raises(InvalidInput, match="cannot see the store") as err:
            ingest(store, manifest, SPEC, cohort="syn", cluster=client.scheduler.address, show_progress=False)
    assert worker in str(err.value) and "\n" not in str(err.value)
    assert rows(store, "SELECT count(*) FROM slides") == [(0,)]
    assert not list(store.root.glob(".histstore-cluster-check-*"))


@pytest.mark.parametrize("bad", ["lcoal", "tcp://host", "tcp://host:99999", "http://h:8786", ""])
def test_bad_cluster_values_are_one_line_errors(bad):
    from histstore.cluster import parse_cluster

    with pytest.raises(InvalidInput, match="--cluster must be none, local, tcp://HOST:PORT, slurm or pbs"):
        parse_cluster(bad)


def test_good_cluster_values():
    from histstore.cluster import parse_cluster

    assert parse_cluster(None).kind == "none" and not parse_cluster("none").distributed
    assert parse_cluster("SLURM", 3) == parse_cluster("slurm", 3) and parse_cluster("slurm", 3).workers == 3
    spec = parse_cluster("tcp://10.0.0.5:8786")
    assert spec.kind == "address" and spec.address == "tcp://10.0.0.5:8786" and str(spec) == spec.address
    with pytest.raises(InvalidInput, match="--workers must be >= 1"):
        parse_cluster("local", 0)


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_jobqueue_without_a_configuration_is_a_one_line_error(kind):
    import dask

    from histstore.cluster import connect, parse_cluster

    pytest.importorskip("dask_jobqueue")  # an optional extra; imported first: it adds its config defaults
    with dask.config.set({f"jobqueue.{kind}.cores": None, f"jobqueue.{kind}.memory": None}), \
            pytest.raises(InvalidInput, match=f"--cluster {kind}: no cores and memory per job configured") as err:
        connect(parse_cluster(kind, 2))
    assert "jobqueue.yaml" in err.value.hint


def test_cli_ingest_on_a_local_cluster_and_a_bad_value(cli, store, manifest):
    bad = cli("ingest", str(manifest), "--cohort", "syn", "--cluster", "sge")
    assert bad.exit_code != 0 and "--cluster must be" in bad.output and "sge" in bad.output
    assert rows(store, "SELECT count(*) FROM slides") == [(0,)]
    ok = cli("ingest", str(manifest), "--cohort", "syn", "--mpp", "1", "--tile-size", "64",
             "--cluster", "local", "--workers", "2")
    assert ok.exit_code == 0, ok.output
    assert f"{N_SLIDES} ingested" in ok.output


def test_a_worker_refuses_an_encoder_that_differs_from_the_writers(ingested, tmp_path):
    """The writer sends a hash of its weights: a worker that builds other weights (another
    torch version, another file at the same path) embeds nothing."""
    from histstore.embeddings.dataset import load_slide_tiles
    from histstore.embeddings.slide_embed import EmbedJob, EncoderRef, embed_slide
    from histstore.embeddings.stain_settings import StainSettings
    from histstore.errors import HiststoreError

    with ingested.read() as conn:
        key = conn.exec_driver_sql("SELECT any_value(settings_key) FROM tilings").scalar()
        slide = load_slide_tiles(conn, [rows(ingested, "SELECT min(slide_id) FROM slides")[0][0]], key)[0]
    ref = EncoderRef("resnet18", "random", None, None, 0, weights_hash="0" * 32)
    job = EmbedJob(StainSettings("none"), 16, "float16", 512, "cpu", "fp32")
    with pytest.raises(HiststoreError, match="differs from the writer's"):
        embed_slide(str(tmp_path / "set"), slide, ref, job)
    assert not (tmp_path / "set").exists()
