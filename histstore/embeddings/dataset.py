"""The tile data pipeline shared by embedding and pretraining.

`TileDataset` flattens the tiles of several slides (each in its tiling's idx order) and reads
their pixels with OpenSlide at the tiling's read level and size, resampled to the tile size;
each worker process keeps its own open slide handles. `TileCollate` stacks a batch into a uint8
tensor [B, H, W, 3] and applies Macenko stain normalisation there, so with DataLoader workers
the reading and normalising overlap with the model.

`tile_batches` is what embedding iterates: with worker processes (GPU machines: many cores) a
DataLoader as above; without, `ThreadedTileBatches`, which reads in this process on one
background thread (OpenSlide decodes with the GIL released) and, for embedding, also applies
each slide's stain fit and the preprocessing there (one torch thread of its own): no batch is
pickled across processes and no second process competes with the model's OpenMP team, which
matters on a CPU with few cores (benchmarks/bench_embed.py times both).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import sqlalchemy as sa
import torch

from histstore.catalog.bulk import query_numpy
from histstore.errors import MissingStep, SlideReadError


@dataclass(frozen=True)
class SlideTiles:
    """One slide's tiles in one tiling, in idx order, with what is needed to re-read them."""
    slide_id: str
    path: str
    tiling_id: int
    read_spec: dict  # read_level, read_size, tile_size (TileGrid.spec)
    x: np.ndarray
    y: np.ndarray
    tile_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


def load_slide_tiles(conn: sa.Connection, slide_ids: Sequence[str], tiling_key: str) -> list[SlideTiles]:
    """Tiles of each slide in the tiling with this settings key (error naming slides without)."""
    import json

    meta = query_numpy(conn,
        "SELECT t.slide_id, s.path, t.tiling_id, t.settings FROM tilings t JOIN slides s USING (slide_id) "
        "WHERE t.settings_key = $1 AND t.slide_id IN (SELECT unnest($2::VARCHAR[]))",
        [tiling_key, list(slide_ids)])
    by_slide = {s: (p, int(t), json.loads(js) if isinstance(js, str) else js)
                for s, p, t, js in zip(meta["slide_id"], meta["path"], meta["tiling_id"], meta["settings"])}
    missing = [s for s in slide_ids if s not in by_slide]
    if missing:
        raise MissingStep(f"{len(missing)} slide(s) have no tiling {tiling_key}: {', '.join(missing[:5])}",
                          hint="run `histstore ingest` with the same tiling settings first")
    no_file = [s for s in slide_ids if not by_slide[s][0]]
    if no_file:
        raise MissingStep(f"{len(no_file)} slide(s) have no slide file (features-only): {', '.join(no_file[:5])}",
                          hint="this step needs pixels; ingest the slide files")
    tiles = query_numpy(conn,
        "SELECT tiling_id, tile_id, x, y FROM tiles WHERE tiling_id IN (SELECT unnest($1::BIGINT[])) "
        "ORDER BY tiling_id, idx", [[v[1] for v in by_slide.values()]])
    out = []
    tid = tiles["tiling_id"]
    for sid in slide_ids:
        path, tiling_id, settings = by_slide[sid]
        lo, hi = np.searchsorted(tid, tiling_id, "left"), np.searchsorted(tid, tiling_id, "right")
        out.append(SlideTiles(sid, path, tiling_id, settings["read"], tiles["x"][lo:hi].astype(np.int64),
                              tiles["y"][lo:hi].astype(np.int64), tiles["tile_id"][lo:hi].astype(np.int64)))
    return out


