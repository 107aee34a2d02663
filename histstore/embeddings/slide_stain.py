"""Stain normalisation for embedding: one Macenko fit per slide (default) or one per tile.

Per slide (`macenko`): the stain matrix and the 99th-percentile concentrations are estimated
ONCE per slide, from the pooled pixels of a seeded sample of its tissue tiles spread over the
slide (`fit_slide_stain`, a pure function of the slide file, its tile coordinates and the
settings), and that one fit renders every tile of the slide. Differences between tiles of a
slide (darker nuclei in tumour, paler stroma) survive; what differs between slides (a lab's or
scanner's stain colours and strength) is removed. A slide whose fit fails (too little stained
tissue, one stain only) is embedded without normalisation, and the catalog says so.

Per tile (`macenko-tile`): every tile fitted on its own (histstore.embeddings.stain.
macenko_normalize), which rescales each tile's own 99th percentile to the reference and so
erases tile-to-tile haematoxylin differences; kept as an explicit option.

What was done is recorded per slide per embedding set in the `slide_stain` table (migration
0007): the fit, the tiles sampled, how many tiles fell back to no normalisation.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import sqlalchemy as sa
import torch

from histstore.embeddings.dataset import SlideTiles
from histstore.embeddings.stain import StainFit, apply_stain_fit, fit_stains, macenko_normalize
from histstore.embeddings.stain_settings import StainSettings
from histstore.errors import SlideReadError

@dataclass(frozen=True)
class SlideStainFit:
    """A slide's per-slide fit: `fit` (ok or with its reason) from `tiles_sampled` tiles."""
    slide_id: str
    fit: StainFit
    tiles_sampled: int


def sample_tiles(n_tiles: int, max_tiles: int, seed: int, slide_id: str) -> np.ndarray:
    """Indices of up to max_tiles of a slide's n_tiles tiles (in idx order), spread over the
    slide: the idx range cut into max_tiles equal strata, one tile drawn in each, with a
    generator seeded by (seed, slide id) - the same slide and settings give the same sample."""
    if n_tiles <= max_tiles:
        return np.arange(n_tiles)
    rng = np.random.default_rng([int(seed), zlib.crc32(slide_id.encode())])
    edges = np.linspace(0, n_tiles, max_tiles + 1)
    lo, hi = np.ceil(edges[:-1]).astype(np.int64), np.ceil(edges[1:]).astype(np.int64)
    return lo + (rng.random(max_tiles) * (hi - lo)).astype(np.int64)


def fit_slide_stain(slide: SlideTiles, settings: StainSettings) -> SlideStainFit:
    """One Macenko fit for a slide from a seeded sample of its tiles (pure: depends only on
    the slide file, its tile coordinates and the settings)."""
    from histstore.wsi.process import read_tile
    from histstore.wsi.reader import open_slide

    pick = sample_tiles(len(slide), settings.max_tiles, settings.seed, slide.slide_id)
    size = int(slide.read_spec["tile_size"])
    tiles = np.empty((len(pick), size, size, 3), np.uint8)
    try:
        with open_slide(slide.path, assume_mpp=1.0) as reader:
            for k, j in enumerate(pick):
                tiles[k] = read_tile(reader, slide.x[j], slide.y[j], slide.read_spec)
    except SlideReadError:
        raise
    except Exception as exc:
        raise SlideReadError(f"cannot read tiles of {slide.slide_id} from {slide.path}: {exc}") from None
    fit = fit_stains(torch.from_numpy(tiles), max_fit_pixels=settings.max_fit_pixels,
                     max_pooled_pixels=settings.max_pooled_pixels)
    return SlideStainFit(slide.slide_id, fit, len(pick))


