"""The read-only web app over a store (Starlette): pages for cohorts, slides, runs, comparisons
and SQL, a deep-zoom slide viewer with attention and tiling overlays, and the JSON/PNG/DZI
endpoints the viewer calls.

Every handler is a thin shell: it parses the URL's parameters (ids through `browse.as_int`,
slide ids as opaque strings looked up in the catalog), runs the blocking library call in the
thread pool (DuckDB and OpenSlide release the GIL), and renders. Library errors become HTTP
errors with their one-line message: NotFound/NotTested/MissingStep 404, InvalidInput/SQLError
400, ReadOnlyViolation 403, a busy catalog 503.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from histstore import browse
from histstore.errors import (HiststoreError, InvalidInput, MissingStep, NotFound, NotTested,
                              ReadOnlyViolation, SlideReadError, SQLError, StoreLocked)
from histstore.store import Store
from histstore.web import render
from histstore.web.assets import Manifest, find_openseadragon, openseadragon_version, own_static, viewer_static
from histstore.web.caches import LRU, ReportCache

SQL_SHOWN_ROWS = 1000
TOP_K = 10
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_NORMS = ("minmax", "percentile")
_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'self'")


def _status(exc: HiststoreError) -> int:
    if isinstance(exc, ReadOnlyViolation):
        return 403
    if isinstance(exc, (NotFound, NotTested, MissingStep)):
        return 404
    if isinstance(exc, (InvalidInput, SQLError)):
        return 400
    if isinstance(exc, StoreLocked):
        return 503
    if isinstance(exc, SlideReadError):
        return 502
    return 500


class ServeState:
    """What the app keeps between requests: the store, the viewer's files, the caches."""

    def __init__(self, store: Store, viewer_dir: Path, max_open_slides: int = 16):
        from histstore.wsi.deepzoom import DeepZoomCache

        self.store = store
        self.viewer_dir = viewer_dir
        self.viewer_version = openseadragon_version(viewer_dir)
        self.static: Manifest = own_static()
        self.vendor: Manifest = viewer_static(viewer_dir)
        self.deepzoom = DeepZoomCache(max_open=max_open_slides)
        self.slide_paths = LRU(4096)
        self.attention = LRU(32)
        self.overlays = LRU(64)
        self.reports = ReportCache(store)

    def slide_path(self, slide_id: str) -> Path:
        # a slide's file never changes under its id (a changed file is re-ingested as failed)
        return self.slide_paths.get_or_build(slide_id, lambda: browse.slide_image_path(self.store, slide_id))

    def close(self) -> None:
        self.reports.close()
        self.deepzoom.clear()


# ------------------------------------------------------------------------------ helpers
def _state(request: Request) -> ServeState:
    return request.app.state.serve


def _html(request: Request, template: str, status_code: int = 200, **ctx) -> HTMLResponse:
    st = _state(request)
    return HTMLResponse(render.page(template, store_root=str(st.store.root), path=request.url.path, **ctx),
                        status_code=status_code)


def _json(obj: Any, status_code: int = 200, cache: str = "no-store") -> Response:
    return Response(render.json_bytes(obj), status_code=status_code, media_type="application/json",
                    headers={"Cache-Control": cache})


def _param(request: Request, name: str, required: bool = False) -> str | None:
    v = request.query_params.get(name)
    if v is None or v == "":
        if required:
            raise InvalidInput(f"missing parameter {name!r}")
        return None
    return v


def _int_param(request: Request, name: str, required: bool = False) -> int | None:
    v = _param(request, name, required)
    return None if v is None else browse.as_int(v, name)


def _float_param(request: Request, name: str) -> float:
    v = _param(request, name, required=True)
    try:
        f = float(v)
    except ValueError:
        raise InvalidInput(f"{name} must be a number, got {v[:40]!r}") from None
    if not math.isfinite(f):
        raise InvalidInput(f"{name} must be a finite number")
    return f


def _slide_id(request: Request) -> str:
    sid = request.path_params["slide_id"]
    if not sid or "\x00" in sid or len(sid) > 512:
        raise NotFound(f"no slide {sid[:60]!r} in the catalog")
    return sid


