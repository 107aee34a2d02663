"""How hard a synthetic cohort is: the knobs of `synth_cohort`, validated, and recorded in
its truth file.

- witness_rate (lo, hi): the fraction of a tumour slide's tissue that is tumour, drawn per case
  uniformly in [lo, hi] (lo == hi: every tumour slide alike). Low rates are the hard MIL
  regime: a few tumour tiles among hundreds of normal ones. Default (0.1, 0.5).
- contrast: how different tumour tiles look, 0 (tumour drawn as stroma: no signal) to 1
  (today's tumour texture: larger, denser, darker, irregular nuclei, less eosin). Default 1.
- sites, stain_variation: slides are grouped by case into `sites` sites, each with its own
  stain vectors, stain intensities and scanner blur (`stain.py`), scaled by stain_variation.
  One site (the default) is the reference stain with no blur.
- slides_per_case (lo, hi): each case gets lo..hi slides (drawn per case), alternating tumour
  (DX1), normal, tumour (DX2), ... Default (2, 2): one tumour and one normal slide per case.
- gene_regions: fold changes come from gene subregions (`marks.py`) instead of from the
  case's tumour burden. Default off.
- separate_genes (needs gene_regions): each gene's subregion is placed in tumour that the
  case's other genes' subregions left free, so different genes' signals sit in different
  places (a joint model's per-gene attention can then be told apart); off, subregions are
  placed independently and may overlap. Default off.
"""
from __future__ import annotations

from dataclasses import dataclass

from histstore.errors import InvalidInput

MAX_SITES = 26


@dataclass(frozen=True)
class Difficulty:
    witness_rate: tuple[float, float] = (0.1, 0.5)
    contrast: float = 1.0
    sites: int = 1
    stain_variation: float = 1.0
    slides_per_case: tuple[int, int] = (2, 2)
    gene_regions: bool = False
    separate_genes: bool = False

    def __post_init__(self):
        lo, hi = self.witness_rate
        if not (0 < lo <= hi <= 0.8):
            raise InvalidInput(f"witness rate must lie in (0, 0.8] with low <= high, got {lo:g}-{hi:g}")
        if not 0.0 <= self.contrast <= 1.0:
            raise InvalidInput(f"contrast must lie in [0, 1], got {self.contrast:g}")
        if not (isinstance(self.sites, int) and 1 <= self.sites <= MAX_SITES):
            raise InvalidInput(f"sites must be an integer from 1 to {MAX_SITES}, got {self.sites!r}")
        if not 0.0 <= self.stain_variation <= 3.0:
            raise InvalidInput(f"stain variation must lie in [0, 3], got {self.stain_variation:g}")
        a, b = self.slides_per_case
        if not (isinstance(a, int) and isinstance(b, int) and 1 <= a <= b <= 9):
            raise InvalidInput(f"slides per case must be integers 1 <= low <= high <= 9, got {a}-{b}")
        if self.separate_genes and not self.gene_regions:
            raise InvalidInput("separate gene subregions need gene regions (--gene-regions)")

    def to_dict(self) -> dict:
        return {"witness_rate": list(self.witness_rate), "contrast": self.contrast, "sites": self.sites,
                "stain_variation": self.stain_variation, "slides_per_case": list(self.slides_per_case),
                "gene_regions": self.gene_regions, "separate_genes": self.separate_genes}


def as_range(value, kind: type, what: str) -> tuple:
    """A number or a (low, high) pair as a (low, high) tuple of `kind`."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise InvalidInput(f"{what}: give one value or a (low, high) pair, got {value!r}")
        lo, hi = value
    else:
        lo = hi = value
    try:
        out = (kind(lo), kind(hi))
    except (TypeError, ValueError):
        raise InvalidInput(f"{what}: not a number: {value!r}") from None
    if kind is int and (out[0] != lo or out[1] != hi):
        raise InvalidInput(f"{what}: whole numbers only, got {value!r}")
    return out


def parse_range(text: str, kind: type, what: str) -> tuple:
    """'0.05' -> (0.05, 0.05); '0.1-0.5' or '0.1,0.5' -> (0.1, 0.5) (the CLI's form)."""
    parts = text.replace(",", "-").split("-") if text.count("-") <= 1 else [text]
    parts = [p.strip() for p in parts]
    if len(parts) not in (1, 2) or not all(parts):
        raise InvalidInput(f"{what}: give a value or LOW-HIGH, got {text!r}")
    try:
        vals = [kind(p) for p in parts]
    except ValueError:
        raise InvalidInput(f"{what}: not a number: {text!r}") from None
    return (vals[0], vals[-1])
