"""TCGA barcodes: the pattern (patient and sample type) and the default case id of a slide."""
from __future__ import annotations

import re

# TCGA barcode: TCGA-TSS-PPPP-SSV-... ; SS = sample type (01-09 tumour, 10-19 normal, 20-29 control)
TCGA_BARCODE = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})-(\d{2})[A-Z]?", re.IGNORECASE)


def default_case_id(slide_id: str) -> str:
    """The TCGA patient barcode (first 12 characters) for TCGA names, else the slide_id."""
    m = TCGA_BARCODE.match(slide_id)
    return m.group(1).upper() if m else slide_id