# ------------------------------------------------------------------------------ pages
async def home(request: Request):
    st = _state(request)

    def load():
        from histstore.cohorts import list_cohorts
        from histstore.runs import list_runs
        from histstore.status import store_status

        return store_status(st.store), browse.running_jobs(st.store), list_cohorts(st.store), list_runs(st.store)

    status, jobs, cohorts, runs = await run_in_threadpool(load)
    recent = runs.slice(max(0, runs.num_rows - 10)) if runs.num_rows else runs
    return _html(request, "home.html", status=status, jobs=jobs, cohorts=cohorts, runs=recent)


async def cohorts_page(request: Request):
    st = _state(request)

    def load():
        from histstore.cohorts import list_cohorts

        return list_cohorts(st.store), browse.failed_slides(st.store)

    cohorts, failed = await run_in_threadpool(load)
    return _html(request, "cohorts.html", cohorts=cohorts, failed=failed)


async def cohort_page(request: Request):
    st = _state(request)
    name = request.path_params["name"]
    data = await run_in_threadpool(browse.cohort_page, st.store, name)
    return _html(request, "cohort.html", c=data.report, slides=data.slides)


async def slide_page(request: Request):
    st = _state(request)
    data = await run_in_threadpool(browse.slide_page, st.store, _slide_id(request))
    return _html(request, "slide.html", s=data)


async def qc_image(request: Request):
    st = _state(request)
    path = await run_in_threadpool(browse.qc_image_path, st.store, _slide_id(request),
                                   int(request.path_params["tiling_id"]))
    return Response(path.read_bytes(), media_type="image/png", headers={"Cache-Control": "max-age=3600"})


async def artifact(request: Request):
    st = _state(request)
    path, info = await run_in_threadpool(browse.artifact_path, st.store, int(request.path_params["artifact_id"]))
    types = {".png": "image/png", ".html": "text/html; charset=utf-8", ".geojson": "application/geo+json",
             ".json": "application/json"}
    media = types.get(path.suffix.lower(), "application/octet-stream")
    headers = {"Cache-Control": "no-cache"}
    if media == "application/octet-stream" or media.startswith("application/"):
        headers["Content-Disposition"] = f'attachment; filename="{render.quote_segment(path.name)}"'
    return Response(path.read_bytes(), media_type=media, headers=headers)


async def viewer_page(request: Request):
    st = _state(request)
    sid = _slide_id(request)
    want = {k: _int_param(request, k) for k in ("run", "fold", "gene")}

    def load():
        page = browse.slide_page(st.store, sid)
        path = st.slide_path(sid)
        info = st.deepzoom.info(path)
        runs = [r.to_dict() for r in browse.viewer_runs(st.store, sid)]
        return page, info, runs

    page, info, runs = await run_in_threadpool(load)
    from histstore.reports.overlays import DEFAULT_CMAP, colour_stops

    config = {
        "slide_id": page.slide["slide_id"],
        "dzi": f"/dzi/{render.quote_segment(page.slide['slide_id'])}.dzi",
        "api": f"/api/slides/{render.quote_segment(page.slide['slide_id'])}",
        "width": info.width, "height": info.height, "mpp": page.slide.get("mpp"),
        "tilings": [{"tiling_id": t["tiling_id"], "label": f"tiling {t['tiling_id']}: {t['tile_size']} px"
                     + (f" at {t['target_mpp']:g} µm/px" if t.get("target_mpp") else "") + f", {t['n_tiles']} tiles"}
                    for t in page.tilings],
        "runs": runs, "initial": want, "cmap": DEFAULT_CMAP, "colours": colour_stops(DEFAULT_CMAP),
        "prefix": "/vendor/openseadragon/images/",
    }
    return _html(request, "viewer.html", s=page, config=config, osd_version=st.viewer_version)


async def runs_page(request: Request):
    st = _state(request)

    def load():
        from histstore.runs import list_runs

        return browse.running_jobs(st.store), list_runs(st.store)

    jobs, runs = await run_in_threadpool(load)
    return _html(request, "runs.html", jobs=jobs, runs=runs)