class TileDataset(torch.utils.data.Dataset):
    """Item i -> (uint8 [tile, tile, 3] numpy array, i). Flat over slides in the given order."""

    def __init__(self, slides: Sequence[SlideTiles], max_open: int = 16):
        self.slides = list(slides)
        self.offsets = np.concatenate([[0], np.cumsum([len(s) for s in self.slides])]).astype(np.int64)
        self.max_open = max_open
        self._readers: OrderedDict[str, object] = OrderedDict()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return s, int(i - self.offsets[s])

    def _reader(self, path: str):
        from histstore.wsi.reader import open_slide

        r = self._readers.get(path)
        if r is None:
            # mpp is irrelevant to reading pixels at a known level and size
            r = open_slide(path, assume_mpp=1.0)
            self._readers[path] = r
            if len(self._readers) > self.max_open:
                _, old = self._readers.popitem(last=False)
                old.close()
        else:
            self._readers.move_to_end(path)
        return r

    def __getitem__(self, i: int):
        from histstore.wsi.process import read_tile

        s, j = self.locate(int(i))
        sl = self.slides[s]
        try:
            tile = read_tile(self._reader(sl.path), sl.x[j], sl.y[j], sl.read_spec)
        except SlideReadError:
            raise
        except Exception as exc:
            raise SlideReadError(f"cannot read tile {j} of {sl.slide_id} from {sl.path}: {exc}") from None
        return tile, int(i)

    def read_into(self, out: np.ndarray, start: int) -> None:
        """Tiles start, start+1, ... into out [n, tile, tile, 3] (no per-batch stacking), the
        same pixels as item by item; side-by-side tiles of a slide are read as one region
        (histstore.wsi.process.read_tiles_into)."""
        from histstore.wsi.process import read_tiles_into

        pos, end = int(start), int(start) + out.shape[0]
        while pos < end:
            s, j = self.locate(pos)
            sl = self.slides[s]
            take = min(end - pos, len(sl) - j)
            try:
                read_tiles_into(self._reader(sl.path), sl.x[j:j + take], sl.y[j:j + take], sl.read_spec,
                                out[pos - start:pos - start + take])
            except SlideReadError:
                raise
            except Exception as exc:
                raise SlideReadError(f"cannot read tiles {j}-{j + take - 1} of {sl.slide_id} from {sl.path}: "
                                     f"{exc}") from None
            pos += take

    def close(self) -> None:
        while self._readers:
            self._readers.popitem()[1].close()

    def __getstate__(self):  # readers are per process: never pickle open handles
        state = dict(self.__dict__)
        state["_readers"] = OrderedDict()
        return state


class TileCollate:
    """Batch -> (uint8 tensor [B, H, W, 3], int64 indices [B]); Macenko-normalised if asked."""

    def __init__(self, stain_norm: str = "none"):
        if stain_norm not in ("none", "macenko"):
            raise ValueError(f"stain_norm must be none or macenko, not {stain_norm!r}")
        self.stain_norm = stain_norm

    def __call__(self, batch):
        tiles = torch.from_numpy(np.stack([b[0] for b in batch]))
        index = torch.tensor([b[1] for b in batch], dtype=torch.int64)
        if self.stain_norm == "macenko":
            from histstore.embeddings.stain import macenko_normalize

            tiles = macenko_normalize(tiles)
        return tiles, index


def _worker_init(_):
    import os

    torch.set_num_threads(1)  # workers read and normalise; the model owns the other threads
    # Lower priority: when cores are scarce the model's OpenMP team keeps its cores (a
    # descheduled team thread stalls every parallel region), and the readers fill the gaps.
    try:
        os.nice(10)
    except OSError:
        pass


def tile_loader(dataset: TileDataset, batch_size: int, workers: int, stain_norm: str = "none",
                shuffle: bool = False, pin_memory: bool = False, seed: int = 0,
                drop_last: bool = False, slide_aligned: bool = False) -> torch.utils.data.DataLoader:
    """slide_aligned: batches in dataset order that never cross a slide (slide_batches)."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    if slide_aligned:
        batch_sampler = [list(range(a, b)) for a, b in slide_batches(dataset.offsets, batch_size)]
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                                           collate_fn=TileCollate(stain_norm), pin_memory=pin_memory,
                                           **worker_options(workers))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       num_workers=workers, collate_fn=TileCollate(stain_norm),
                                       pin_memory=pin_memory, generator=gen, drop_last=drop_last,
                                       **worker_options(workers))


def slide_batches(offsets: np.ndarray, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) row ranges of at most batch_size tiles, in order, never crossing a slide.

    Why: a convolution's floating-point result can depend on the other images in its batch
    (kernel choice varies with batch size), so a slide's embedding would depend on which
    slides shared its run; aligned batches make a resumed embed write the same bytes as an
    uninterrupted one (tests/faults/test_crash_resume.py). Costs one partial batch per slide.
    """
    out = []
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        out.extend((start, min(start + batch_size, b)) for start in range(a, b, batch_size))
    return out


def worker_options(workers: int, persistent: bool = True) -> dict:
    """DataLoader options for `workers` tile-reading processes.

    fork starts workers in milliseconds (spawn re-imports torch: seconds per worker). It is
    safe here: workers never touch the inherited DuckDB connection, exit with os._exit (no
    destructors run), and run torch single-threaded (_worker_init), so no OpenMP pool is used
    after the fork.
    """
    if workers <= 0:
        return {}
    import multiprocessing as mp

    ctx = "fork" if "fork" in mp.get_all_start_methods() else None
    return dict(multiprocessing_context=ctx, persistent_workers=persistent, prefetch_factor=4,
                worker_init_fn=_worker_init)


