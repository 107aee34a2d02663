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


def test_writer_writes_whole_chunks_and_copies_blocks(tmp_path):
    """Small blocks are held until a chunk is full (no re-compressing a chunk per block), and a
    caller reusing its buffer between writes does not change what was written."""
    data = np.random.default_rng(2).normal(size=(600, 8)).astype(np.float16)
    buf = np.empty((64, 8), np.float16)
    with arrays.ArrayWriter(tmp_path, "s", 600, 8, chunk_rows=256) as w:
        chunk_files = lambda: sorted(p.name for p in (w.tmp / "c").rglob("*") if p.is_file())  # noqa: E731
        for i in range(0, 600, 64):
            n = min(64, 600 - i)
            buf[:n] = data[i:i + n]
            w.write(buf[:n])
            buf[:] = 0  # reused by the caller
            assert len(chunk_files()) == (i + n) // w.chunk_rows  # 200: 600 rows in 3 equal chunks
        ck = w.commit()
    assert ck == arrays.checksum(data)
    assert np.array_equal(arrays.read_array(tmp_path, "s"), data)
