import numpy as np
import pytest

from histstore.embeddings import arrays


def test_write_read_checksum(tmp_path):
    data = np.random.default_rng(0).normal(size=(10_000, 64)).astype(np.float16)
    ck = arrays.write_array(tmp_path, "TCGA-AA-0001-01Z-00-DX1", data, chunk_rows=4096)
    assert ck == arrays.checksum(data)
    back = arrays.read_array(tmp_path, "TCGA-AA-0001-01Z-00-DX1")
    assert back.dtype == np.float16 and np.array_equal(back, data)
    assert not any((tmp_path / arrays.PARTIAL_DIR).iterdir())


def test_blockwise_writer_equals_whole(tmp_path):
    data = np.random.default_rng(1).normal(size=(1000, 8)).astype(np.float16)
    with arrays.ArrayWriter(tmp_path, "s/1", 1000, 8, chunk_rows=256) as w:
        for i in range(0, 1000, 300):
            w.write(data[i:i + 300])
        ck = w.commit()
    assert ck == arrays.checksum(data)
    assert np.array_equal(arrays.read_array(tmp_path, "s/1"), data)
    assert arrays.slide_from_key(arrays.slide_key("s/1")) == "s/1"


def test_interrupted_write_leaves_nothing_final(tmp_path):
    with pytest.raises(RuntimeError):
        with arrays.ArrayWriter(tmp_path, "s", 100, 4) as w:
            w.write(np.zeros((50, 4)))
            raise RuntimeError("killed")
    assert not arrays.array_exists(tmp_path, "s")
    assert not any((tmp_path / arrays.PARTIAL_DIR).iterdir())
    w = arrays.ArrayWriter(tmp_path, "s", 100, 4)
    w.write(np.zeros((50, 4)))
    with pytest.raises(ValueError, match="incomplete"):
        w.commit()
    # a hard kill leaves a partial; clearing it is what a resumed job does first
    assert arrays.clear_partials(tmp_path, "s") == 1
    assert not arrays.array_exists(tmp_path, "s")
