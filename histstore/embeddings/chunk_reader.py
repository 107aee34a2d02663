"""Whole-array reads of histstore's zarr arrays straight from their chunk files.

Reading a slide's array whole through zarr costs more in zarr's own read path (async
machinery, per-chunk overhead) than in decoding (benchmarks/bench_bags.py: the "through zarr"
row against histstore's reader). This module reads the layouts whose bytes it maps exactly as
zarr does, and nothing else:

- zarr v3 array metadata, 2-D, a numeric (int/uint/float) data type, no storage transformers;
- a regular chunk grid whose chunks span every column (a chunk = a run of whole rows);
- the default chunk key encoding (`c/<i>/0`, or `c.<i>.0` with the "." separator);
- codecs: `bytes` (little or big endian), then at most one of blosc, zstd, gzip, decoded by the
  same numcodecs functions zarr runs;
- a chunk file that is absent holds the fill value (zarr does not write chunks that are all
  fill value); the last chunk is stored padded to a full chunk, as zarr stores edge chunks.

`layout(path)` returns None for anything else (sharding, transposes, checksum codecs, v2
arrays, other key encodings, unusual fill values): the caller then reads through zarr.
Full chunks decode straight into their rows of the output; a padded last chunk decodes into
a scratch chunk whose leading rows are copied. A chunk whose size does not match what its
header or the metadata promises raises CorruptArray naming the file. No torch here.
"""
from __future__ import annotations

import json
import math
import os
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histstore.errors import CorruptArray

_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64"}
_KNOWN_KEYS = {"shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value", "codecs",
               "attributes", "zarr_format", "node_type", "storage_transformers", "dimension_names"}
_COMPRESSORS = {"blosc", "zstd", "gzip"}
_FLOAT_WORDS = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
_BLOSC_HEADER = struct.Struct("<BBBBIII")  # version, versionlz, flags, typesize, nbytes, blocksize, cbytes


@dataclass(frozen=True)
class Layout:
    """What the reader needs from an array's zarr.json."""

    shape: tuple[int, int]
    dtype: np.dtype        # native byte order: what the read returns
    swap: bool             # chunks store the other byte order
    chunk_rows: int
    separator: str         # of the chunk keys
    compressor: str | None  # "blosc", "zstd", "gzip" or None
    fill_value: object

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.shape[0] / self.chunk_rows)

    @property
    def chunk_nbytes(self) -> int:
        return self.chunk_rows * self.shape[1] * self.dtype.itemsize

    def chunk_path(self, root: Path, i: int) -> Path:
        s = self.separator
        return root / f"c{s}{i}{s}0"


def layout(path: Path) -> Layout | None:
    """The array's layout if this reader handles it, else None (also without a zarr.json)."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return None
    return parse_layout(meta)


def parse_layout(meta: dict) -> Layout | None:
    """Layout from zarr.json's content; None for anything outside the handled cases."""
    if (not isinstance(meta, dict) or meta.get("zarr_format") != 3 or meta.get("node_type") != "array"
            or set(meta) - _KNOWN_KEYS or meta.get("storage_transformers", [])):
        return None
    shape, data_type = meta.get("shape"), meta.get("data_type")
    if (not isinstance(shape, list) or len(shape) != 2 or not all(_is_int(n) and n >= 0 for n in shape)
            or not isinstance(data_type, str) or data_type not in _DTYPES):
        return None
    dtype = np.dtype(data_type)
    grid = meta.get("chunk_grid")
    if not isinstance(grid, dict) or grid.get("name") != "regular":
        return None
    chunks = (grid.get("configuration") or {}).get("chunk_shape")
    if (not isinstance(chunks, list) or len(chunks) != 2 or not all(_is_int(n) for n in chunks)
            or chunks[0] < 1 or chunks[1] != shape[1] or shape[1] < 1):
        return None
    keys = meta.get("chunk_key_encoding")
    if not isinstance(keys, dict) or keys.get("name") != "default":
        return None
    separator = (keys.get("configuration") or {}).get("separator", "/")
    if separator not in ("/", "."):
        return None
    codecs = _codecs(meta.get("codecs"), dtype)
    fill = _fill_value(meta.get("fill_value"), dtype)
    if codecs is None or fill is None:
        return None
    swap, compressor = codecs
    return Layout((shape[0], shape[1]), dtype, swap, chunks[0], separator, compressor, fill)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _codecs(codecs, dtype: np.dtype) -> tuple[bool, str | None] | None:
    """(stored in the other byte order?, compressor) for [bytes] or [bytes, compressor]."""
    if (not isinstance(codecs, list) or not 1 <= len(codecs) <= 2
            or not all(isinstance(c, dict) for c in codecs)):
        return None
    first = codecs[0]
    if first.get("name") != "bytes":
        return None
    endian = (first.get("configuration") or {}).get("endian")
    if endian not in ("little", "big", None) or (endian is None and dtype.itemsize > 1):
        return None
    swap = dtype.itemsize > 1 and endian != sys.byteorder
    if len(codecs) == 1:
        return swap, None
    name = codecs[1].get("name")
    return (swap, name) if name in _COMPRESSORS else None


