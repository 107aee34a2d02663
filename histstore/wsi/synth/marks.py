"""Gene marks: how a gene's expression shows in the morphology of its own tumour subregion.

With `gene_regions` on, a case in which a signal gene is differentially expressed carries,
in each of its tumour slides, a subregion of the tumour (a blob inside one planted region)
whose tumour cells look different in that gene's own way: larger or smaller nuclei, darker
or paler chromatin, spindle shapes, irregular outlines, paler or denser cytoplasm. A model
for that gene must find that subregion; the rest of the tumour says nothing about the gene.
Strong genes have marked changes, weak genes subtle ones, and 'none' genes have no mark.

Each mark multiplies the tumour nuclei's radius, largest aspect ratio and darkness, adds to
their outline irregularity, scales the eosin (stroma / cytoplasm) density and adds
basophilic cytoplasm (haematoxylin) inside the subregion.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GeneMark:
    radius: float = 1.0       # x tumour nucleus radius
    aspect: float = 1.0       # x largest aspect ratio (spindle cells > 1)
    dark: float = 1.0         # x chromatin darkness
    irregular: float = 0.0    # + outline irregularity (0.22 for tumour nuclei)
    eosin: float = 1.0        # x eosin density
    cytoplasm: float = 0.0    # + haematoxylin density of the cytoplasm

    def to_dict(self) -> dict:
        return asdict(self)


# One mark per signal gene of cohort.GENES (strong: marked; weak: subtle).
MARKS: dict[str, GeneMark] = {
    "TP53": GeneMark(radius=1.45, irregular=0.2),             # pleomorphic, giant nuclei
    "MYC": GeneMark(radius=0.75, dark=1.35),                  # small hyperchromatic nuclei
    "EGFR": GeneMark(aspect=2.4, radius=0.9),                 # spindle cells
    "CDKN2A": GeneMark(eosin=0.35, cytoplasm=-0.06, dark=0.85),  # clear cells
    "KRAS": GeneMark(radius=1.15, eosin=0.8),                 # subtle: slightly larger
    "PIK3CA": GeneMark(dark=0.85),                            # subtle: vesicular chromatin
    "PTEN": GeneMark(aspect=1.35),                            # subtle: slightly elongated
    "BRAF": GeneMark(irregular=0.1, cytoplasm=0.03),          # subtle: rougher outlines
}
