"""Whole-slide image handling: reading, fingerprinting, tissue detection, tiling.

One verb per module (reader, fingerprint, tissue, tiling, process; synth makes test slides).
Everything here is a pure function of (slide file, settings) so it can run in worker
processes; nothing in this package touches the catalog, torch or click.

Coordinates are always level-0 pixels (x right, y down); sizes are (width, height) where a
tuple is used and arrays are (rows, cols) = (y, x), as in numpy.
"""
from __future__ import annotations

from histstore.wsi.fingerprint import slide_fingerprint
from histstore.wsi.process import SlideResult, process_slide, read_tile, read_tiles
from histstore.wsi.reader import SlideReader, open_slide
from histstore.wsi.tiling import (
    SlideGeometry,
    TileGrid,
    TilingSpec,
    magnification_to_mpp,
    plan_tiles,
)
from histstore.wsi.tissue import TissueMask, detect_tissue, render_qc_png

__all__ = [
    "SlideGeometry",
    "SlideReader",
    "SlideResult",
    "TileGrid",
    "TilingSpec",
    "TissueMask",
    "detect_tissue",
    "magnification_to_mpp",
    "open_slide",
    "plan_tiles",
    "process_slide",
    "read_tile",
    "read_tiles",
    "render_qc_png",
    "slide_fingerprint",
]
