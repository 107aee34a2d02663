"""One synthetic slide on disk: `synth_slide` draws a slide model, writes its TIFF and
returns the slide's ground truth (`SynthSlide`: planted regions in level-0 px)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histstore.errors import InvalidInput
from histstore.wsi.synth.image import make_slide_model
from histstore.wsi.synth.marks import GeneMark
from histstore.wsi.synth.stain import SiteStain
from histstore.wsi.synth.tiff import write_slide_tiff


@dataclass
class SynthSlide:
    """One written synthetic slide and its ground truth (regions in level-0 px)."""

    slide_id: str
    case_id: str
    path: Path
    tumor: bool
    width: int
    height: int
    mpp: float
    regions: list[list[list[float]]] = field(default_factory=list)
    tumor_area_fraction: float = 0.0  # tumour area / tissue area (the measured witness rate)
    tissue_area_fraction: float = 0.0  # tissue area / slide area
    site: str | None = None
    gene_regions: dict[str, list[list[float]]] = field(default_factory=dict)  # gene -> polygon

    def truth(self) -> dict[str, Any]:
        out = {
            "slide_id": self.slide_id,
            "case_id": self.case_id,
            "path": self.path.name,
            "tumor": self.tumor,
            "width": self.width,
            "height": self.height,
            "mpp": self.mpp,
            "tumor_area_fraction": self.tumor_area_fraction,
            "tissue_area_fraction": self.tissue_area_fraction,
            "regions": [{"shape": "polygon", "points": r} for r in self.regions],
        }
        if self.site is not None:
            out["site"] = self.site
        if self.gene_regions:
            # a gene's mark shows only where its polygon overlaps the planted regions
            out["gene_regions"] = {g: {"shape": "polygon", "points": p} for g, p in self.gene_regions.items()}
        return out


def synth_slide(
    path: str | Path,
    *,
    size: tuple[int, int] = (2048, 2048),
    mpp: float = 0.5,
    seed: int = 0,
    tumor: bool = True,
    burden: float = 0.3,
    n_regions: int | None = None,
    downsamples: tuple[int, ...] | None = None,
    jpeg_quality: int = 85,
    slide_id: str | None = None,
    case_id: str | None = None,
    contrast: float = 1.0,
    stain: SiteStain | None = None,
    marks: dict[str, GeneMark] | None = None,
    separate_genes: bool = False,
) -> SynthSlide:
    """Write one synthetic slide. size is (width, height) level-0 px.

    downsamples default: 1, 4, 16, ... (at most 4 levels) while a level is at least 128 px on
    its long side, so 2048 px gives 3 levels and 60000 px gives 4. Large sizes stream: e.g.
    `synth_slide(p, size=(60000, 60000), mpp=0.25)` for a benchmark.

    contrast, stain, marks and separate_genes: see `make_slide_model` (tumour look, site stain and scanner,
    gene subregions of a tumour slide).
    """
    width, height = int(size[0]), int(size[1])
    if width < 16 or height < 16:
        raise InvalidInput(f"slide too small: {width}x{height} px (at least 16 x 16)")
    if not mpp > 0:
        raise InvalidInput(f"mpp must be > 0, got {mpp!r}")
    if downsamples is None:
        downsamples = (1,)
        while max(width, height) / (downsamples[-1] * 4) >= 128 and len(downsamples) < 4:
            downsamples += (downsamples[-1] * 4,)
    model = make_slide_model(width, height, mpp, seed, tumor, burden, n_regions, contrast=contrast,
                             stain=stain, marks=marks, separate_genes=separate_genes)
    path = Path(path)
    write_slide_tiff(path, model, downsamples=tuple(downsamples), jpeg_quality=jpeg_quality)
    step = max(1.0, max(width, height) / 1024.0)
    tissue, tum = model.lowres_masks(step)
    slide_id = slide_id or path.name.split(".")[0]
    return SynthSlide(
        slide_id=slide_id,
        case_id=case_id or slide_id[:12],
        path=path,
        tumor=bool(tumor),
        width=width,
        height=height,
        mpp=float(mpp),
        regions=[r.tolist() for r in model.regions],
        tumor_area_fraction=float(tum.sum() / max(1, tissue.sum())),
        tissue_area_fraction=float(tissue.mean()),
        site=stain.code if stain is not None else None,
        gene_regions={g: p.tolist() for g, p in model.gene_regions.items()},
    )