async def run_page(request: Request):
    st = _state(request)
    rid = browse.as_int(request.path_params["run_id"], "run id")

    run = await run_in_threadpool(browse.run_settings, st.store, rid)
    return _html(request, "run.html", run=run)


async def run_report(request: Request):
    """The run's HTML report as `histstore report` draws it (figures embedded), drawn into the
    app's own cache folder: the store is not written."""
    st = _state(request)
    rid = browse.as_int(request.path_params["run_id"], "run id")
    try:
        res = await run_in_threadpool(st.reports.get, rid)
    except (MissingStep, InvalidInput) as exc:
        return _html(request, "report_missing.html", message=exc.message, hint=exc.hint)
    return HTMLResponse(res.html.read_text(encoding="utf-8"))


async def run_report_figure(request: Request):
    st = _state(request)
    rid = browse.as_int(request.path_params["run_id"], "run id")
    name = request.path_params["name"]
    res = await run_in_threadpool(st.reports.get, rid)
    # looked up among the figures the report drew, never joined onto a folder
    by_file = {p.name: p for p in res.figures.values()}
    path = by_file.get(name)
    if path is None:
        raise NotFound(f"run {rid}'s report has no figure {name[:60]!r}",
                       hint=f"figures: {', '.join(sorted(by_file)) or 'none'}")
    return Response(path.read_bytes(), media_type="image/png", headers={"Cache-Control": "no-cache"})


async def compare_page(request: Request):
    st = _state(request)
    raw = request.query_params.getlist("run")
    if len(raw) == 1 and "," in raw[0]:
        raw = raw[0].split(",")
    ids = [browse.as_int(r, "run") for r in raw if r.strip()]
    if len(ids) < 2:
        raise InvalidInput("pick two or more runs to compare", hint="e.g. /compare?run=1&run=2")
    if len(ids) > 12:
        raise InvalidInput(f"at most 12 runs side by side, got {len(ids)}")

    def load():
        from histstore.runs import compare_runs

        return compare_runs(st.store, ids), [browse.run_settings(st.store, r) for r in ids]

    table, runs = await run_in_threadpool(load)
    keys = sorted({k for r in runs for k in (r.get("settings") or {})})
    differ = {k for k in keys if len({render.fmt(r["settings"].get(k)) for r in runs}) > 1}
    return _html(request, "compare.html", table=table, runs=runs, setting_keys=keys, differ=differ)


async def sql_page(request: Request):
    st = _state(request)
    if request.method == "POST":
        # the form posts application/x-www-form-urlencoded (no multipart parser needed)
        from urllib.parse import parse_qs

        body = (await request.body()).decode("utf-8", errors="replace")
        query = (parse_qs(body).get("q") or [""])[0]
    else:
        query = request.query_params.get("q") or ""
    table = error = None
    seconds = 0.0
    if query.strip():
        t0 = time.perf_counter()
        try:
            table = await run_in_threadpool(browse.user_sql, st.store, query)
        except HiststoreError as exc:
            error = exc
        seconds = time.perf_counter() - t0
    status = _status(error) if error is not None else 200
    return _html(request, "sql.html", status_code=status, query=query, table=table, error=error,
                 seconds=seconds, shown=SQL_SHOWN_ROWS, q=render.quote_segment(query))


async def sql_download(request: Request):
    st = _state(request)
    fmt_name = request.path_params["fmt"]
    if fmt_name not in render.DOWNLOADS:
        raise NotFound(f"no download format {fmt_name[:20]!r}; csv or parquet")
    query = _param(request, "q", required=True)
    table = await run_in_threadpool(browse.user_sql, st.store, query)
    if table is None:
        raise InvalidInput("the statement returned no rows to download")
    data = await run_in_threadpool(render.result_file, table, fmt_name)
    return Response(data, media_type=render.DOWNLOADS[fmt_name],
                    headers={"Content-Disposition": f'attachment; filename="histstore-query.{fmt_name}"'})


