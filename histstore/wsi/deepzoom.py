"""Deep-zoom (DZI) tiles of slides, through OpenSlide's own `DeepZoomGenerator`.

A viewer asks for hundreds of tiles a minute; opening a slide file (parsing its TIFF directory)
costs far more than reading one tile, so `DeepZoomCache` keeps the most recently used slides
open with their generators (LRU, bounded). OpenSlide handles are safe to share between threads
(the C library locks its own caches), so one cache serves a whole thread pool.

Tiles are JPEG (what OpenSeadragon and every DZI viewer expect for photos); the DZI image is the
whole level-0 image (`limit_bounds=False`), so tile coordinates in the catalog (level-0 px, origin
top left) map onto it unchanged.
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from histstore.errors import NotFound, SlideReadError
from histstore.wsi.reader import open_slide

TILE_SIZE = 254      # + 2 x overlap = 256 px per request: OpenSlide's deep-zoom defaults
OVERLAP = 1
JPEG_QUALITY = 80
DEFAULT_OPEN_SLIDES = 16


@dataclass(frozen=True)
class DeepZoomInfo:
    width: int
    height: int
    tile_size: int
    overlap: int
    level_count: int

    def dzi_xml(self) -> str:
        """The .dzi descriptor OpenSeadragon reads."""
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
                f'Format="jpeg" Overlap="{self.overlap}" TileSize="{self.tile_size}">'
                f'<Size Width="{self.width}" Height="{self.height}"/></Image>')


class _Entry:
    def __init__(self, path: Path, tile_size: int, overlap: int):
        from openslide.deepzoom import DeepZoomGenerator

        self.path = path
        self.reader = open_slide(path)  # validates the file; SlideReadError with its name otherwise
        self.generator = DeepZoomGenerator(self.reader.handle, tile_size=tile_size, overlap=overlap,
                                           limit_bounds=False)
        w, h = self.generator.level_dimensions[-1]
        self.info = DeepZoomInfo(int(w), int(h), tile_size, overlap, int(self.generator.level_count))

    def close(self) -> None:
        self.reader.close()


class DeepZoomCache:
    """Open slides and their DeepZoomGenerators, least recently used closed first.

    Keyed by the slide file's path (callers resolve ids to paths through the catalog first)."""

    def __init__(self, max_open: int = DEFAULT_OPEN_SLIDES, tile_size: int = TILE_SIZE,
                 overlap: int = OVERLAP, jpeg_quality: int = JPEG_QUALITY):
        if max_open < 1:
            raise ValueError("max_open must be >= 1")
        self.max_open, self.tile_size, self.overlap = max_open, tile_size, overlap
        self.jpeg_quality = jpeg_quality
        self._entries: OrderedDict[Path, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._opening: dict[Path, threading.Lock] = {}

    def _get(self, path: Path | str) -> _Entry:
        path = Path(path)
        with self._lock:
            entry = self._entries.get(path)
            if entry is not None:
                self._entries.move_to_end(path)
                return entry
            opening = self._opening.setdefault(path, threading.Lock())
        # open outside the cache lock (slow), once per path even when many tiles ask at once
        with opening:
            with self._lock:
                entry = self._entries.get(path)
                if entry is not None:
                    return entry
            entry = _Entry(path, self.tile_size, self.overlap)
            with self._lock:
                self._entries[path] = entry
                self._opening.pop(path, None)
                while len(self._entries) > self.max_open:
                    # a thread still reading the evicted slide holds its own reference; OpenSlide
                    # objects close on garbage collection, so no close() under a reader's feet
                    self._entries.popitem(last=False)
        return entry

    def info(self, path: Path | str) -> DeepZoomInfo:
        return self._get(path).info

    def tile(self, path: Path | str, level: int, col: int, row: int) -> bytes:
        """One JPEG tile. NotFound when (level, col, row) is outside the pyramid."""
        entry = self._get(path)
        gen = entry.generator
        if not 0 <= level < gen.level_count:
            raise NotFound(f"deep-zoom level {level} out of range 0..{gen.level_count - 1}")
        cols, rows = gen.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise NotFound(f"tile ({col}, {row}) outside level {level} ({cols} x {rows} tiles)")
        try:
            img = gen.get_tile(level, (col, row))
        except Exception as exc:  # OpenSlideError, OSError: a damaged file
            raise SlideReadError(f"cannot read deep-zoom tile {level}/{col}_{row} of {entry.path}: "
                                 f"{' '.join(str(exc).split()) or type(exc).__name__}") from None
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=self.jpeg_quality)
        return buf.getvalue()

    def region_args(self, path: Path | str, level: int, col: int, row: int):
        """(location, OpenSlide level, size) that `read_region` needs for the same pixels as a
        deep-zoom tile (for benchmarks comparing the two)."""
        return self._get(path).generator.get_tile_coordinates(level, (col, row))

    def level_tiles(self, path: Path | str) -> tuple[tuple[int, int], ...]:
        return tuple(self._get(path).generator.level_tiles)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
