"""`histstore serve`: a read-only web app over a store (Starlette + uvicorn), with a deep-zoom
slide viewer (OpenSeadragon from npm, OpenSlide's DeepZoomGenerator on the server).

- `app.create_app(store)`: the ASGI app (routes, handlers, caches);
- `server.serve(store, host, port)`: runs it with uvicorn;
- `assets`: finding OpenSeadragon (never copied into this repository) and serving static files
  from a manifest;
- `render`: templates, tables, JSON, CSV/Parquet downloads; `caches`: LRU caches.

The data come from the library's read-only API (`histstore.browse`, `runs`, `cohorts`, `sql`,
`reports`); nothing here writes the store, and torch is never imported.
"""