# ------------------------------------------------------------------------------ JSON / images
async def api_jobs(request: Request):
    jobs = await run_in_threadpool(browse.running_jobs, _state(request).store)
    return _json({"jobs": jobs})


async def dzi(request: Request):
    st = _state(request)
    sid = _slide_id(request)
    info = await run_in_threadpool(lambda: st.deepzoom.info(st.slide_path(sid)))
    return Response(info.dzi_xml(), media_type="application/xml", headers={"Cache-Control": "max-age=3600"})


async def dzi_tile(request: Request):
    st = _state(request)
    sid = _slide_id(request)
    level, col, row = (int(request.path_params[k]) for k in ("level", "col", "row"))
    data = await run_in_threadpool(lambda: st.deepzoom.tile(st.slide_path(sid), level, col, row))
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


def _slide_attention(st: ServeState, run_id: int, slide_id: str, fold: int | None):
    from histstore.reports.slide_attention import load_slide_attention

    # a fold's attention is written in one transaction and never changes afterwards
    return st.attention.get_or_build((run_id, slide_id, fold),
                                     lambda: load_slide_attention(st.store, run_id, slide_id, fold))


async def api_attention(request: Request):
    """A run's attention on the slide: fold, prediction, value range, top-k tiles, overlay URL."""
    st = _state(request)
    sid = _slide_id(request)
    run_id = _int_param(request, "run", required=True)
    fold = _int_param(request, "fold")
    k = _int_param(request, "k") or TOP_K

    def load():
        from histstore.reports.common import attention_label, is_regression

        sa = _slide_attention(st, run_id, sid, fold)
        return {
            "run_id": int(sa.run["run_id"]), "fold": sa.fold, "tested_folds": sa.tested_folds,
            "model": sa.model, "task": sa.run["task"], "attention_kind": sa.attention_kind,
            "label": attention_label(sa.model, is_regression(sa.run)), "n_tiles": int(len(sa.score)),
            "min": float(sa.score.min()), "max": float(sa.score.max()), "prediction": sa.prediction,
            "classes": sa.classes, "notes": sa.notes, "top": browse.top_tiles(sa, k),
            "overlay": f"/api/slides/{render.quote_segment(sid)}/attention/overlay.png?run={int(sa.run['run_id'])}"
                       f"&fold={sa.fold}",
        }

    return _json(await run_in_threadpool(load))


async def api_attention_overlay(request: Request):
    st = _state(request)
    sid = _slide_id(request)
    run_id = _int_param(request, "run", required=True)
    fold = _int_param(request, "fold")
    norm = _param(request, "norm") or "minmax"
    if norm not in _NORMS:
        raise InvalidInput(f"unknown normalisation {norm[:20]!r}; minmax or percentile")

    def build():
        from histstore.reports.overlays import attention_overlay, rgba_png

        sa = _slide_attention(st, run_id, sid, fold)
        return rgba_png(attention_overlay(sa, norm=norm)[0])

    png = await run_in_threadpool(lambda: st.overlays.get_or_build(("attention", run_id, sid, fold, norm), build))
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=600"})


async def api_tiling_overlay(request: Request):
    st = _state(request)
    sid = _slide_id(request)
    tiling_id = int(request.path_params["tiling_id"])

    def build():
        from histstore.reports.overlays import rgba_png, tiling_overlay

        slide, tiles = browse.slide_tiling_tiles(st.store, sid, tiling_id)
        w, h = browse.slide_size(slide, tiles)
        return rgba_png(tiling_overlay(tiles["x"], tiles["y"], tiles["size_l0"], tiles["tissue_fraction"], w, h))

    png = await run_in_threadpool(lambda: st.overlays.get_or_build(("tiling", sid, tiling_id), build))
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=600"})


async def api_tile_at(request: Request):
    st = _state(request)
    sid = _slide_id(request)
    x, y = _float_param(request, "x"), _float_param(request, "y")
    run_id, fold, tiling = _int_param(request, "run"), _int_param(request, "fold"), _int_param(request, "tiling")
    tile = await run_in_threadpool(browse.tile_at, st.store, sid, x, y, tiling, run_id, fold)
    return _json({"tile": tile})


