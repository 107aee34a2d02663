"""histstore: a feature store and experiment database for computational pathology.

Implements HistCode (arXiv 2204.11994): AdCo-pretrained tile encoders, tile embeddings in
zarr, gated-attention MIL over slides, with every artefact catalogued in DuckDB.
"""

__version__ = "0.1.0"
