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
