"""histstore's direct chunk reader returns exactly what zarr returns, or hands over to zarr."""
import json

import numpy as np
import pytest
import zarr

from histstore.embeddings import arrays, chunk_reader
from histstore.errors import CorruptArray


def _codecs() -> dict:
    from benchmarks.bench_bags import codec_candidates

    return codec_candidates() | {
        "uncompressed": None, "gzip": zarr.codecs.GzipCodec(level=5),
        "blosc lz4 bitshuffle, 4-byte typesize": zarr.codecs.BloscCodec(cname="lz4", typesize=4,
                                                                        shuffle="bitshuffle")}


def _data(n_rows: int, dim: int = 24, dtype="float16", seed=0) -> np.ndarray:
    """Embedding-like rows: non-negative, many zeros (compressible, not trivially)."""
    x = np.maximum(np.random.default_rng(seed).normal(size=(n_rows, dim)), 0)
    return x.astype(dtype)


def _write(path, data, chunk_rows, codec="default", fill_value=0, **kw):
    codec = arrays.COMPRESSOR if codec == "default" else codec
    arr = zarr.create_array(store=zarr.storage.LocalStore(str(path)), shape=data.shape,
                            chunks=(chunk_rows, data.shape[1]), dtype=data.dtype, compressors=codec,
                            fill_value=fill_value, zarr_format=3, **kw)
    arr[...] = data
    return path


def _zarr(path) -> np.ndarray:
    return zarr.open_array(store=zarr.storage.LocalStore(str(path)), mode="r")[...]


def _direct(path) -> np.ndarray:
    lay = chunk_reader.layout(path)
    assert lay is not None, "the direct reader should handle this layout"
    return chunk_reader.read_whole(path, lay)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("codec", list(_codecs()))
def test_equals_zarr_for_every_codec(tmp_path, codec):
    data = _data(1000)  # 3 full chunks of 300 rows + a partial one of 100
    path = _write(tmp_path / "a", data, 300, _codecs()[codec])
    _same(_direct(path), _zarr(path))
    _same(_direct(path), data)
    # decoding chunks on two threads gives the same array
    _same(chunk_reader.read_whole(path, chunk_reader.layout(path), threads=2), data)


@pytest.mark.parametrize("n_rows,chunk_rows", [(1, 4096), (300, 300), (299, 300), (0, 1)])
def test_one_chunk_partial_and_empty_arrays(tmp_path, n_rows, chunk_rows):
    for codec in ("default", None):
        data = _data(n_rows)
        path = _write(tmp_path / f"a{n_rows}{codec}", data, chunk_rows, codec)
        _same(_direct(path), _zarr(path))
        _same(_direct(path), data)


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint8", ">f4", ">i2"])
def test_other_dtypes_and_byte_orders(tmp_path, dtype):
    data = (_data(50, dtype="float32") * 100).astype(np.dtype(dtype).newbyteorder("="))
    serializer = zarr.codecs.BytesCodec(endian="big" if dtype.startswith(">") else "little") \
        if np.dtype(dtype).itemsize > 1 else "auto"
    for codec in ("default", None):
        path = _write(tmp_path / f"a{codec}", data, 16, codec, serializer=serializer)
        _same(_direct(path), _zarr(path))
        _same(_direct(path), data)


def test_dot_separated_chunk_keys(tmp_path):
    data = _data(100)
    path = _write(tmp_path / "a", data, 32, chunk_key_encoding={"name": "default", "separator": "."})
    assert (path / "c.1.0").is_file()
    _same(_direct(path), _zarr(path))


@pytest.mark.parametrize("fill", [0, 1.5, float("nan"), float("-inf")])
def test_missing_chunk_files_hold_the_fill_value(tmp_path, fill):
    data = _data(100)
    for codec in ("default", None):
        path = _write(tmp_path / f"a{codec}", data, 32, codec, fill_value=fill)
        (path / "c" / "1" / "0").unlink()  # rows 32..63
        (path / "c" / "3" / "0").unlink()  # the partial last chunk, rows 96..99
        got = _direct(path)
        _same(got, _zarr(path))
        assert np.array_equal(got[:32], data[:32]) and np.array_equal(got[64:96], data[64:96])
        assert np.array_equal(got[32:64], np.full((32, 24), fill, np.float16), equal_nan=True)


def test_all_zero_chunks_are_not_written_and_read_back(tmp_path):
    """zarr skips chunks that are all fill value: the reader fills them (a real case, not only
    damage: a slide whose tiles all embed to zeros)."""
    data = _data(90)
    data[30:60] = 0
    path = _write(tmp_path / "a", data, 30)
    assert not (path / "c" / "1" / "0").exists()
    _same(_direct(path), data)


