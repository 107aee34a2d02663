"""Fixtures of the web tests: one store shared by the folder (synthetic slides and the real
sample slide ingested, planted runs), and the app on it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from histstore.store import Store


@dataclass
class WebStore:
    store: Store
    truth: dict                 # synth6 truth.json: planted regions per slide
    tumour: str                 # a tumour slide tested by run_id
    normal: str
    real: str                   # the real Aperio sample slide
    failed: str                 # a slide whose ingest failed
    run_id: int                 # planted tumour run: attention = tumour share of each tile
    gene_run: int               # parent of two gene runs
    genes: dict[str, int]       # gene -> child run id (TP53 attends to tumour, EGFR to the rest)
    running: int                # a run still marked running
    artifact_id: int            # a heatmap PNG registered by `histstore heatmap`
    viewer_dir: Path


@pytest.fixture(scope="session")
def viewer_dir():
    """OpenSeadragon from npm (scripts/setup.sh installs it). Missing: the tests fail with the
    install command, they are not skipped."""
    from histstore.web.assets import find_openseadragon

    return find_openseadragon()


@pytest.fixture(scope="session")
def web(tmp_path_factory, synth6, real_slide, viewer_dir) -> WebStore:
    from histstore.ingest import ingest
    from histstore.labels import import_labels
    from histstore.reports.heatmap import render_heatmap
    from histstore.wsi.tiling import TilingSpec
    from tests.web.planting import plant_gene_run, plant_running_job, plant_tumour_run

    root = tmp_path_factory.mktemp("web") / "store"
    store, _ = Store.init(root)
    spec = TilingSpec(target_mpp=1.0, tile_size=64)
    ingest(store, synth6.manifest, spec, cohort="syn6", workers=1, show_progress=False)
    ingest(store, real_slide, spec, cohort="real", workers=1, show_progress=False, case_id_mode="slide")
    bad = root.parent / "broken.svs"
    bad.write_bytes(b"not a slide at all" * 100)
    ingest(store, bad, spec, workers=1, show_progress=False, case_id_mode="slide")
    import_labels(store, synth6.labels, "tumor")
    truth = synth6.truth()
    slides = sorted(truth["slides"])
    tumour = [s for s in slides if truth["slides"][s]["tumor"]]
    normal = [s for s in slides if not truth["slides"][s]["tumor"]]
    run_id = plant_tumour_run(store, truth, slides, "syn6")
    gene_run, children = plant_gene_run(store, truth, tumour, "syn6")
    running = plant_running_job(store, "syn6")
    hm = render_heatmap(store, run_id, tumour[0], max_side=256)
    with store.read() as conn:
        real_id = conn.exec_driver_sql("SELECT slide_id FROM cohort_slides WHERE cohort = 'real'").scalar()
        art = conn.exec_driver_sql("SELECT artifact_id FROM artifacts WHERE path = ?",
                                   (store.relative(hm.path),)).scalar()
    return WebStore(store, truth, tumour[0], normal[0], real_id, "broken", run_id, gene_run,
                    dict(zip(("TP53", "EGFR"), children)), running, int(art), viewer_dir)


@pytest.fixture(scope="session")
def client(web):
    from starlette.testclient import TestClient

    from histstore.web.app import create_app

    app = create_app(web.store, web.viewer_dir, allowed_hosts=["testserver"])
    with TestClient(app) as c:
        yield c
