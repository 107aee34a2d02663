"""Interoperability: import tile features made by other extractors (CLAM, TRIDENT, foundation
model scripts) and export features and results in the formats other tools read.

    import_features(store, DIR, name=..., cohort=...)   -> ImportReport   (importer.py; planning
        in import_plan.py, tiling matches in tile_matching.py, zarr writing in feature_writer.py)
    export_features(store, SET, DIR)                     -> FeatureExport  (exporter.py)
    export_predictions(store, RUN, FILE) / export_attention(store, RUN, FILE) -> TableExport

Formats and matching rules: docs/interop.md. No torch at import (only .pt files load it).
"""
from __future__ import annotations

from histstore.interop.exporter import (ATTENTION_COLUMNS, PREDICTION_COLUMNS, FeatureExport, TableExport,
                                        export_attention, export_features, export_predictions)
from histstore.interop.importer import FileOutcome, ImportReport, import_features

__all__ = ["import_features", "ImportReport", "FileOutcome", "export_features", "FeatureExport",
           "export_predictions", "export_attention", "TableExport", "PREDICTION_COLUMNS",
           "ATTENTION_COLUMNS"]