class SlideStainer:
    """Normalises batches of the embed loop (tiles of consecutive slides, flat dataset indices)
    and keeps, per slide, its fit and how many tiles fell back to no normalisation.

    Per slide, the fit is made when the slide's first tiles arrive (`fit_slide_stain`) and
    forgotten once the slide is recorded, so memory does not grow with the cohort."""

    def __init__(self, slides: Sequence[SlideTiles], offsets: np.ndarray, settings: StainSettings):
        self.slides, self.offsets, self.settings = list(slides), np.asarray(offsets), settings
        self._fits: dict[int, SlideStainFit] = {}
        self._fallbacks: dict[int, int] = {}

    def normalise(self, tiles: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        """uint8 tiles [B, H, W, 3] with their dataset indices -> normalised tiles."""
        method = self.settings.method
        if method == "none" or len(index) == 0:
            return tiles
        slide_no = np.searchsorted(self.offsets, np.asarray(index), side="right") - 1
        if method == "macenko-tile":
            out, ok = macenko_normalize(tiles, max_fit_pixels=self.settings.max_fit_pixels, return_mask=True)
            self._count(slide_no, ~ok.cpu().numpy())
            return out
        owners = np.unique(slide_no)
        if len(owners) == 1:  # the usual batch: all of one slide
            fit = self.fit_of(int(owners[0])).fit
            if not fit.ok:
                self._count(slide_no, np.ones(len(slide_no), bool))
                return tiles
            out, ok = apply_stain_fit(tiles, fit.stain_matrix, fit.max_c)
            self._count(slide_no, ~ok.cpu().numpy())
            return out
        out = tiles.clone()  # tiles of a slide without a fit stay as read
        for s in owners:
            rows = np.flatnonzero(slide_no == s)
            fit = self.fit_of(int(s)).fit
            if not fit.ok:
                self._count(np.full(len(rows), s), np.ones(len(rows), bool))
                continue
            # a slide's rows of a batch are consecutive (dataset order): a slice, not a gather
            # (applying the fit to an index_select result measured several times slower)
            part = slice(int(rows[0]), int(rows[-1]) + 1) if rows[-1] - rows[0] + 1 == len(rows) else \
                torch.as_tensor(rows, device=tiles.device)
            normed, ok = apply_stain_fit(tiles[part], fit.stain_matrix, fit.max_c)
            out[part] = normed
            self._count(np.full(len(rows), s), ~ok.cpu().numpy())
        return out

    def fit_of(self, slide_no: int) -> SlideStainFit:
        got = self._fits.get(slide_no)
        if got is None:
            got = self._fits[slide_no] = fit_slide_stain(self.slides[slide_no], self.settings)
        return got

    def forget(self, slide_no: int) -> None:
        """Drop a slide's fit and counts (after recording it, or when another process
        registered the slide first)."""
        self._fits.pop(slide_no, None)
        self._fallbacks.pop(slide_no, None)

    def _count(self, slide_no: np.ndarray, fell_back: np.ndarray) -> None:
        for s in np.unique(slide_no):
            self._fallbacks[int(s)] = self._fallbacks.get(int(s), 0) + int(fell_back[slide_no == s].sum())

    def summary(self, slide_no: int) -> "StainRecord | None":
        """What `slide_stain` records for the slide (None for method `none`): a plain value
        that a Dask worker returns to the writer."""
        method = self.settings.method
        if method == "none":
            return None
        sl = self.slides[slide_no]
        fitted = self._fits.get(slide_no) if method == "macenko" else None
        fit = fitted.fit if fitted is not None else None
        ok = fit is not None and fit.ok
        return StainRecord(
            sl.slide_id, method,
            stain_matrix=None if not ok else np.asarray(fit.stain_matrix, dtype=float).tolist(),
            max_c=None if not ok else np.asarray(fit.max_c, dtype=float).tolist(),
            tiles_sampled=fitted.tiles_sampled if fitted is not None else None,
            n_tiles=len(sl), tiles_fallback=self._fallbacks.get(slide_no, 0),
            note=fit.reason if fit is not None and not fit.ok else None)

    def record(self, conn: sa.Connection, embedding_set_id: int, slide_no: int) -> str | None:
        """Write the slide's row of `slide_stain` (in the caller's transaction, the one that
        registers the slide's array) and forget the slide; returns a warning for a slide that
        was not normalised, else None. Nothing is written for method `none`."""
        rec = self.summary(slide_no)
        self.forget(slide_no)
        return None if rec is None else rec.write(conn, embedding_set_id)


@dataclass(frozen=True)
class StainRecord:
    """A slide's `slide_stain` row (see SlideStainer.summary)."""
    slide_id: str
    method: str
    stain_matrix: list | None
    max_c: list | None
    tiles_sampled: int | None
    n_tiles: int
    tiles_fallback: int
    note: str | None

    def write(self, conn: sa.Connection, embedding_set_id: int) -> str | None:
        """Insert the row; a warning for a slide that was not normalised, else None."""
        record_slide_stain(conn, embedding_set_id, self.slide_id, method=self.method,
                           stain_matrix=self.stain_matrix, max_c=self.max_c,
                           tiles_sampled=self.tiles_sampled, n_tiles=self.n_tiles,
                           tiles_fallback=self.tiles_fallback, note=self.note)
        if self.method == "macenko" and self.note is not None:
            return f"slide {self.slide_id}: no stain normalisation ({self.note})"
        return None


def record_slide_stain(conn: sa.Connection, embedding_set_id: int, slide_id: str, *, method: str,
                       stain_matrix, max_c, tiles_sampled: int | None, n_tiles: int,
                       tiles_fallback: int, note: str | None) -> None:
    conn.exec_driver_sql(
        "INSERT INTO slide_stain (embedding_set_id, slide_id, method, stain_matrix, max_concentrations, "
        "tiles_sampled, n_tiles, tiles_fallback, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (embedding_set_id, slide_id, method,
         None if stain_matrix is None else np.asarray(stain_matrix, dtype=float).tolist(),
         None if max_c is None else np.asarray(max_c, dtype=float).tolist(),
         tiles_sampled, int(n_tiles), int(tiles_fallback), note))
