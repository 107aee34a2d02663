"""Stains and scanners of synthetic slides: the reference H&E stain, and per-site variation.

Colour is Beer-Lambert mixing of two stain optical densities (OD per unit concentration,
R, G, B). A site (a hospital's lab and scanner) stains and scans all its slides alike: its
own stain vectors (each channel's OD scaled by a log-normal factor), its own stain
intensities, and its own scanner blur (a Gaussian point-spread, sigma in um). Slides of one
case come from one site, as a case's slides do in TCGA (the tissue source site is in the
barcode).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Reference stain, tuned to look like the CMU sample slide: stroma about (205, 140, 180),
# nuclei about (60, 35, 90).
OD_HEMATOXYLIN = np.array([0.95, 1.25, 0.62], np.float32)
OD_EOSIN = np.array([0.3, 1.0, 0.5], np.float32)
OD_GLASS = np.array([0.045, 0.05, 0.055], np.float32)

# At stain_variation 1: log-sd of each OD channel, half-range of the intensity factors
# (log-uniform), and the largest scanner blur (sigma, um). Chosen by eye: hue shifts towards
# blue or magenta, paler or darker slides, a slightly soft scanner (not fitted to real sites).
_OD_LOG_SD = 0.12
_INTENSITY_LOG_RANGE = 0.25
_MAX_BLUR_UM = 0.8


@dataclass(frozen=True)
class SiteStain:
    """How one site's slides are stained and scanned."""

    code: str                    # TCGA-like tissue source site code in the slide barcodes
    od_hematoxylin: tuple[float, float, float] = tuple(OD_HEMATOXYLIN.tolist())
    od_eosin: tuple[float, float, float] = tuple(OD_EOSIN.tolist())
    hematoxylin_scale: float = 1.0   # stain intensity (concentration factor)
    eosin_scale: float = 1.0
    blur_um: float = 0.0             # scanner point-spread sigma

    @property
    def is_reference(self) -> bool:
        return self == SiteStain(self.code)

    def to_dict(self) -> dict:
        return {"code": self.code, "od_hematoxylin": [round(v, 5) for v in self.od_hematoxylin],
                "od_eosin": [round(v, 5) for v in self.od_eosin],
                "hematoxylin_scale": round(self.hematoxylin_scale, 5),
                "eosin_scale": round(self.eosin_scale, 5), "blur_um": round(self.blur_um, 5)}


def site_code(i: int, n_sites: int) -> str:
    """'SY' for a single-site cohort (histstore's synthetic project code); 'SA', 'SB', ...
    for several sites."""
    if n_sites == 1:
        return "SY"
    return "S" + chr(ord("A") + i)


def make_sites(n_sites: int, variation: float, seed: int) -> list[SiteStain]:
    """n_sites sites. One site: the reference stain, no blur. Several: each draws its stain
    vectors, intensities and blur (scaled by `variation`; 0 gives reference-stained sites)."""
    if n_sites == 1:
        return [SiteStain(site_code(0, 1))]
    rng = np.random.default_rng([seed, 7103])
    out = []
    for i in range(n_sites):
        od_h = OD_HEMATOXYLIN * np.exp(rng.normal(0, _OD_LOG_SD * variation, 3))
        od_e = OD_EOSIN * np.exp(rng.normal(0, _OD_LOG_SD * variation, 3))
        hs, es = np.exp(rng.uniform(-1, 1, 2) * _INTENSITY_LOG_RANGE * variation)
        blur = float(rng.uniform(0, _MAX_BLUR_UM * variation))
        out.append(SiteStain(site_code(i, n_sites), tuple(float(v) for v in od_h),
                             tuple(float(v) for v in od_e), float(hs), float(es), blur))
    return out