def test_unusual_layouts_fall_back_to_zarr(tmp_path):
    data = _data(100)
    cases = {
        "sharded": dict(shards=(64, 24)),
        "column chunks": None,
        "transposed": dict(filters=[zarr.codecs.TransposeCodec(order=(1, 0))]),
        "crc32c": dict(compressors=[zarr.codecs.BloscCodec(cname="lz4"), zarr.codecs.Crc32cCodec()]),
        "v2 keys": dict(chunk_key_encoding={"name": "v2", "separator": "."}),
    }
    for name, kw in cases.items():
        path = tmp_path / name.replace(" ", "_")
        if name == "column chunks":
            arr = zarr.create_array(store=zarr.storage.LocalStore(str(path)), shape=data.shape,
                                    chunks=(32, 8), dtype=data.dtype, zarr_format=3)
            arr[...] = data
        elif "compressors" in kw:
            _write(path, data, 32, kw["compressors"])
        else:
            _write(path, data, 32, **kw)
        assert chunk_reader.layout(path) is None, name
        _same(arrays.read_array(tmp_path, path.name), data)
    # zarr v2 and a 3-D array
    v2 = tmp_path / "v2"
    arr = zarr.create_array(store=zarr.storage.LocalStore(str(v2)), shape=data.shape, chunks=(32, 24),
                            dtype=data.dtype, zarr_format=2)
    arr[...] = data
    assert chunk_reader.layout(v2) is None
    _same(arrays.read_array(tmp_path, "v2"), data)
    cube = tmp_path / "cube"
    arr = zarr.create_array(store=zarr.storage.LocalStore(str(cube)), shape=(4, 5, 6), chunks=(2, 5, 6),
                            dtype="float16", zarr_format=3)
    assert chunk_reader.layout(cube) is None


def test_unknown_metadata_falls_back(tmp_path):
    path = _write(tmp_path / "a", _data(10), 4)
    meta = json.loads((path / "zarr.json").read_text())
    assert chunk_reader.parse_layout(meta) is not None
    for change in ({"storage_transformers": [{"name": "x"}]}, {"new_extension": {"must_understand": True}},
                   {"fill_value": "0x7fc0"}, {"data_type": "complex64"}, {"zarr_format": 2}):
        assert chunk_reader.parse_layout(meta | change) is None, change


def test_read_array_uses_the_direct_reader_for_what_histstore_writes(tmp_path, monkeypatch):
    data = _data(5000, dim=16)
    arrays.write_array(tmp_path, "s", data)
    monkeypatch.setattr(arrays, "read_array_via_zarr", lambda *a: pytest.fail("fell back to zarr"))
    _same(arrays.read_array(tmp_path, "s"), data)
    assert arrays.stored_checksum(tmp_path, "s") == arrays.checksum(data)


def test_writer_chunks_waste_fewer_rows_than_chunks(tmp_path):
    """The last chunk is stored padded: balanced chunk rows keep the padding under one row per
    chunk, so an uncompressed array is no bigger than its rows."""
    for n in (0, 1, 4095, 4096, 4097, 10_001, 30_000):
        rows = arrays.chunk_rows_for(n, 4096)
        n_chunks = -(-n // rows)
        assert 1 <= rows <= 4096 and n_chunks == -(-n // 4096)
        assert n_chunks * rows - n < max(1, n_chunks)
    arrays.write_array(tmp_path, "s", _data(10_001, dim=4), chunk_rows=4096)
    assert chunk_reader.layout(tmp_path / "s").chunk_rows == 3334
    arrays.write_array(tmp_path, "t", _data(10_001, dim=4))  # the default: one chunk
    assert chunk_reader.layout(tmp_path / "t").chunk_rows == 10_001


@pytest.mark.parametrize("codec", ["default", None, "zstd"])
def test_corrupt_chunks_raise_a_clear_error(tmp_path, codec):
    codec = zarr.codecs.ZstdCodec(level=3) if codec == "zstd" else codec
    path = _write(tmp_path / "a", _data(100), 32, codec)
    chunk = path / "c" / "1" / "0"
    good = chunk.read_bytes()
    for bad in (good[:-7], good + b"\0", b"\x02\x01", b"not a chunk at all" * 3):
        chunk.write_bytes(bad)
        with pytest.raises(CorruptArray, match="chunk .*c/1/0"):
            _direct(path)
