"""Per-slide embedding arrays in the store's zarr group.

Layout: <store>/embeddings.zarr/<set dir>/<slide key> is a 2-D array [n_tiles, dim], row i =
tile idx i of the slide's tiling, chunked by thousands of rows (loading a slide reads a few
whole chunks, never one chunk per tile) and Blosc-lz4-compressed.

Crash safety: an array is written under <set dir>/.partial/<slide key>.<token> and moved to its
final name only when complete (a directory rename, atomic on one filesystem); the catalog row
in embedding_arrays is written after that, with a checksum of the array's bytes. A leftover
partial array is garbage; a final-named array without a catalog row is discarded and redone.
No torch here.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import zarr

PARTIAL_DIR = ".partial"
DEFAULT_CHUNK_ROWS = 4096
# Blosc lz4 with bit shuffle. On real float16 encoder output (benchmarks/bench_bags.py, codec
# rows and table in benchmarks/RESULTS.md) it stores a few per cent less than zstd level 3 and
# decodes faster; byte shuffle + lz4 does not compress such embeddings at all, and random
# data (the benchmark's cohort-read part) barely compresses with any codec. The layout is not
# tuned on real cohorts yet. The codec is recorded in each array's metadata, so arrays written
# with another codec still read.
COMPRESSOR = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


def slide_key(slide_id: str) -> str:
    """Filesystem-safe, reversible name for a slide's array."""
    return quote(slide_id, safe="-_.")


def slide_from_key(key: str) -> str:
    return unquote(key)


def checksum(data: np.ndarray) -> str:
    """blake2b of the array's bytes in row order (dtype and shape prefixed)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{data.dtype.str}{data.shape}".encode())
    h.update(np.ascontiguousarray(data).tobytes())
    return h.hexdigest()


class ArrayWriter:
    """Writes one slide's array in row blocks under a temporary name; `commit` moves it into
    place and returns its checksum. Use as a context manager: an exception discards it.

    Blocks are held until they fill a whole chunk, which is then written once: writing each
    small block straight into zarr re-reads and re-compresses its chunk every time
    (benchmarks/bench_embed.py times both on a 10,000-row slide in 64-row blocks).
    """

    def __init__(self, set_dir: Path, slide_id: str, n_rows: int, dim: int, dtype: str = "float16",
                 chunk_rows: int = DEFAULT_CHUNK_ROWS):
        self.set_dir = Path(set_dir)
        self.final = self.set_dir / slide_key(slide_id)
        partial = self.set_dir / PARTIAL_DIR
        partial.mkdir(parents=True, exist_ok=True)
        self.tmp = partial / f"{slide_key(slide_id)}.{uuid.uuid4().hex[:8]}"
        self.n_rows, self.dim = int(n_rows), int(dim)
        self._hash = hashlib.blake2b(digest_size=16)
        self._hash.update(f"{np.dtype(dtype).str}{(self.n_rows, self.dim)}".encode())
        self._next = 0      # rows received
        self._written = 0   # rows written to zarr (a multiple of the chunk rows, or n_rows)
        self._held: list[np.ndarray] = []
        self.chunk_rows = max(1, min(chunk_rows, self.n_rows))
        self.array = zarr.create_array(
            store=zarr.storage.LocalStore(str(self.tmp)), shape=(self.n_rows, self.dim),
            chunks=(self.chunk_rows, self.dim), dtype=dtype,
            compressors=COMPRESSOR, fill_value=0, zarr_format=3)

    def write(self, block: np.ndarray) -> None:
        """Append the next rows (blocks must arrive in row order)."""
        block = np.array(block, dtype=self.array.dtype)  # a copy: the caller may reuse its buffer
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise ValueError(f"block of shape {block.shape} does not fit [*, {self.dim}]")
        end = self._next + block.shape[0]
        if end > self.n_rows:
            raise ValueError(f"too many rows: {end} > {self.n_rows}")
        self._hash.update(np.ascontiguousarray(block).tobytes())
        self._held.append(block)
        self._next = end
        full = (self._next - self._written) // self.chunk_rows * self.chunk_rows
        if full:
            self._flush(full)

    def _flush(self, rows: int) -> None:
        """Write the first `rows` held rows (whole chunks, or the array's tail)."""
        held = np.concatenate(self._held) if len(self._held) > 1 else self._held[0]
        self.array[self._written:self._written + rows] = held[:rows]
        self._written += rows
        self._held = [held[rows:]] if rows < len(held) else []

    def commit(self) -> str:
        if self._next != self.n_rows:
            raise ValueError(f"array incomplete: {self._next} of {self.n_rows} rows written")
        if self._written < self.n_rows:
            self._flush(self.n_rows - self._written)
        if self.final.exists():  # an unregistered leftover of an interrupted run
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        return self._hash.hexdigest()

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        return False


def write_array(set_dir: Path, slide_id: str, data: np.ndarray, dtype: str = "float16",
                chunk_rows: int = DEFAULT_CHUNK_ROWS) -> str:
    """Write a whole array at once (imports, tests); returns its checksum."""
    data = np.asarray(data)
    with ArrayWriter(set_dir, slide_id, data.shape[0], data.shape[1], dtype, chunk_rows) as w:
        w.write(data)
        return w.commit()


def read_array(set_dir: Path, slide_id: str) -> np.ndarray:
    """The whole array at once (the fast way: one read per chunk)."""
    arr = zarr.open_array(store=zarr.storage.LocalStore(str(Path(set_dir) / slide_key(slide_id))),
                          mode="r")
    return arr[...]


def array_exists(set_dir: Path, slide_id: str) -> bool:
    return (Path(set_dir) / slide_key(slide_id) / "zarr.json").is_file()


def remove_array(set_dir: Path, slide_id: str) -> None:
    shutil.rmtree(Path(set_dir) / slide_key(slide_id), ignore_errors=True)


def clear_partials(set_dir: Path, slide_id: str | None = None) -> int:
    """Delete leftovers of interrupted writes (of one slide, or all). Returns how many."""
    partial = Path(set_dir) / PARTIAL_DIR
    if not partial.is_dir():
        return 0
    n = 0
    prefix = None if slide_id is None else slide_key(slide_id) + "."
    for p in partial.iterdir():
        if prefix is None or p.name.startswith(prefix):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n