class ThreadedTileBatches:
    """Batches of consecutive tiles in dataset order, never crossing a slide (slide_batches)
    -> (uint8 tensor [B, H, W, 3], int64 indices [B]), read in this process by one background thread while the caller computes.

    The reading thread runs at a lower priority (like the niced worker processes: when cores
    are scarce the model's OpenMP team keeps them and reading fills the gaps) and stays at most
    `prefetch` batches ahead. `transform(tiles, indices)`, when given, runs on the reading
    thread too, with one torch thread of its own (OpenMP's thread count is per calling
    thread, so the caller's model keeps its team): the embed loop passes per-slide stain
    normalisation and preprocessing, so that only the model runs on the caller's thread.
    stain_norm="macenko" (per tile) runs on the caller's thread, with torch's threads, just
    before the batch is handed over. A reading or transform error is raised in the caller;
    leaving the loop early stops the thread. background=False reads (and transforms) each batch
    on the caller's thread when it is asked for: no overlap, and no competition for the cores
    the model's OpenMP team uses (bench_embed's "tile reader" row times both).
    """

    def __init__(self, dataset: TileDataset, batch_size: int, stain_norm: str = "none",
                 prefetch: int = 2, nice: int = 10, transform=None, background: bool = True):
        if stain_norm not in ("none", "macenko"):
            raise ValueError(f"stain_norm must be none or macenko, not {stain_norm!r}")
        self.dataset, self.batch_size, self.stain_norm = dataset, int(batch_size), stain_norm
        self.prefetch, self.nice, self.transform = max(1, int(prefetch)), nice, transform
        self.background = background

    def _batch(self, start: int, end: int):
        """Tiles start..end-1 read (and transformed) on the calling thread."""
        n = end - start
        size = int(self.dataset.slides[self.dataset.locate(start)[0]].read_spec["tile_size"])
        tiles = np.empty((n, size, size, 3), np.uint8)
        self.dataset.read_into(tiles, start)
        if self.transform is not None:
            index = np.arange(start, end, dtype=np.int64)
            with torch.inference_mode():
                tiles = self.transform(torch.from_numpy(tiles), index)
        return tiles

    def __len__(self) -> int:
        return len(slide_batches(self.dataset.offsets, self.batch_size))

    def _produce(self, q, stop) -> None:
        import os
        import queue
        import threading

        if self.nice:
            try:  # Linux: a thread's priority is its own
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except (AttributeError, OSError):
                pass
        if self.transform is not None:
            # this thread's OpenMP team only. OpenCV's pool is process-wide and is left alone:
            # resizing it from here segfaults in a forked child whose parent had started it
            # (tests/faults run embed in forked processes)
            torch.set_num_threads(1)

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for start, end in slide_batches(self.dataset.offsets, self.batch_size):
                tiles = self._batch(start, end)
                if not put((tiles, start)):
                    return
            put(None)
        except BaseException as exc:  # handed to the caller
            put(exc)
        finally:
            self.dataset.close()

    def _in_order(self):
        """background=False: each batch read when asked for, on the caller's thread."""
        try:
            for start, end in slide_batches(self.dataset.offsets, self.batch_size):
                yield self._batch(start, end), start
        finally:
            self.dataset.close()

    def _hand_over(self, items):
        for tiles, start in items:
            if not isinstance(tiles, torch.Tensor):
                tiles = torch.from_numpy(tiles)
            if self.stain_norm == "macenko":
                from histstore.embeddings.stain import macenko_normalize

                tiles = macenko_normalize(tiles)
            yield tiles, torch.arange(start, start + len(tiles), dtype=torch.int64)

    def __iter__(self):
        return self._hand_over(self._from_thread() if self.background else self._in_order())

    def _from_thread(self):
        import queue
        import threading

        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(q, stop), name="histstore-tile-reader",
                                  daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()


def tile_batches(dataset: TileDataset, batch_size: int, workers: int, stain_norm: str = "none",
                 pin_memory: bool = False, transform=None, background: bool = True):
    """Batches of consecutive tiles of one slide each, for embedding: (uint8 [B, H, W, 3],
    int64 indices [B]). workers > 0: a DataLoader with that many reading processes; 0:
    ThreadedTileBatches, with `transform` (if any) applied where it reads (a background
    thread, or the caller's thread in turn with the model when background is False)."""
    if workers > 0:
        if transform is not None:
            raise ValueError("transform runs where the tiles are read: workers must be 0")
        return tile_loader(dataset, batch_size, workers, stain_norm, pin_memory=pin_memory, slide_aligned=True)
    return ThreadedTileBatches(dataset, batch_size, stain_norm, transform=transform, background=background)
