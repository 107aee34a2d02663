"""Shared pieces of the CLI: the store option, error translation, row rendering.

Every command opens the store, calls one library function and renders the result.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from histstore.errors import HiststoreError

FORMATS = ("table", "csv", "json", "parquet")


class CliError(click.ClickException):
    """A library error shown as one line, with its hint, and the error's exit code."""

    def __init__(self, error: HiststoreError):
        super().__init__(error.message)
        self.exit_code = error.exit_code
        self.hint = error.hint

    def format_message(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class HiststoreGroup(click.Group):
    """Turns library errors and Ctrl-C into one-line messages, never tracebacks; lists
    commands in the order they were added (the workflow's), not alphabetically."""

    def list_commands(self, ctx):
        return list(self.commands)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HiststoreError as exc:
            raise CliError(exc) from None
        except KeyboardInterrupt:
            click.echo("interrupted: finished work is saved; run the same command again to "
                       "resume", err=True)
            ctx.exit(130)


def get_store(ctx: click.Context, must_exist: bool = True):
    from histstore.store import Store

    params = ctx.find_root().params
    root = params.get("store")
    options = {"wait": params.get("wait", 120.0), "exclusive": bool(params.get("exclusive"))}
    if must_exist:
        return Store.open(root, **options)
    return Store(Path(root), **options)


def pass_store(f):
    """Inject the opened Store as the first argument."""

    @click.pass_context
    @functools.wraps(f)
    def wrapper(ctx, *args, **kwargs):
        return f(get_store(ctx), *args, **kwargs)

    return wrapper


class RegistryChoice(click.Choice):
    """A Choice among the names of a library registry (MIL models, pretraining methods,
    backbones), read from the registry when the command parses or shows its help: importing
    the CLI does not import the registry's torch modules, and the names have one source."""

    def __init__(self, load_names):
        self._load_names = load_names
        self._names: tuple[str, ...] | None = None
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(self._load_names())
        return self._names

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns; the registry decides
        pass


def mil_model_names() -> list[str]:
    from histstore.mil.models import model_names

    return model_names()


def pretrain_method_names() -> list[str]:
    from histstore.encoders.methods import METHODS

    return list(METHODS)


def backbone_names() -> list[str]:
    from histstore.encoders.backbones import ARCHS

    return list(ARCHS)


def format_option(default: str = "table"):
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default=default,
                        show_default=True, help="Output format for rows.")


def output_option():
    return click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
                        help="Write rows to this file instead of stdout (an existing file only with --force).")


def force_option(what: str = "an existing output file"):
    return click.option("--force", is_flag=True, help=f"Replace {what}.")


def check_new_file(path: Path | None, force: bool) -> None:
    """Exports never overwrite a file silently."""
    from histstore.errors import InvalidInput

    if path is not None and Path(path).exists() and not force:
        raise InvalidInput(f"{path} exists; not overwritten", hint="pass --force to replace it")


def _json_default(v):
    from decimal import Decimal

    if isinstance(v, Decimal):
        return float(v)
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=_json_default)
    return str(v)


def render_table(table, max_width: int = 60) -> str:
    """Aligned plain-text table of an Arrow table (numbers right-aligned)."""
    import pyarrow as pa

    names = table.column_names
    rows = table.to_pylist()
    cells = [[_cell(r[n]) for n in names] for r in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row] for row in cells]
    widths = [max([len(n)] + [len(row[i]) for row in cells]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
               for t in table.schema.types]

    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(vals, widths, numeric)).rstrip()

    out = [line(names), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def emit_rows(table, fmt: str = "table", output: Path | None = None, force: bool = False) -> None:
    """Render an Arrow table in one of FORMATS to stdout or a file (an existing file is
    replaced only with force)."""
    import pyarrow as pa

    check_new_file(output, force)
    if table is None:
        table = pa.table({})
    if fmt == "parquet":
        if output is None:
            raise click.UsageError("--format parquet needs -o FILE")
        import pyarrow.parquet as pq

        _atomic(output, lambda tmp: pq.write_table(table, tmp))
        click.echo(f"wrote {table.num_rows} rows to {output}", err=True)
        return
    if fmt == "table":
        text = render_table(table) + "\n"
    elif fmt == "csv":
        text = _csv_text(_jsonable(table)) if table.num_columns else ""
    else:  # json: one array of objects
        text = json.dumps(table.to_pylist(), default=_json_default) + "\n"
    if output is not None:
        _atomic(output, lambda tmp: tmp.write_text(text))
        click.echo(f"wrote {table.num_rows} rows to {output}", err=True)
    else:
        sys.stdout.write(text)


def _atomic(path: Path, write) -> None:
    """Write through a temporary file next to `path`, then rename: no half-written result."""
    import os

    from histstore.fsops import remove_file

    path = Path(path).absolute()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            remove_file(tmp, path.parent)
_CSV_SPECIAL = (",", '"', "\n", "\r")


def _csv_field(value: str | None) -> str:
    """Quoted only where CSV needs it, as DuckDB and pandas write: a field holding the
    delimiter, a quote or a line break. NULL is an empty field; an empty string is "" (as
    DuckDB writes it) so that the two stay apart."""
    if value is None:
        return ""
    if value == "" or any(c in value for c in _CSV_SPECIAL):
        return '"' + value.replace('"', '""') + '"'
    return value


def _csv_text(table) -> str:
    """Rows as CSV with "\n" line ends; values printed as Arrow casts them to text (what
    pyarrow's CSV writer prints), so that `cut` and `sed` pipelines read plain fields."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = [pc.cast(col, pa.string()).to_pylist() for col in table.columns]
    lines = [",".join(_csv_field(name) for name in table.column_names)]
    lines += [",".join(_csv_field(v) for v in row) for row in zip(*cols)]
    return "\n".join(lines) + "\n"


def _jsonable(table):
    """CSV cannot hold nested types: encode struct/list/map columns as JSON text."""
    import pyarrow as pa

    cols = []
    for col, typ in zip(table.columns, table.schema.types):
        if pa.types.is_nested(typ):
            col = pa.array([None if v is None else json.dumps(v, default=_json_default)
                            for v in col.to_pylist()], pa.string())
        cols.append(col)
    return pa.table(cols, names=table.column_names)
