"""A synthetic cohort: slides named like TCGA slides plus the tables a user would import.

`synth_cohort` writes slides named like TCGA slides (`TCGA-SY-0001-01Z-00-DX1` for a tumour
sample, `...-11Z-...` for normal tissue; the case id is the first 12 characters; the second
field is the site), plus manifest.csv, labels.csv (tumour/normal), sites.csv (each slide's
site, importable as labels: `histstore labels import sites.csv --task site`), foldchanges.csv
and truth.json (the difficulty settings, sites, planted regions and gene subregions as
polygons in level-0 px, per-case witness rates and expressed genes).
CSV files end lines with "\n", as pandas and DuckDB write them.

Fold changes (GENES: strong, weak and 'none' genes) follow one of two models:
- burden (default): log2FC = base + slope * (case's measured tumour burden - 0.3) + noise;
  every tumour tile carries the signal.
- gene_regions: each signal gene is differentially expressed in a case with probability 1/2;
  then log2FC = base + effect (+-2.5 strong, +-1.4 weak) + noise, and each of the case's
  tumour slides shows the gene's mark (`marks.MARKS`) in a subregion of its tumour. Only that
  subregion carries the gene's signal. Subregions are placed independently (two genes' may
  overlap), or with separate_genes each in tumour the others left free.
The difficulty knobs are documented in `difficulty.py`.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histstore.wsi.synth.difficulty import Difficulty, as_range
from histstore.wsi.synth.marks import MARKS
from histstore.wsi.synth.slide import SynthSlide, synth_slide
from histstore.wsi.synth.stain import make_sites

# (gene, strength, log2FC per unit of tumour burden). Burden is the fraction of a case's
# tumour-slide tissue that is tumour; genes with strength 'none' are noise.
GENES: tuple[tuple[str, str, float], ...] = (
    ("TP53", "strong", 6.0),
    ("MYC", "strong", 5.0),
    ("EGFR", "strong", -5.0),
    ("CDKN2A", "strong", -6.0),
    ("KRAS", "weak", 2.0),
    ("PIK3CA", "weak", 1.5),
    ("PTEN", "weak", -2.0),
    ("BRAF", "weak", 1.5),
    ("STK11", "none", 0.0),
    ("KEAP1", "none", 0.0),
    ("NF1", "none", 0.0),
    ("SMARCA4", "none", 0.0),
)
_NOISE_SD = {"strong": 0.25, "weak": 0.8, "none": 0.8}
# gene_regions model: log2FC of an expressed gene (sign of its slope), and noise
_REGION_EFFECT = {"strong": 2.5, "weak": 1.4, "none": 0.0}
_REGION_NOISE_SD = {"strong": 0.25, "weak": 0.6, "none": 0.8}


@dataclass
class SynthCohort:
    """Files written by `synth_cohort` (all under out_dir)."""

    out_dir: Path
    slides: list[SynthSlide]
    manifest: Path
    labels: Path
    foldchanges: Path
    truth_path: Path
    case_burden: dict[str, float]
    sites: Path | None = None
    difficulty: Difficulty = Difficulty()

    def truth(self) -> dict[str, Any]:
        return json.loads(self.truth_path.read_text())

    @property
    def tumor_slides(self) -> list[SynthSlide]:
        return [s for s in self.slides if s.tumor]


def slide_barcode(case: int, tumor: bool, dx: int, project: str = "SY") -> str:
    """TCGA-style slide barcode: TCGA-SY-0001-01Z-00-DX1 (01 = primary tumour, 11 = normal)."""
    return f"TCGA-{project}-{case:04d}-{'01' if tumor else '11'}Z-00-DX{dx}"


def _case_layout(n_slides: int, per_case: tuple[int, int], seed: int) -> list[tuple[int, int, bool]]:
    """(case index, slide index within the case, tumour?) of each slide. A fixed number per
    case alternates tumour, normal, tumour, ...; a range draws the count per case and starts
    with tumour or normal at random, so that tumour and normal slides stay balanced."""
    lo, hi = per_case
    if lo == hi:
        return [(*divmod(i, lo), i % lo % 2 == 0) for i in range(n_slides)]
    rng = np.random.default_rng([seed, 211])
    out: list[tuple[int, int, bool]] = []
    case = 0
    while len(out) < n_slides:
        k = int(rng.integers(lo, hi + 1))
        first_tumor = bool(rng.random() < 0.5)
        out += [(case, j, (j % 2 == 0) == first_tumor) for j in range(k)][: n_slides - len(out)]
        case += 1
    return out


def synth_cohort(
    out_dir: str | Path,
    n_slides: int = 20,
    seed: int = 0,
    size: tuple[int, int] = (2048, 2048),
    mpp: float = 0.5,
    slides_per_case: int | tuple[int, int] = 2,
    witness_rate: float | tuple[float, float] = (0.1, 0.5),
    jpeg_quality: int = 85,
    *,
    contrast: float = 1.0,
    sites: int = 1,
    stain_variation: float = 1.0,
    gene_regions: bool = False,
    separate_genes: bool = False,
) -> SynthCohort:
    """Write a synthetic cohort of `n_slides` slides under out_dir.

    Cases get `slides_per_case` slides (a number, or a (low, high) range drawn per case),
    alternating tumour (sample type 01) and normal (11), so with 2 per case half the slides
    are tumour. Each case draws a witness rate in `witness_rate` (a number or a (low, high)
    range): the fraction of its tumour slides' tissue covered by planted regions. contrast,
    sites, stain_variation, gene_regions, separate_genes: see `difficulty.py`. Defaults reproduce the
    cohorts written before these knobs existed, slide for slide.
    foldchanges.csv: see the module docstring; p_adj from a normal approximation,
    BH-adjusted within the case.
    """
    from histstore.errors import InvalidInput
    from histstore.evaluation.stats import bh_adjust

    if n_slides < 1:
        raise InvalidInput("n_slides must be >= 1")
    if min(size) < 16 or not mpp > 0:
        raise InvalidInput(f"slides must be at least 16 x 16 px with mpp > 0, got {size[0]}x{size[1]} at {mpp}")
    diff = Difficulty(as_range(witness_rate, float, "witness rate"), float(contrast), sites,
                      float(stain_variation), as_range(slides_per_case, int, "slides per case"),
                      bool(gene_regions), bool(separate_genes))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    rng = np.random.default_rng(root.spawn(1)[0])
    layout = _case_layout(n_slides, diff.slides_per_case, seed)
    n_cases = layout[-1][0] + 1
    burdens = rng.uniform(*diff.witness_rate, n_cases)
    slide_seeds = root.generate_state(n_slides + 1, dtype=np.uint32)[1:]
    site_list = make_sites(diff.sites, diff.stain_variation, seed)
    case_site = np.random.default_rng([seed, 307]).permutation(np.arange(n_cases) % diff.sites)
    expressed = _expressed_genes(n_cases, seed) if diff.gene_regions else [dict() for _ in range(n_cases)]

    slides: list[SynthSlide] = []
    for i, (case, k, tumor) in enumerate(layout):
        site = site_list[int(case_site[case])]
        # DX1, DX2, ...: the slide's number among its case's slides of the same sample type
        dx = sum(t == tumor for c, _, t in layout[:i] if c == case) + 1
        sid = slide_barcode(case + 1, tumor, dx, project=site.code)
        marks = {g: MARKS[g] for g, on in expressed[case].items() if on} if tumor else None
        slides.append(
            synth_slide(
                out / f"{sid}.tiff",
                size=size,
                mpp=mpp,
                seed=int(slide_seeds[i]),
                tumor=tumor,
                burden=float(burdens[case]),
                jpeg_quality=jpeg_quality,
                slide_id=sid,
                contrast=diff.contrast,
                stain=site,
                marks=marks,
                separate_genes=diff.separate_genes,
            )
        )

    # measured burden per case: mean tumour fraction of its tumour slides
    case_index = {s.case_id: layout[i][0] for i, s in enumerate(slides)}
    case_ids = sorted(case_index)
    case_burden = {
        c: float(np.mean([s.tumor_area_fraction for s in slides if s.case_id == c and s.tumor] or [0.0]))
        for c in case_ids
    }

    manifest = out / "manifest.csv"
    _write_csv(manifest, ["path", "slide_id", "case_id"], ([s.path.name, s.slide_id, s.case_id] for s in slides))
    labels = out / "labels.csv"
    _write_csv(labels, ["slide_id", "tumor"], ([s.slide_id, "tumor" if s.tumor else "normal"] for s in slides))
    sites_csv = out / "sites.csv"
    _write_csv(sites_csv, ["slide_id", "site"], ([s.slide_id, s.site] for s in slides))

    foldchanges = out / "foldchanges.csv"
    rows = []
    if diff.gene_regions:
        gene_rng = np.random.default_rng([seed, 409])
        base = {g: float(gene_rng.normal(0, 0.15)) for g, _, _ in GENES}
        lfcs = {c: np.array([base[g] + math.copysign(_REGION_EFFECT[st], slope or 1.0)
                             * expressed[case_index[c]].get(g, False) + gene_rng.normal(0, _REGION_NOISE_SD[st])
                             for g, st, slope in GENES]) for c in case_ids}
    else:
        gene_rng = np.random.default_rng(root.spawn(2)[1])
        base = {g: float(gene_rng.normal(0, 0.3)) for g, _, _ in GENES}
        lfcs = {c: np.array([base[g] + slope * (case_burden[c] - 0.3) + gene_rng.normal(0, _NOISE_SD[st])
                             for g, st, slope in GENES]) for c in case_ids}
    for c in case_ids:
        lfc = lfcs[c]
        p = np.array([math.erfc(abs(v) / 0.5 / math.sqrt(2)) for v in lfc])
        for (g, _, _), v, q in zip(GENES, lfc, bh_adjust(p)):
            rows.append([c, g, f"{v:.4f}", f"{q:.4g}"])
    _write_csv(foldchanges, ["case_id", "gene", "log2_fold_change", "p_adj"], rows)

    genes_truth = {g: {"strength": st, "slope": slope} for g, st, slope in GENES}
    if diff.gene_regions:
        for g, st, slope in GENES:
            genes_truth[g] = {"strength": st, "effect": math.copysign(_REGION_EFFECT[st], slope or 1.0),
                              "noise_sd": _REGION_NOISE_SD[st],
                              "mark": MARKS[g].to_dict() if g in MARKS else None}
    truth = {
        "seed": seed,
        "mpp": mpp,
        "size": list(size),
        "difficulty": diff.to_dict(),
        "gene_model": "regions" if diff.gene_regions else "burden",
        "sites": {s.code: s.to_dict() for s in site_list},
        "genes": genes_truth,
        "cases": {c: {"burden": case_burden[c], "target_witness_rate": float(burdens[case_index[c]]),
                      "site": site_list[int(case_site[case_index[c]])].code,
                      "n_slides": sum(s.case_id == c for s in slides),
                      **({"expressed": sorted(g for g, on in expressed[case_index[c]].items() if on)}
                         if diff.gene_regions else {})}
                  for c in case_ids},
        "slides": {s.slide_id: s.truth() for s in slides},
    }
    truth_path = out / "truth.json"
    truth_path.write_text(json.dumps(truth, indent=1))
    return SynthCohort(out, slides, manifest, labels, foldchanges, truth_path, case_burden, sites_csv, diff)


def _expressed_genes(n_cases: int, seed: int) -> list[dict[str, bool]]:
    """Per case: is each signal gene differentially expressed (probability 1/2)."""
    rng = np.random.default_rng([seed, 401])
    return [{g: bool(rng.random() < 0.5) for g, st, _ in GENES if st != "none"} for _ in range(n_cases)]


def _write_csv(path: Path, header: list[str], rows) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
