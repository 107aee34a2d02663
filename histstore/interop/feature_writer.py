"""Writing an imported slide's features into its embedding set's zarr array, in blocks of
rows, under a temporary name (`embeddings.arrays`); the commit that registers it moves it into
place (`ArrayWriter.publish`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from histstore.embeddings import arrays

BLOCK_ROWS = arrays.DEFAULT_CHUNK_ROWS


def write_features(set_dir: Path, slide_id: str, data: np.ndarray, dtype: str) -> arrays.ArrayWriter:
    """The finished array, still under .partial/ (its writer: publish() or discard())."""
    arrays.clear_partials(set_dir, slide_id)
    with arrays.ArrayWriter(set_dir, slide_id, data.shape[0], data.shape[1], dtype) as w:
        for start in range(0, data.shape[0], BLOCK_ROWS):
            w.write(data[start:start + BLOCK_ROWS])
        w.finish()
        return w
