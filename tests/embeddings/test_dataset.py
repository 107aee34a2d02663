"""The in-process tile reader used for embedding on a CPU: same tiles in the same order as the
dataset, Macenko as in the DataLoader path, errors raised in the caller, no thread left behind."""
import shutil
import threading

import numpy as np
import pytest
import torch

from histstore.embeddings.dataset import ThreadedTileBatches, TileDataset, load_slide_tiles, tile_batches
from histstore.errors import SlideReadError


def _slides(store):
    with store.read() as conn:
        ids = [r[0] for r in conn.exec_driver_sql("SELECT slide_id FROM cohort_slides ORDER BY 1").all()]
        key = conn.exec_driver_sql("SELECT any_value(settings_key) FROM tilings").scalar()
        return load_slide_tiles(conn, ids, key)


def _readers_alive():
    return [t for t in threading.enumerate() if t.name == "histstore-tile-reader"]


@pytest.mark.parametrize("background", [True, False], ids=["reading-thread", "in-turn"])
@pytest.mark.parametrize("stain_norm", ["none", "macenko"])
def test_batches_are_the_dataset_in_order(ingested, stain_norm, background):
    from histstore.embeddings.stain import macenko_normalize

    ds = TileDataset(_slides(ingested))
    expected = torch.from_numpy(np.stack([ds[i][0] for i in range(len(ds))]))
    batches = ThreadedTileBatches(TileDataset(ds.slides), 7, stain_norm, background=background)
    got = []
    for item in batches:
        got.append(item)
        assert background or not _readers_alive()  # in turn: nothing reads beside the caller
    # per slide ceil(n / 7) batches, none crossing a slide (a slide's embedding does not depend
    # on its neighbours in the run)
    assert len(got) == len(batches) == sum(-(-len(s) // 7) for s in ds.slides)
    assert torch.equal(torch.cat([i for _, i in got]), torch.arange(len(ds)))
    for _, index in got:
        assert len({ds.locate(int(i))[0] for i in index}) == 1 and len(index) <= 7
    for tiles, index in got:
        want = expected[index]
        assert torch.equal(tiles, macenko_normalize(want) if stain_norm == "macenko" else want)
    assert not _readers_alive()


def test_read_error_reaches_the_caller(ingested, tmp_path):
    slides = _slides(ingested)
    broken = tmp_path / "broken.tiff"
    shutil.copy(slides[1].path, broken)
    broken.write_bytes(broken.read_bytes()[:5000])  # truncated after ingest
    slides[1] = type(slides[1])(**{**slides[1].__dict__, "path": str(broken)})
    batches = tile_batches(TileDataset(slides), 16, workers=0)
    seen = 0
    with pytest.raises(SlideReadError):
        for tiles, _ in batches:
            seen += len(tiles)
    assert 0 < seen < sum(len(s) for s in slides)  # the first slide came through
    assert not _readers_alive()


def test_leaving_early_stops_the_reader(ingested):
    batches = ThreadedTileBatches(TileDataset(_slides(ingested)), 4, prefetch=1)
    for n, _ in enumerate(batches):
        if n == 2:
            break
    del batches
    assert not _readers_alive()
