"""Reading user tables (CSV/TSV) and reporting bad rows the same way everywhere.

Errors name the first offending lines (file line numbers, header = line 1) and how many there
are, so a user can fix a 10,000-row file without guessing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from histstore.errors import InvalidInput

SHOW_LINES = 5


def read_table(path: Path | str, required: Sequence[str] = (), what: str = "file") -> pd.DataFrame:
    """Read a CSV or TSV (separator sniffed) as strings; refuse empty files and missing columns."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{what} {path} does not exist")
    text_head = path.read_text(errors="replace")[:4096]
    if not text_head.strip():
        raise InvalidInput(f"{what} {path} is empty")
    sep = "\t" if text_head.splitlines()[0].count("\t") > text_head.splitlines()[0].count(",") else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what} {path} cannot be parsed: {str(exc).splitlines()[0]}") from None
    df.columns = [c.strip() for c in df.columns]
    if df.empty:
        raise InvalidInput(f"{what} {path} has a header but no rows")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InvalidInput(f"{what} {path} has no column {', '.join(repr(c) for c in missing)} "
                           f"(columns: {', '.join(df.columns)})")
    for c in df.columns:
        df[c] = df[c].str.strip()
    return df


def file_lines(mask: np.ndarray | pd.Series) -> list[int]:
    """File line numbers (header = 1) of the rows where mask is true."""
    return [int(i) + 2 for i in np.flatnonzero(np.asarray(mask))]


def refuse_rows(path, mask, problem: str) -> None:
    """Raise InvalidInput naming the first offending lines, if any row is flagged."""
    lines = file_lines(mask)
    if lines:
        shown = ", ".join(map(str, lines[:SHOW_LINES]))
        more = f" and {len(lines) - SHOW_LINES} more" if len(lines) > SHOW_LINES else ""
        raise InvalidInput(f"{Path(path).name}: {len(lines)} row(s) {problem} "
                           f"(line {shown}{more}); nothing was written")
