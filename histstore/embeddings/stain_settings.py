"""Stain normalisation settings of an embedding set, importable without torch (the CLI's
`--stain-norm` choices come from here). The work is in histstore.embeddings.slide_stain."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from histstore.errors import InvalidInput

# `--stain-norm` values: the first is the default
STAIN_NORMS = ("macenko", "macenko-tile", "none")


@dataclass(frozen=True)
class StainSettings:
    """How tiles are stain-normalised; `as_settings()` goes into the embedding set's settings
    (so sets made differently have different settings keys)."""
    method: str = "macenko"
    max_tiles: int = 128        # per-slide fit: tiles sampled per slide
    seed: int = 0               # per-slide fit: seed of the tile sample
    max_fit_pixels: int = 4096  # pixels per tile used for fitting (a regular subsample)
    max_pooled_pixels: int = 1 << 17  # per-slide fit: pixels of the pooled sample (subsampled)

    def __post_init__(self):
        check_stain_norm(self.method)
        if min(self.max_tiles, self.max_fit_pixels, self.max_pooled_pixels) < 1:
            raise InvalidInput("stain fit: max_tiles, max_fit_pixels and max_pooled_pixels must be >= 1")

    def as_settings(self) -> dict | None:
        if self.method == "none":
            return None
        if self.method == "macenko-tile":
            return {"scope": "tile", "max_fit_pixels": self.max_fit_pixels}
        return {"scope": "slide", **{k: v for k, v in asdict(self).items() if k != "method"}}


def check_stain_norm(value: str) -> str:
    if value not in STAIN_NORMS:
        raise InvalidInput(f"--stain-norm must be one of {', '.join(STAIN_NORMS)}, not {value!r}")
    return value
