"""Interpretability and reports: attention heatmaps of slides, and a run's evaluation page.

- `heatmap.render_heatmap(store, run_id, slide_id, ...)`: the slide thumbnail with each tile's
  attention (HistCode's "spatial deconvolution"), as PNG or QuPath-readable GeoJSON, plus an
  optional gallery of the most and least attended tiles (loading: `slide_attention`; pixels:
  `raster`; files: `heatmap_png`, `heatmap_geojson`, `tile_gallery`).
- `report.write_report(store, run_id, ...)`: ROC curves, confusion matrix, per-fold metrics,
  training curves (or predicted-vs-true for regression, AUC-vs-fold-change for gene runs),
  as PNGs and one self-contained HTML page.

Everything reads the catalog and the slide files; nothing here imports torch, and matplotlib
is imported inside the drawing functions (Agg canvas, no pyplot), so importing this package
is cheap. Every file written is registered in the catalog's `artifacts` table.
"""
