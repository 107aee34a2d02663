"""HTML and JSON rendering for the web app: Jinja2 templates (autoescaped), Arrow tables as
HTML tables with links, values as JSON, and result files (CSV / Parquet) for downloads."""
from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import math
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import numpy as np
from markupsafe import Markup, escape

TEMPLATES = Path(__file__).resolve().parent / "templates"
_env = None


def env():
    global _env
    if _env is None:
        import jinja2

        _env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                                  autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True,
                                  lstrip_blocks=True, undefined=jinja2.StrictUndefined)
        _env.filters.update(fmt=fmt, slide_url=slide_url, tojson_safe=to_json)
        _env.globals.update(slide_url=slide_url, viewer_url=viewer_url, run_url=run_url, html_table=html_table,
                            quote=quote_segment)
    return _env


def page(template: str, **context) -> str:
    return env().get_template(template).render(**context)


# ------------------------------------------------------------------------------ urls
def quote_segment(text: Any) -> str:
    """One URL path segment: every reserved character, '/' included, percent-encoded."""
    return quote(str(text), safe="")


def slide_url(slide_id: str) -> str:
    return f"/slides/{quote_segment(slide_id)}"


def viewer_url(slide_id: str, run_id: int | None = None, fold: int | None = None, gene: int | None = None) -> str:
    url = f"/slides/{quote_segment(slide_id)}/view"
    params = [f"{k}={int(v)}" for k, v in (("run", run_id), ("fold", fold), ("gene", gene)) if v is not None]
    return url + ("?" + "&".join(params) if params else "")


def run_url(run_id: int) -> str:
    return f"/runs/{int(run_id)}"


# ------------------------------------------------------------------------------ values
def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return ""
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v)}"
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ", timespec="seconds")
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=_json_default)
    return str(v)


def _json_default(v: Any):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, Path):
        return str(v)
    return str(v)


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: None instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """JSON safe to place inside an HTML <script type="application/json"> block."""
    text = json.dumps(_finite(obj), default=_json_default)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def json_bytes(obj: Any) -> bytes:
    return json.dumps(_finite(obj), default=_json_default).encode()


# ------------------------------------------------------------------------------ tables
_NUMERIC_KINDS = "iuf"


def _link_for(column: str) -> Callable[[Any], str] | None:
    if column in ("slide_id",):
        return slide_url
    if column in ("run_id", "parent", "parent_run_id"):
        return run_url
    if column == "cohort":
        return lambda c: f"/cohorts/{quote_segment(c)}"
    return None


def html_table(table, links: bool = True, max_rows: int | None = None, css: str = "") -> Markup:
    """An Arrow table (or a list of dicts) as an escaped HTML table; id columns link to their
    pages, numbers are right-aligned."""
    import pyarrow as pa

    if isinstance(table, list):
        rows = table
        names = list(rows[0].keys()) if rows else []
        numeric = {n: all(isinstance(r.get(n), (int, float, np.number)) and not isinstance(r.get(n), bool)
                          for r in rows if r.get(n) is not None) and any(r.get(n) is not None for r in rows)
                   for n in names}
    else:
        names = table.column_names
        rows = table.slice(0, max_rows).to_pylist() if max_rows is not None else table.to_pylist()
        numeric = {n: (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))
                   for n, t in zip(names, table.schema.types)}
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    body = []
    for r in rows:
        cells = []
        for n in names:
            v = r.get(n)
            text = escape(fmt(v))
            link = _link_for(n) if links and v is not None else None
            if link is not None:
                text = Markup(f'<a href="{escape(link(v))}">{text}</a>')
            cls = ' class="num"' if numeric.get(n) else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    cls = f' class="{escape(css)}"' if css else ""
    return Markup(f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


# ------------------------------------------------------------------------------ downloads
DOWNLOADS = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


def result_file(table, fmt_name: str) -> bytes:
    """A query result as CSV (strings quoted only where CSV needs it; nested values as JSON
    text) or Parquet (types kept)."""
    import pyarrow as pa

    if fmt_name not in DOWNLOADS:
        from histstore.errors import InvalidInput

        raise InvalidInput(f"unknown download format {fmt_name!r}; choose csv or parquet")
    if fmt_name == "parquet":
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()
    import csv

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")  # quotes a field only where CSV needs it
    writer.writerow(table.column_names)
    nested = [pa.types.is_nested(t) for t in table.schema.types]
    for batch in table.to_batches():
        for row in zip(*(c.to_pylist() for c in batch.columns)):
            writer.writerow(["" if v is None else json.dumps(v, default=_json_default) if n
                             else _csv_cell(v) for v, n in zip(row, nested)])
    return text.getvalue().encode()


def _csv_cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    return v
