"""Tile grids: which square tiles of a slide to read, at which level, and how much tissue each holds.

HistCode (arXiv 2204.11994) cuts slides into 128 x 128 tiles at 20x (0.5 um/px) and keeps the
ones on tissue. Here a tile is `tile_size` pixels at `target_mpp`; it is read from the coarsest
pyramid level that is still at least as fine as the target (so tiles are only ever shrunk,
never enlarged) and resampled to `tile_size`. Coordinates are level-0 pixels; a tile covers
`size_l0` x `size_l0` level-0 pixels from its top-left (x, y). Grids step by
`tile_size - overlap` target pixels, and every tile lies fully inside the slide.

Which tiles are kept is the tiling's rule (`TilingSpec.tile_rule`):
- "clam-four-pt" (the default): HistCode's pipeline, CLAM's four-point contour rule - a tile
  is kept when its central region touches a tissue contour and its centre is not in a hole;
  each contour has its own grid anchored at its bounding box (`histstore.wsi.contour_tiles`);
- "min-tissue": one grid from (0, 0); a tile is kept when at least `min_tissue` of it is
  tissue (histstore's rule before tile rules existed; its settings are recorded as they were
  then, so tilings made before keep their settings key).

Either way each tile's tissue fraction is recorded: the exact area fraction of its footprint
covered by the tissue mask (mask pixels treated as little squares), from a summed-area table,
vectorised.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from histstore.errors import InvalidInput, SlideReadError

TISSUE_METHODS = ("hsv-otsu",)
TILE_RULES = ("clam-four-pt", "min-tissue")
DEFAULT_MIN_TISSUE = 0.5  # the min-tissue rule's default fraction
# A pyramid level may be this much coarser than the target and still be read (scanners report
# e.g. 0.5040 um/px for "20x"); the resampling is then a negligible enlargement.
LEVEL_MPP_TOL = 0.01
# Level 0 may be up to 10% coarser than the target (0.55 um/px slide read for 0.5): a mild
# enlargement. A coarser slide is refused rather than invented.
MAX_UPSAMPLE = 1.10


def magnification_to_mpp(magnification: float) -> float:
    """Objective magnification -> um/px by the usual convention 20x = 0.5 um/px (mpp = 10/mag)."""
    if not (isinstance(magnification, (int, float)) and magnification > 0):
        raise InvalidInput(f"magnification must be a positive number, got {magnification!r}")
    return 10.0 / float(magnification)


def mpp_to_magnification(mpp: float) -> float:
    """Inverse of `magnification_to_mpp`."""
    if not (isinstance(mpp, (int, float)) and mpp > 0):
        raise InvalidInput(f"mpp must be a positive number, got {mpp!r}")
    return 10.0 / float(mpp)


@dataclass(frozen=True)
class TilingSpec:
    """How to tile: tile_size px at target_mpp um/px, overlap in target px, which tiles to keep.

    tile_rule: "clam-four-pt" (HistCode/CLAM's contour rule, the default) or "min-tissue"
    (keep tiles with tissue fraction >= min_tissue; min_tissue defaults to 0.5 and is given
    only with this rule).
    """

    target_mpp: float = 0.5
    tile_size: int = 128
    overlap: int = 0
    min_tissue: float | None = None
    tissue_method: str = "hsv-otsu"
    tile_rule: str = "clam-four-pt"

    def __post_init__(self) -> None:
        def bad(msg: str) -> InvalidInput:
            return InvalidInput(f"invalid tiling: {msg}")

        if isinstance(self.target_mpp, bool) or not isinstance(self.target_mpp, (int, float)):
            raise bad(f"target_mpp must be a number, got {self.target_mpp!r}")
        if not (0 < self.target_mpp <= 100 and math.isfinite(self.target_mpp)):
            raise bad(f"target_mpp must be in (0, 100] um/px, got {self.target_mpp}")
        for name in ("tile_size", "overlap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise bad(f"{name} must be an integer, got {v!r}")
        if not 8 <= self.tile_size <= 8192:
            raise bad(f"tile_size must be in 8..8192 px, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise bad(f"overlap must be in 0..tile_size-1, got {self.overlap}")
        if self.tile_rule not in TILE_RULES:
            raise bad(f"tile_rule must be one of {', '.join(TILE_RULES)}, got {self.tile_rule!r}")
        if self.tile_rule == "min-tissue":
            if self.min_tissue is None:
                object.__setattr__(self, "min_tissue", DEFAULT_MIN_TISSUE)
            if isinstance(self.min_tissue, bool) or not isinstance(self.min_tissue, (int, float)):
                raise bad(f"min_tissue must be a number, got {self.min_tissue!r}")
            if not 0.0 <= self.min_tissue <= 1.0:
                raise bad(f"min_tissue must be in [0, 1], got {self.min_tissue}")
            object.__setattr__(self, "min_tissue", float(self.min_tissue))
        elif self.min_tissue is not None:
            raise bad(f"min_tissue applies to tile_rule min-tissue only, not {self.tile_rule}")
        if self.tissue_method not in TISSUE_METHODS:
            raise bad(f"tissue_method must be one of {TISSUE_METHODS}, got {self.tissue_method!r}")
        # normalise types so equal specs compare and serialise equal
        object.__setattr__(self, "target_mpp", float(self.target_mpp))
        object.__setattr__(self, "tile_size", int(self.tile_size))
        object.__setattr__(self, "overlap", int(self.overlap))

    @property
    def stride(self) -> int:
        """Step between tiles, in target pixels."""
        return self.tile_size - self.overlap

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. '128px@0.5mpp'."""
        s = f"{self.tile_size}px@{self.target_mpp:g}mpp"
        if self.overlap:
            s += f"-ov{self.overlap}"
        return s

    @property
    def rule_label(self) -> str:
        """The rule in words, e.g. 'clam-four-pt' or 'min tissue 0.5'."""
        return self.tile_rule if self.tile_rule != "min-tissue" else f"min tissue {self.min_tissue:g}"

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded (and hashed into the tiling's settings key).

        The min-tissue rule is written as it was before tile rules existed (no tile_rule
        key), so its tilings keep their keys; `from_dict` reads a dict without tile_rule as
        min-tissue."""
        d = asdict(self)
        if self.tile_rule == "min-tissue":
            del d["tile_rule"]
        else:
            del d["min_tissue"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TilingSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidInput(f"invalid tiling: unknown keys {sorted(unknown)}")
        d = dict(d)
        d.setdefault("tile_rule", "min-tissue")  # written before tile rules existed
        return cls(**d)


@dataclass(frozen=True)
class SlideGeometry:
    """What tiling needs to know about a slide (level-0 size, pyramid, resolution)."""

    width: int
    height: int
    level_downsamples: tuple[float, ...]
    mpp: float
    name: str = ""  # for error messages only

    def __post_init__(self) -> None:
        if self.mpp is None or not self.mpp > 0:
            raise SlideReadError(
                f"slide resolution (um/px) unknown{': ' + self.name if self.name else ''}",
                hint="pass --assume-mpp",
            )
        object.__setattr__(self, "level_downsamples", tuple(float(d) for d in self.level_downsamples))

    @classmethod
    def from_reader(cls, reader) -> SlideGeometry:
        """From a SlideReader (raises SlideReadError when mpp is unknown and not assumed)."""
        return cls(
            width=reader.width,
            height=reader.height,
            level_downsamples=tuple(reader.level_downsamples),
            mpp=reader.require_mpp(),
            name=str(reader.path),
        )


def choose_read_level(geometry: SlideGeometry, target_mpp: float) -> int:
    """Coarsest level whose um/px is <= target (within LEVEL_MPP_TOL): never enlarge tiles.

    Level 0 is used when even it is coarser than the target by less than MAX_UPSAMPLE;
    beyond that the slide cannot give the requested resolution and SlideReadError is raised.
    """
    level_mpp = [geometry.mpp * ds for ds in geometry.level_downsamples]
    ok = [lv for lv, m in enumerate(level_mpp) if m <= target_mpp * (1 + LEVEL_MPP_TOL)]
    if ok:
        return max(ok, key=lambda lv: level_mpp[lv])
    if geometry.mpp <= target_mpp * MAX_UPSAMPLE:
        return 0
    where = f" ({geometry.name})" if geometry.name else ""
    raise SlideReadError(
        f"slide resolution {geometry.mpp:.4g} um/px is coarser than the target "
        f"{target_mpp:g} um/px{where}",
        hint=f"tile at --mpp {geometry.mpp:.3g} or coarser",
    )


@dataclass
class TileGrid:
    """Tiles kept on one slide. Arrays have shape (n,), in row-major order (y, then x).

    x, y: level-0 top-left (int64). tissue_fraction: float32 in [0, 1]. idx: 0..n-1.
    A tile is re-read with `read_region(x, y, read_level, read_size, read_size)` and resized
    to `tile_size` (see `histstore.wsi.process.read_tile`); `spec` holds all of that as a dict.
    """

    idx: np.ndarray
    x: np.ndarray
    y: np.ndarray
    tissue_fraction: np.ndarray
    tile_size: int
    target_mpp: float
    overlap: int
    slide_mpp: float
    read_level: int
    read_downsample: float
    read_size: int
    size_l0: int
    stride_l0: int
    n_candidates: int = 0  # grid positions tested by the tile rule
    min_tissue: float | None = None  # the min-tissue rule's fraction; None for other rules
    tile_rule: str = "min-tissue"

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def spec(self) -> dict[str, Any]:
        """Serialisable tile spec: enough for any consumer to re-read a tile's pixels."""
        return {
            "tile_size": self.tile_size,
            "target_mpp": self.target_mpp,
            "overlap": self.overlap,
            "slide_mpp": self.slide_mpp,
            "read_level": self.read_level,
            "read_downsample": self.read_downsample,
            "read_size": self.read_size,
            "size_l0": self.size_l0,
            "stride_l0": self.stride_l0,
        }

    def columns(self) -> dict[str, np.ndarray]:
        """Per-tile columns, ready for `pandas.DataFrame(grid.columns())`."""
        return {
            "idx": self.idx,
            "x": self.x,
            "y": self.y,
            "tissue_fraction": self.tissue_fraction,
        }


def mask_fraction(
    mask: np.ndarray,
    scale: tuple[float, float],
    x: np.ndarray,
    y: np.ndarray,
    w: float | np.ndarray,
    h: float | np.ndarray,
) -> np.ndarray:
    """Fraction of each level-0 box [x, x+w) x [y, y+h) covered by a low-resolution mask.

    mask: (mh, mw) bool/0-1, pixel (r, c) covers level-0 [c*sx, (c+1)*sx) x [r*sy, (r+1)*sy)
    where scale = (sx, sy). Exact for that piecewise-constant reading: bilinear interpolation
    of the summed-area table is the integral of a piecewise-constant image. Area outside the
    mask counts as not covered. Returns float64 (n,).
    """
    m = np.asarray(mask, dtype=np.float64)
    mh, mw = m.shape
    sat = np.zeros((mh + 1, mw + 1), np.float64)
    sat[1:, 1:] = m.cumsum(0).cumsum(1)
    sx, sy = float(scale[0]), float(scale[1])
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    u0 = np.clip(x / sx, 0, mw)
    u1 = np.clip((x + w) / sx, 0, mw)
    v0 = np.clip(y / sy, 0, mh)
    v1 = np.clip((y + h) / sy, 0, mh)

    def integral(v: np.ndarray, u: np.ndarray) -> np.ndarray:
        i = np.minimum(np.floor(v).astype(np.int64), mh - 1)
        j = np.minimum(np.floor(u).astype(np.int64), mw - 1)
        a = v - i
        b = u - j
        return (
            sat[i, j] * (1 - a) * (1 - b)
            + sat[i + 1, j] * a * (1 - b)
            + sat[i, j + 1] * (1 - a) * b
            + sat[i + 1, j + 1] * a * b
        )

    covered = integral(v1, u1) - integral(v0, u1) - integral(v1, u0) + integral(v0, u0)
    area = (np.asarray(w, np.float64) / sx) * (np.asarray(h, np.float64) / sy)
    return np.clip(covered / area, 0.0, 1.0)


def plan_tiles(geometry: SlideGeometry, mask, spec: TilingSpec) -> TileGrid:
    """The tiles of a slide kept by spec.tile_rule (see the module docstring).

    geometry: SlideGeometry (or anything with width, height, level_downsamples, mpp).
    mask: a TissueMask (histstore.wsi.tissue) covering the whole slide, or None to keep every
    tile of the (0, 0)-anchored grid with tissue_fraction 1.
    """
    if not isinstance(geometry, SlideGeometry):
        geometry = SlideGeometry(
            width=int(geometry.width),
            height=int(geometry.height),
            level_downsamples=tuple(geometry.level_downsamples),
            mpp=geometry.mpp,
            name=str(getattr(geometry, "path", "") or getattr(geometry, "name", "")),
        )
    level = choose_read_level(geometry, spec.target_mpp)
    scale0 = spec.target_mpp / geometry.mpp  # level-0 px per target px
    size_l0 = max(1, int(round(spec.tile_size * scale0)))
    stride_l0 = max(1, size_l0 - int(round(spec.overlap * scale0)))
    read_ds = geometry.level_downsamples[level]
    read_size = max(1, int(round(spec.tile_size * scale0 / read_ds)))

    def positions(extent: int) -> np.ndarray:
        if extent < size_l0:
            return np.zeros(0, np.int64)
        return np.arange(0, extent - size_l0 + 1, stride_l0, dtype=np.int64)

    if mask is not None and tuple(mask.slide_size) != (geometry.width, geometry.height):
        raise ValueError(
            f"tissue mask is for a {mask.slide_size} slide, not {geometry.width}x{geometry.height}"
        )
    if mask is not None and spec.tile_rule == "clam-four-pt":
        from histstore.wsi.contour_tiles import four_point_tiles

        x, y, n_candidates = four_point_tiles(mask.mask, mask.scale, geometry.width, geometry.height,
                                              size_l0, stride_l0)
        frac = mask_fraction(mask.mask, mask.scale, x, y, size_l0, size_l0)
    else:
        ys, xs = positions(geometry.height), positions(geometry.width)
        yy, xx = np.meshgrid(ys, xs, indexing="ij")  # row-major: y outer, x inner
        x, y = xx.ravel(), yy.ravel()
        n_candidates = int(x.size)
        if mask is None:
            frac = np.ones(x.size, np.float64)
        else:
            frac = mask_fraction(mask.mask, mask.scale, x, y, size_l0, size_l0)
            keep = frac >= spec.min_tissue - 1e-9
            x, y, frac = x[keep], y[keep], frac[keep]
    return TileGrid(
        idx=np.arange(x.size, dtype=np.int64),
        x=np.ascontiguousarray(x, np.int64),
        y=np.ascontiguousarray(y, np.int64),
        tissue_fraction=frac.astype(np.float32),
        tile_size=spec.tile_size,
        target_mpp=spec.target_mpp,
        overlap=spec.overlap,
        slide_mpp=float(geometry.mpp),
        read_level=level,
        read_downsample=float(read_ds),
        read_size=read_size,
        size_l0=size_l0,
        stride_l0=stride_l0,
        n_candidates=n_candidates,
        min_tissue=spec.min_tissue,
        tile_rule=spec.tile_rule,
    )