async def favicon(request: Request):
    return Response(status_code=204)


async def static_file(request: Request):
    found = _state(request).static.get(request.path_params["name"])
    if found is None:
        raise HTTPException(404, "no such file")
    path, media = found
    return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "no-cache"})


async def vendor_file(request: Request):
    found = _state(request).vendor.get(request.path_params["name"])
    if found is None:
        raise HTTPException(404, "no such file")
    path, media = found
    return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "max-age=86400"})


# ------------------------------------------------------------------------------ errors
def _wants_json(request: Request) -> bool:
    p = request.url.path
    return p.startswith(("/api/", "/dzi/", "/vendor/", "/static/", "/sql/download")) or p.endswith(".png")


async def library_error(request: Request, exc: HiststoreError):
    code = _status(exc)
    if _wants_json(request):
        return _json({"error": exc.message, "hint": exc.hint}, status_code=code)
    return _html(request, "error.html", status_code=code, code=code, message=exc.message, hint=exc.hint)


async def http_error(request: Request, exc: HTTPException):
    if _wants_json(request):
        return _json({"error": exc.detail}, status_code=exc.status_code)
    return _html(request, "error.html", status_code=exc.status_code, code=exc.status_code,
                 message=str(exc.detail), hint=None)


async def security_headers(request: Request, call_next):
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


# ------------------------------------------------------------------------------ the app
def routes() -> list[Route]:
    return [
        Route("/", home),
        Route("/cohorts", cohorts_page),
        Route("/cohorts/{name}", cohort_page),
        Route("/slides/{slide_id}", slide_page),
        Route("/slides/{slide_id}/view", viewer_page),
        Route("/slides/{slide_id}/qc/{tiling_id:int}.png", qc_image),
        Route("/artifacts/{artifact_id:int}", artifact),
        Route("/runs", runs_page),
        Route("/runs/{run_id}", run_page),
        Route("/runs/{run_id}/report/", run_report),
        Route("/runs/{run_id}/report/{name}", run_report_figure),
        Route("/compare", compare_page),
        Route("/sql", sql_page, methods=["GET", "POST"]),
        Route("/sql/download.{fmt}", sql_download),
        Route("/api/jobs", api_jobs),
        Route("/api/slides/{slide_id}/attention", api_attention),
        Route("/api/slides/{slide_id}/attention/overlay.png", api_attention_overlay),
        Route("/api/slides/{slide_id}/tilings/{tiling_id:int}/overlay.png", api_tiling_overlay),
        Route("/api/slides/{slide_id}/tile-at", api_tile_at),
        Route("/dzi/{slide_id}.dzi", dzi),
        Route("/dzi/{slide_id}_files/{level:int}/{col:int}_{row:int}.jpeg", dzi_tile),
        Route("/static/{name:path}", static_file),
        Route("/favicon.ico", favicon),
        Route("/vendor/openseadragon/{name:path}", vendor_file),
    ]


def create_app(store: Store, viewer_dir: Path | None = None, allowed_hosts: list[str] | None = None,
               max_open_slides: int = 16) -> Starlette:
    """The ASGI app. viewer_dir: OpenSeadragon's build folder (default: `find_openseadragon()`,
    which raises MissingStep naming the install command). allowed_hosts: Host headers
    answered (default: loopback names only, so a web page elsewhere cannot reach the app
    through DNS rebinding)."""
    from contextlib import asynccontextmanager

    from starlette.middleware.base import BaseHTTPMiddleware

    state = ServeState(store, Path(viewer_dir) if viewer_dir is not None else find_openseadragon(),
                       max_open_slides=max_open_slides)

    @asynccontextmanager
    async def lifespan(app):
        yield
        state.close()

    app = Starlette(
        routes=routes(),
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts or LOOPBACK_HOSTS)),
                    Middleware(BaseHTTPMiddleware, dispatch=security_headers)],
        exception_handlers={HiststoreError: library_error, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.serve = state
    return app
