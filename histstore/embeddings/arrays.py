"""Per-slide embedding arrays in the store's zarr group.

Layout: <store>/embeddings.zarr/<set dir>/<slide key> is a 2-D zarr v3 array [n_tiles, dim],
row i = tile idx i of the slide's tiling, in chunks of whole rows, at most DEFAULT_CHUNK_ROWS
and as equal as they can be (`chunk_rows_for`: loading a slide reads one or a few whole
chunks, never one chunk per tile), written with COMPRESSOR. `read_array` reads a whole array straight from
its chunk files (chunk_reader) where the layout is one it handles - every array histstore
writes, whatever codec it was written with - and through zarr otherwise.

Crash safety: an array is written under <set dir>/.partial/<slide key>.<token> (the token
names the writing process: host, PID) and moved to its final name only when complete (a
directory rename, atomic on one filesystem), by the process that then registers it in
embedding_arrays with a checksum of its bytes - the move and the registration happen while
that process holds the catalog's write lock, after checking that no other process registered
the slide meanwhile. A leftover partial array of a dead process is garbage; a final-named
array without a catalog row is an orphan, replaced when the slide is embedded again (and
reported by `histstore verify`). No torch here.
"""
from __future__ import annotations

import hashlib
import os
import socket
import uuid
from pathlib import Path

import numpy as np
import zarr

from histstore.embeddings import chunk_reader
from histstore.faults import fault_point
from histstore.fsops import remove_tree
from histstore.ids import from_path_component, path_component

PARTIAL_DIR = ".partial"
# At most 32,768 rows a chunk: a slide of up to 32,768 tiles is one chunk file (a TCGA slide
# at 128 px, 0.5 um/px has 10,000-30,000). Fewer, larger chunk files read faster from a cold
# page cache (benchmarks/RESULTS.md, section bags, layout table: the same uncompressed bytes in
# 4,096-row chunks read cold in 0.184 s, in histstore's chunks in 0.128 s); the cost is the
# writer's memory: it holds up to one chunk (64 MB of 1,024 float16 features).
DEFAULT_CHUNK_ROWS = 32_768
# New arrays are written uncompressed; older arrays keep their codec in their zarr.json and
# still read. Chosen from the same table (encoder output laid out as 8 slides, read by the
# direct reader): uncompressed read the cohort warm at 1.13 of np.load's speed on raw .npy
# files (goal >= 0.5) and cold at 0.66, in 1.000 of the raw bytes; Blosc lz4 + bitshuffle (the
# codec before) stores 0.675 of them but read warm at 0.27 and cold in 0.165 s: decoding it
# (2.39 GB/s in memory) is slower than reading the bytes, warm or cold; Blosc zstd-3 +
# bitshuffle stores 0.662 and read warm at 0.15.
COMPRESSOR = None


