"""Slide reading over OpenSlide: properties, RGB regions, downsampled whole-slide images.

`open_slide(path)` gives a `SlideReader` (a context manager). Every OpenSlide failure is turned
into `SlideReadError` with a one-line message that names the file, so a worker can report a
broken slide and the ingest carries on with the others.

Resolution (um per level-0 pixel) comes from `openslide.mpp-x`, else from the TIFF resolution
tags. It is never guessed: when the file has none, `mpp` is None and `require_mpp()` raises
unless the caller passed `assume_mpp` (the CLI's `--assume-mpp`), which is used only for files
that lack an mpp of their own (`mpp_source` says which one applies).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import openslide

from histstore.errors import SlideReadError

# Plausible range for a microscope's um/px; outside it a TIFF resolution tag is a scanner-less
# default (72 dpi = 353 um/px), not a measurement.
_MPP_RANGE = (0.02, 100.0)
# Relative slack when matching pyramid downsamples (OpenSlide reports e.g. 4.000345).
_DS_TOL = 0.01
# Pixels read per strip when building a downsampled whole-slide image.
_STRIP_PIXELS = 1 << 24


def open_slide(path: str | Path, assume_mpp: float | None = None) -> SlideReader:
    """Open a whole-slide image. Raises SlideReadError if missing, corrupt or unsupported."""
    return SlideReader(path, assume_mpp=assume_mpp)


def _float_prop(props, key: str) -> float | None:
    try:
        value = float(props[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def mpp_from_properties(props) -> float | None:
    """um per level-0 pixel from OpenSlide properties, or None when the file does not say."""
    mpp = _float_prop(props, openslide.PROPERTY_NAME_MPP_X)
    if mpp is None:
        # OpenSlide only derives mpp-x from TIFF tags in some formats; do it ourselves.
        xres = _float_prop(props, "tiff.XResolution")
        unit = str(props.get("tiff.ResolutionUnit", "")).lower()
        per_unit_um = {"centimeter": 1e4, "inch": 25400.0}.get(unit)
        if xres is not None and per_unit_um is not None:
            mpp = per_unit_um / xres
    if mpp is None or not (_MPP_RANGE[0] <= mpp <= _MPP_RANGE[1]):
        return None
    return mpp


class SlideReader:
    """Read-only view of one slide. Regions come back as uint8 RGB arrays (H, W, 3).

    Transparent pixels (outside the scanned area, or padding past the slide edge) are
    composited on white, the colour of glass, so tissue detection sees them as background.
    """

    def __init__(self, path: str | Path, assume_mpp: float | None = None):
        self.path = Path(path)
        if assume_mpp is not None and not (assume_mpp > 0 and math.isfinite(assume_mpp)):
            raise SlideReadError(f"--assume-mpp must be a positive number, got {assume_mpp!r}")
        if not self.path.exists():
            raise SlideReadError(f"slide file not found: {self.path}")
        if not self.path.is_file():
            raise SlideReadError(f"not a file: {self.path}")
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideReadError(
                f"unsupported or unreadable slide format: {self.path}"
            ) from None
        except (openslide.OpenSlideError, OSError) as e:
            raise SlideReadError(f"cannot open slide {self.path}: {_one_line(e)}") from None
        props = self._slide.properties
        self.properties: dict[str, str] = dict(props)
        self.width, self.height = (int(v) for v in self._slide.dimensions)
        self.level_count: int = int(self._slide.level_count)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
            (int(w), int(h)) for w, h in self._slide.level_dimensions
        )
        self.level_downsamples: tuple[float, ...] = tuple(
            float(d) for d in self._slide.level_downsamples
        )
        self.vendor: str | None = props.get(openslide.PROPERTY_NAME_VENDOR)
        self.objective_power: float | None = _float_prop(
            props, openslide.PROPERTY_NAME_OBJECTIVE_POWER
        )
        self.file_mpp: float | None = mpp_from_properties(props)
        self.assume_mpp = assume_mpp
        if self.width <= 0 or self.height <= 0:
            self.close()
            raise SlideReadError(f"slide has no pixels: {self.path}")

    # -- properties ---------------------------------------------------------------------
    @property
    def mpp(self) -> float | None:
        """um per level-0 pixel: the file's own value, else `assume_mpp`, else None."""
        return self.file_mpp if self.file_mpp is not None else self.assume_mpp

    @property
    def mpp_source(self) -> str | None:
        """'file', 'assumed' or None (unknown)."""
        if self.file_mpp is not None:
            return "file"
        return "assumed" if self.assume_mpp is not None else None

    def require_mpp(self) -> float:
        mpp = self.mpp
        if mpp is None:
            raise SlideReadError(
                f"slide resolution (um/px) unknown: {self.path}",
                hint="pass --assume-mpp, e.g. --assume-mpp 0.5 for a 20x scan",
            )
        return mpp

    @property
    def handle(self) -> openslide.OpenSlide:
        """The open OpenSlide object (for OpenSlide's own helpers, e.g. its DeepZoomGenerator)."""
        return self._slide

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.width, self.height

    def best_level_for_downsample(self, downsample: float) -> int:
        """Coarsest level whose downsample is <= `downsample` (so reading it never upsamples)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + _DS_TOL):
                best = level
        return best

    # -- pixels -------------------------------------------------------------------------
    def read_region(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        """Pixels of a w x h box at `level` whose top-left is (x0, y0) in level-0 px.

        Returns uint8 (h, w, 3) RGB; area past the slide edge reads as white.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range 0..{self.level_count - 1}")
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {w}x{h}")
        try:
            rgb = _read_opaque(self._slide, int(x0), int(y0), int(level), int(w), int(h))
            if rgb is not None:
                return rgb
            img = self._slide.read_region((int(x0), int(y0)), int(level), (int(w), int(h)))
        except (openslide.OpenSlideError, OSError) as e:
            raise SlideReadError(
                f"cannot read pixels from {self.path} at ({x0}, {y0}) level {level}: "
                f"{_one_line(e)}"
            ) from None
        return rgba_to_rgb(np.asarray(img))

    def read_downsampled(self, width: int, height: int) -> np.ndarray:
        """The whole slide resampled to exactly (height, width, 3) uint8 RGB.

        Reads the coarsest pyramid level at or above the needed resolution, in horizontal
        strips (memory stays bounded on a one-level slide of any size), and shrinks each strip
        with area interpolation.
        """
        import cv2

        if width <= 0 or height <= 0:
            raise ValueError(f"size must be positive, got {width}x{height}")
        downsample = min(self.width / width, self.height / height)
        level = self.best_level_for_downsample(downsample)
        lw, lh = self.level_dimensions[level]
        lds = self.level_downsamples[level]
        if (lw, lh) == (width, height):
            return self.read_region(0, 0, level, lw, lh)
        out = np.empty((height, width, 3), np.uint8)
        rows_per_in = lh / height  # input rows per output row
        band = max(1, int(_STRIP_PIXELS // max(lw, 1) / max(rows_per_in, 1.0)))
        for r0 in range(0, height, band):
            r1 = min(height, r0 + band)
            y_in0 = int(math.floor(r0 * rows_per_in))
            y_in1 = min(lh, max(y_in0 + 1, int(math.ceil(r1 * rows_per_in))))
            strip = self.read_region(0, int(round(y_in0 * lds)), level, lw, y_in1 - y_in0)
            interp = cv2.INTER_AREA if rows_per_in >= 1 else cv2.INTER_LINEAR
            out[r0:r1] = cv2.resize(strip, (width, r1 - r0), interpolation=interp)
        return out

    def thumbnail(self, max_side: int) -> np.ndarray:
        """Whole-slide RGB image whose longer side is `max_side` (never larger than level 0)."""
        if max_side <= 0:
            raise ValueError(f"max_side must be positive, got {max_side}")
        scale = min(1.0, max_side / max(self.width, self.height))
        tw = max(1, int(round(self.width * scale)))
        th = max(1, int(round(self.height * scale)))
        return self.read_downsampled(tw, th)

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()
            self._slide = None

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SlideReader({str(self.path)!r}, {self.width}x{self.height}, "
            f"levels={self.level_count}, mpp={self.mpp}, vendor={self.vendor!r})"
        )


# OpenSlide's C call, which fills a buffer of premultiplied ARGB words. openslide-python wraps
# it in a PIL image (un-premultiplied, then copied out by numpy); reading into a numpy buffer
# and swapping channels with OpenCV skips two of the four passes over the pixels (bench_embed,
# "read" stage). It is openslide-python's internal name: without it, or on a big-endian
# machine, every read takes the public path, which gives the same pixels
# (tests/wsi/test_reader.py).
_C_READ_REGION = getattr(getattr(openslide, "lowlevel", None), "_read_region", None) \
    if sys.byteorder == "little" else None


def _read_opaque(slide, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray | None:
    """RGB (h, w, 3) of a region whose pixels are all opaque, read straight into numpy; None
    when any pixel is transparent (compositing needs the public path) or it is unavailable."""
    handle = getattr(slide, "_osr", None)
    if _C_READ_REGION is None or handle is None:
        return None
    import ctypes

    import cv2

    argb = np.empty((h, w), np.uint32)
    _C_READ_REGION(handle, argb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)), x0, y0, level, w, h)
    if argb.min() < 0xFF000000:  # alpha is the high byte: some pixel is not opaque
        return None
    # little-endian ARGB words are B, G, R, A bytes; opaque premultiplied is straight colour
    return cv2.cvtColor(argb.view(np.uint8).reshape(h, w, 4), cv2.COLOR_BGRA2RGB)


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite non-premultiplied RGBA (h, w, 4) uint8 on white -> RGB (h, w, 3) uint8."""
    alpha = rgba[..., 3]
    rgb = rgba[..., :3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
