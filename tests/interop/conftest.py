"""Helpers for interop tests: hand-made CLAM/TRIDENT-style files and catalog peeks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner



def write_h5(path: Path, features, coords, coords_attrs: dict | None = None, root_attrs: dict | None = None,
             features_name: str = "features") -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset(features_name, data=np.asarray(features))
        if coords is not None:
            c = f.create_dataset("coords", data=np.asarray(coords))
            for k, v in (coords_attrs or {}).items():
                c.attrs[k] = v
        for k, v in (root_attrs or {}).items():
            f.attrs[k] = v
    return path


def q(store, sql, *params):
    with store.read() as conn:
        return conn.exec_driver_sql(sql, params).all()


def slide_tiles(store, slide_id: str, embedding_set_id: int = 1):
    """(features [N, D], xy [N, 2], tiling_id) of a slide's array in a set, row i = tile idx i."""
    from histstore.embeddings import arrays
    from histstore.embeddings.sets import resolve_set

    with store.read() as conn:
        info = resolve_set(conn, embedding_set_id)
        tiling_id = conn.exec_driver_sql(
            "SELECT tiling_id FROM embedding_arrays WHERE embedding_set_id = ? AND slide_id = ?",
            (info.embedding_set_id, slide_id)).scalar()
        xy = np.array(conn.exec_driver_sql("SELECT x, y FROM tiles WHERE tiling_id = ? ORDER BY idx",
                                           (tiling_id,)).all(), dtype=np.int64)
    return arrays.read_array(info.directory(store), slide_id), xy, tiling_id


@pytest.fixture
def run_cli():
    """Invoke the CLI on any store: run_cli(store, "features", "import", ...)."""
    from histstore.cli.main import main

    runner = CliRunner()

    def invoke(store, *args):
        return runner.invoke(main, ["--store", str(store.root), *map(str, args)], catch_exceptions=False)

    return invoke