def _fill_value(value, dtype: np.dtype):
    """The fill value as a numpy scalar of dtype; None where zarr's reading of it is not this."""
    if dtype.kind == "f":
        if isinstance(value, str):
            return dtype.type(_FLOAT_WORDS[value]) if value in _FLOAT_WORDS else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return dtype.type(value)
        return None
    if _is_int(value) and np.iinfo(dtype).min <= value <= np.iinfo(dtype).max:
        return dtype.type(value)
    return None


def read_whole(path: Path, lay: Layout, threads: int = 1) -> np.ndarray:
    """The whole array [n_rows, n_cols] in native byte order. `threads` > 1 reads and decodes
    chunks on a shared thread pool (numcodecs releases the GIL while decoding). read_array uses
    one: 2 threads read the old lz4 arrays faster (bags layout table, "2 decode threads": 0.053
    s warm against 0.081 s) but still slower than uncompressed arrays on one thread (0.020 s),
    which is what histstore writes, and training's bag sources already read bags on threads."""
    root = Path(path)
    out = np.empty(lay.shape, dtype=lay.dtype)
    n = lay.n_chunks
    if threads > 1 and n > 1:
        list(_pool(threads).map(lambda i: _read_chunk(root, lay, out, i), range(n)))
    else:
        for i in range(n):
            _read_chunk(root, lay, out, i)
    return out


def _read_chunk(root: Path, lay: Layout, out: np.ndarray, i: int) -> None:
    """Chunk i into its rows of `out` (a padded last chunk through a scratch chunk)."""
    start = i * lay.chunk_rows
    stop = min(start + lay.chunk_rows, lay.shape[0])
    rows = out[start:stop]
    path = lay.chunk_path(root, i)
    try:
        with open(path, "rb", buffering=0) as f:
            if lay.compressor is None:
                _read_raw(f, path, lay, rows)
            else:
                data = f.read()
                full = stop - start == lay.chunk_rows
                target = rows if full else np.empty((lay.chunk_rows, lay.shape[1]), lay.dtype)
                _decode(data, path, lay, target)
                if not full:
                    rows[...] = target[:stop - start]
    except FileNotFoundError:
        rows[...] = lay.fill_value  # zarr writes no chunk that is all fill value
        return
    if lay.swap:
        rows.byteswap(inplace=True)


def _read_raw(f, path: Path, lay: Layout, rows: np.ndarray) -> None:
    """An uncompressed chunk: its leading bytes are the rows (the padding follows them)."""
    size = os.fstat(f.fileno()).st_size
    if size != lay.chunk_nbytes:
        raise _corrupt(path, f"holds {size} bytes, an uncompressed chunk is {lay.chunk_nbytes}")
    view = memoryview(rows.reshape(-1).view(np.uint8))
    got = 0
    while got < len(view):
        k = f.readinto(view[got:])
        if not k:
            raise _corrupt(path, f"ended after {got} of {len(view)} bytes")
        got += k


def _decode(data: bytes, path: Path, lay: Layout, target: np.ndarray) -> None:
    """A compressed chunk's bytes into `target` (one whole chunk), its size checked."""
    import numcodecs

    want = lay.chunk_nbytes
    try:
        if lay.compressor == "blosc":
            if len(data) < _BLOSC_HEADER.size:
                raise _corrupt(path, f"is {len(data)} bytes: shorter than a blosc header")
            nbytes, cbytes = (_BLOSC_HEADER.unpack_from(data)[k] for k in (4, 6))
            if nbytes != want or cbytes != len(data):
                raise _corrupt(path, f"its blosc header says {nbytes} bytes compressed to {cbytes}; the "
                                     f"file holds {len(data)} and a chunk is {want}")
            numcodecs.blosc.decompress(data, target)
            return
        codec = numcodecs.Zstd() if lay.compressor == "zstd" else numcodecs.GZip()
        # decoded into new bytes: numcodecs cannot say how much it wrote into a given buffer
        got = codec.decode(data)
    except CorruptArray:
        raise
    except Exception as exc:  # the codec's own error on damaged data
        raise _corrupt(path, f"does not decode ({lay.compressor}): {exc}") from exc
    got = memoryview(got).cast("B")
    if len(got) != want:
        raise _corrupt(path, f"decodes to {len(got)} bytes, a chunk is {want}")
    target.reshape(-1).view(np.uint8)[...] = np.frombuffer(got, np.uint8)


def _corrupt(path: Path, what: str) -> CorruptArray:
    return CorruptArray(f"damaged embedding array: chunk {path} {what}",
                        hint="`histstore verify` lists damaged arrays; embed or import the slide again")


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, threads, pool)


def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per process: a forked child gets its own (the parent's threads are not in it)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != threads:
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[2].shutdown(wait=False)
        _POOL = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="chunk-decode"))
    return _POOL[2]
