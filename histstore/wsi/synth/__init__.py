"""Synthetic H&E-like slides and cohorts with planted tumour regions, for tests and demos.

One job per module:

- `image`  : the image model (stain colours, deterministic noise, `SlideModel`, `make_slide_model`)
- `tiff`   : `write_slide_tiff`, the pyramidal tiled JPEG TIFF writer (streams large slides)
- `slide`  : `synth_slide`, one slide on disk with its ground truth (`SynthSlide`)
- `cohort` : `synth_cohort`, slides + manifest / labels / fold-change CSVs + truth.json
- `truth`  : `tumor_fraction_of_tiles`, planted-region coverage of tiles

The names below are the package's API; everything here needs only numpy at import (cv2 and
tifffile are imported where pixels are drawn or written).
"""
from __future__ import annotations

from histstore.wsi.synth.cohort import GENES, SynthCohort, slide_barcode, synth_cohort
from histstore.wsi.synth.image import SlideModel, make_slide_model, value_noise
from histstore.wsi.synth.slide import SynthSlide, synth_slide
from histstore.wsi.synth.tiff import write_slide_tiff
from histstore.wsi.synth.truth import tumor_fraction_of_tiles

__all__ = ["GENES", "SlideModel", "SynthCohort", "SynthSlide", "make_slide_model", "slide_barcode",
           "synth_cohort", "synth_slide", "tumor_fraction_of_tiles", "value_noise", "write_slide_tiff"]
