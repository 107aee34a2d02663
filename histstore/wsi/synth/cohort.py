"""A synthetic cohort: slides named like TCGA slides plus the tables a user would import.

`synth_cohort` writes slides named like TCGA slides (`TCGA-SY-0001-01Z-00-DX1` for a tumour
sample, `...-11Z-...` for normal tissue; the case id is the first 12 characters), plus
manifest.csv, labels.csv, foldchanges.csv (genes that track the case's tumour burden strongly,
weakly or not at all, see GENES) and truth.json (planted regions as polygons in level-0 px).
CSV files end lines with "\n", as pandas and DuckDB write them.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histstore.wsi.synth.slide import SynthSlide, synth_slide

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

    def truth(self) -> dict[str, Any]:
        return json.loads(self.truth_path.read_text())

    @property
    def tumor_slides(self) -> list[SynthSlide]:
        return [s for s in self.slides if s.tumor]


def slide_barcode(case: int, tumor: bool, dx: int, project: str = "SY") -> str:
    """TCGA-style slide barcode: TCGA-SY-0001-01Z-00-DX1 (01 = primary tumour, 11 = normal)."""
    return f"TCGA-{project}-{case:04d}-{'01' if tumor else '11'}Z-00-DX{dx}"


def synth_cohort(
    out_dir: str | Path,
    n_slides: int = 20,
    seed: int = 0,
    size: tuple[int, int] = (2048, 2048),
    mpp: float = 0.5,
    slides_per_case: int = 2,
    burden_range: tuple[float, float] = (0.1, 0.5),
    jpeg_quality: int = 85,
) -> SynthCohort:
    """Write a synthetic cohort of `n_slides` slides under out_dir.

    Cases get `slides_per_case` slides, alternating tumour (sample type 01) and normal (11),
    so with 2 per case half the slides are tumour. Each case draws a tumour burden in
    burden_range: the fraction of its tumour slides' tissue covered by planted regions.
    foldchanges.csv: per case and gene, log2FC = base + slope * (measured burden - 0.3) + noise
    (see GENES), p_adj from a normal approximation, BH-adjusted within the case.
    """
    if n_slides < 1:
        raise ValueError("n_slides must be >= 1")
    if slides_per_case < 1:
        raise ValueError("slides_per_case must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    rng = np.random.default_rng(root.spawn(1)[0])
    n_cases = math.ceil(n_slides / slides_per_case)
    burdens = rng.uniform(*burden_range, n_cases)
    slide_seeds = root.generate_state(n_slides + 1, dtype=np.uint32)[1:]

    slides: list[SynthSlide] = []
    for i in range(n_slides):
        case, k = divmod(i, slides_per_case)
        tumor = k % 2 == 0
        sid = slide_barcode(case + 1, tumor, k // 2 + 1)
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
            )
        )

    # measured burden per case: mean tumour fraction of its tumour slides
    case_ids = sorted({s.case_id for s in slides})
    case_burden = {
        c: float(np.mean([s.tumor_area_fraction for s in slides if s.case_id == c and s.tumor] or [0.0]))
        for c in case_ids
    }

    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "slide_id", "case_id"])
        for s in slides:
            w.writerow([s.path.name, s.slide_id, s.case_id])
    labels = out / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["slide_id", "tumor"])
        for s in slides:
            w.writerow([s.slide_id, "tumor" if s.tumor else "normal"])

    gene_rng = np.random.default_rng(root.spawn(2)[1])
    base = {g: float(gene_rng.normal(0, 0.3)) for g, _, _ in GENES}
    foldchanges = out / "foldchanges.csv"
    with foldchanges.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["case_id", "gene", "log2_fold_change", "p_adj"])
        for c in case_ids:
            lfc = np.array(
                [
                    base[g] + slope * (case_burden[c] - 0.3) + gene_rng.normal(0, _NOISE_SD[s])
                    for g, s, slope in GENES
                ]
            )
            p = np.array([math.erfc(abs(v) / 0.5 / math.sqrt(2)) for v in lfc])
            p_adj = _bh_adjust(p)
            for (g, _, _), v, q in zip(GENES, lfc, p_adj):
                w.writerow([c, g, f"{v:.4f}", f"{q:.4g}"])

    truth = {
        "seed": seed,
        "mpp": mpp,
        "size": list(size),
        "genes": {g: {"strength": s, "slope": slope} for g, s, slope in GENES},
        "cases": {c: {"burden": case_burden[c]} for c in case_ids},
        "slides": {s.slide_id: s.truth() for s in slides},
    }
    truth_path = out / "truth.json"
    truth_path.write_text(json.dumps(truth, indent=1))
    return SynthCohort(out, slides, manifest, labels, foldchanges, truth_path, case_burden)


def _bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values."""
    n = p.size
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.clip(adj, 0, 1)
    return out