def chunk_rows_for(n_rows: int, max_rows: int = DEFAULT_CHUNK_ROWS) -> int:
    """Rows per chunk of an array of n_rows: at most max_rows, the chunks as equal as they can
    be. zarr stores the last chunk padded to a full chunk; this way the padding is under one
    row per chunk (with max_rows 4,096, 10,001 rows are 3 chunks of 3,334, not 4,096 + 4,096 +
    1,809 padded to 4,096)."""
    n_chunks = max(1, -(-int(n_rows) // max(1, int(max_rows))))
    return max(1, -(-int(n_rows) // n_chunks))


def slide_key(slide_id: str) -> str:
    """Filesystem-safe, reversible name for a slide's array (histstore.ids.path_component)."""
    return path_component(slide_id)


def slide_from_key(key: str) -> str:
    return from_path_component(key)


def _host_tag() -> str:
    return hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


def partial_token() -> str:
    """Names the writer: p<PID>-<host tag>-<random>."""
    return f"p{os.getpid()}-{_host_tag()}-{uuid.uuid4().hex[:8]}"


def partial_owner(name: str) -> tuple[int, bool] | None:
    """(PID, written on this host?) of a partial array's name, None if it has no token."""
    token = name.rsplit(".", 1)[-1]
    parts = token.split("-")
    if len(parts) != 3 or not parts[0].startswith("p") or not parts[0][1:].isdigit():
        return None
    return int(parts[0][1:]), parts[1] == _host_tag()


def partial_is_leftover(name: str) -> bool:
    """A partial array that nobody is writing any more: its writer (on this host) is gone,
    or it has no owner token (older histstore). Partials of other hosts are left alone."""
    from histstore.liveness import pid_alive

    owner = partial_owner(name)
    if owner is None:
        return True
    pid, here = owner
    return here and (pid == os.getpid() or not pid_alive(pid))


def checksum(data: np.ndarray) -> str:
    """blake2b of the array's bytes in row order (dtype and shape prefixed)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{data.dtype.str}{data.shape}".encode())
    h.update(np.ascontiguousarray(data).reshape(-1).view(np.uint8))  # no copy of the bytes
    return h.hexdigest()


class ArrayWriter:
    """Writes one slide's array in row blocks under a temporary name; `commit` moves it into
    place and returns its checksum. Use as a context manager: an exception discards it.

    Blocks are held until they fill a whole chunk, which is then written once: writing each
    small block straight into zarr re-reads and rewrites its chunk every time
    (benchmarks/bench_embed.py times both on a 10,000-row slide in 64-row blocks).
    """

    def __init__(self, set_dir: Path, slide_id: str, n_rows: int, dim: int, dtype: str = "float16",
                 chunk_rows: int = DEFAULT_CHUNK_ROWS):
        self.set_dir = Path(set_dir)
        self.final = self.set_dir / slide_key(slide_id)
        self.partial_dir = self.set_dir / PARTIAL_DIR
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = self.partial_dir / f"{slide_key(slide_id)}.{partial_token()}"
        self.n_rows, self.dim = int(n_rows), int(dim)
        self._hash = hashlib.blake2b(digest_size=16)
        self._hash.update(f"{np.dtype(dtype).str}{(self.n_rows, self.dim)}".encode())
        self._next = 0      # rows received
        self._written = 0   # rows written to zarr (a multiple of the chunk rows, or n_rows)
        self._held: list[np.ndarray] = []
        self.chunk_rows = chunk_rows_for(self.n_rows, chunk_rows)
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
        if end < self.n_rows:
            fault_point("array.mid_write")

    def _flush(self, rows: int) -> None:
        """Write the first `rows` held rows (whole chunks, or the array's tail)."""
        held = np.concatenate(self._held) if len(self._held) > 1 else self._held[0]
        self.array[self._written:self._written + rows] = held[:rows]
        self._written += rows
        self._held = [held[rows:]] if rows < len(held) else []

    def finish(self) -> str:
        """Check that every row was written; the checksum. The array stays under .partial/."""
        if self._next != self.n_rows:
            raise ValueError(f"array incomplete: {self._next} of {self.n_rows} rows written")
        if self._written < self.n_rows:
            self._flush(self.n_rows - self._written)
        return self._hash.hexdigest()

    def publish(self) -> None:
        """Move the finished array to its final name, replacing an unregistered leftover there.
        Call while holding the catalog's write lock, after checking the slide is not
        registered in the set, and register it in the same transaction."""
        self.finish()
        publish_partial(self.set_dir, self.tmp, self.final.name)

    def commit(self) -> str:
        """finish() and publish() at once (single-process use: tests, tools)."""
        checksum = self.finish()
        self.publish()
        return checksum

    def discard(self) -> None:
        self.discard_path(self.tmp, self.set_dir)

    @staticmethod
    def discard_path(tmp: Path, set_dir: Path) -> None:
        """Remove a finished or half-written array under set_dir/.partial/ (nothing else)."""
        try:
            remove_tree(Path(tmp), Path(set_dir) / PARTIAL_DIR)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        return False


def publish_partial(set_dir: Path, tmp: Path | str, final_name: str) -> None:
    """Move a finished array from set_dir/.partial/ to its final name (replacing an unregistered
    leftover there). The writer calls it holding the catalog's write lock, having checked
    that the slide is not registered in the set (ArrayWriter.publish; arrays written by Dask
    workers)."""
    set_dir, tmp = Path(set_dir), Path(tmp)
    if tmp.parent != set_dir / PARTIAL_DIR or not tmp.name.startswith(final_name + "."):
        raise ValueError(f"{tmp} is not a partial array of {final_name} in {set_dir}")
    final = set_dir / final_name
    if final.exists():  # an orphan of an interrupted run (not in the catalog)
        remove_tree(final, set_dir)
    os.replace(tmp, final)


def write_array(set_dir: Path, slide_id: str, data: np.ndarray, dtype: str = "float16",
                chunk_rows: int = DEFAULT_CHUNK_ROWS) -> str:
    """Write a whole array at once (imports, tests); returns its checksum."""
    data = np.asarray(data)
    with ArrayWriter(set_dir, slide_id, data.shape[0], data.shape[1], dtype, chunk_rows) as w:
        w.write(data)
        return w.commit()


def read_array(set_dir: Path, slide_id: str) -> np.ndarray:
    """The whole array at once: straight from its chunk files where chunk_reader handles the
    layout (every array histstore writes), else through zarr. Both give the same array."""
    path = Path(set_dir) / slide_key(slide_id)
    lay = chunk_reader.layout(path)
    if lay is None:
        return read_array_via_zarr(set_dir, slide_id)
    return chunk_reader.read_whole(path, lay)


def read_array_via_zarr(set_dir: Path, slide_id: str) -> np.ndarray:
    """The whole array through zarr's own read path (any layout zarr reads)."""
    arr = zarr.open_array(store=zarr.storage.LocalStore(str(Path(set_dir) / slide_key(slide_id))),
                          mode="r")
    return arr[...]


def stored_info(set_dir: Path, slide_id: str) -> tuple[tuple[int, ...], str] | None:
    """(shape, dtype) of a stored array from its metadata alone, None if there is none."""
    path = Path(set_dir) / slide_key(slide_id)
    if not (path / "zarr.json").is_file():
        return None
    lay = chunk_reader.layout(path)
    if lay is not None:
        return lay.shape, str(lay.dtype)
    arr = zarr.open_array(store=zarr.storage.LocalStore(str(path)), mode="r")
    return tuple(arr.shape), str(arr.dtype)


def stored_checksum(set_dir: Path, slide_id: str, block_rows: int = DEFAULT_CHUNK_ROWS) -> str:
    """The checksum of a stored array (equals the writer's): read whole by the direct reader
    where it handles the layout, else through zarr in row blocks."""
    path = Path(set_dir) / slide_key(slide_id)
    if chunk_reader.layout(path) is not None:
        return checksum(read_array(set_dir, slide_id))
    arr = zarr.open_array(store=zarr.storage.LocalStore(str(path)), mode="r")
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{np.dtype(arr.dtype).str}{tuple(arr.shape)}".encode())
    for start in range(0, arr.shape[0], block_rows):
        h.update(np.ascontiguousarray(arr[start:start + block_rows]).tobytes())
    return h.hexdigest()


def array_exists(set_dir: Path, slide_id: str) -> bool:
    return (Path(set_dir) / slide_key(slide_id) / "zarr.json").is_file()


def remove_array(set_dir: Path, slide_id: str) -> None:
    remove_tree(Path(set_dir) / slide_key(slide_id), set_dir)


def leftover_partials(set_dir: Path, slide_id: str | None = None) -> list[Path]:
    """Partial arrays (of one slide, or all) whose writer is gone."""
    partial = Path(set_dir) / PARTIAL_DIR
    if not partial.is_dir():
        return []
    prefix = None if slide_id is None else slide_key(slide_id) + "."
    return sorted(p for p in partial.iterdir()
                  if (prefix is None or p.name.startswith(prefix)) and partial_is_leftover(p.name))


def clear_partials(set_dir: Path, slide_id: str | None = None) -> int:
    """Delete leftovers of interrupted writes (of one slide, or all); partials that a live
    process is writing are left alone. Returns how many were removed."""
    n = 0
    for p in leftover_partials(set_dir, slide_id):
        try:
            remove_tree(p, Path(set_dir) / PARTIAL_DIR)
            n += 1
        except OSError:
            pass
    return n
