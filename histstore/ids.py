"""Identifiers that become file names, folder names or catalog keys: slide_id, case_id,
cohort, task, embedding-set and encoder names.

Every entry point (folder scan, CSV manifest, GDC sample sheet, features import and its
mapping file, labels, fold changes, cohort create, embed --name, pretrain --name) checks ids
here, and every file or folder name made from an id goes through `path_component`, the one
safe encoding. Refused: empty, '.' and '..', path separators, NUL and other control
characters, leading/trailing whitespace, more than MAX_ID_BYTES bytes of UTF-8.
"""
from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path
from typing import Iterable
from urllib.parse import quote, unquote

from histstore.errors import InvalidInput

MAX_ID_BYTES = 255
_MAX_COMPONENT = 200  # encoded names stay well under the usual 255-byte file name limit
SHOW = 5


def id_problem(value: object) -> str | None:
    """Why `value` cannot be an id, or None when it can."""
    if not isinstance(value, str):
        return "is not text"
    if value == "":
        return "is empty"
    if value in (".", ".."):
        return "is '.' or '..' (a folder name)"
    if "/" in value or "\\" in value:
        return "holds a path separator (/ or \\)"
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        return "holds a control character (NUL, tab, newline...)"
    if value != value.strip():
        return "has leading or trailing whitespace"
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        return f"is longer than {MAX_ID_BYTES} bytes"
    return None


def check_id(value: object, what: str = "id", where: str | None = None) -> str:
    """Return `value` if it is a usable id, else raise InvalidInput naming it (and `where`:
    a file and line, an option)."""
    problem = id_problem(value)
    if problem is not None:
        prefix = f"{where}: " if where else ""
        raise InvalidInput(f"{prefix}bad {what} {_show(value)}: it {problem}")
    return value  # type: ignore[return-value]


def refuse_bad_ids(path: Path | str, values: Iterable[object], what: str,
                   first_line: int = 2) -> None:
    """For a table's column: raise InvalidInput naming the lines (header = line 1) and ids
    that are not usable, with the reason of the first; nothing is written."""
    bad = [(i + first_line, v, p) for i, v in enumerate(values) if (p := id_problem(v)) is not None]
    if not bad:
        return
    shown = ", ".join(f"line {ln} {_show(v)}" for ln, v, _ in bad[:SHOW])
    more = f" and {len(bad) - SHOW} more" if len(bad) > SHOW else ""
    raise InvalidInput(f"{Path(path).name}: {len(bad)} row(s) have a bad {what} ({shown}{more}): "
                       f"the first {bad[0][2]}; nothing was written")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


def path_component(ident: str) -> str:
    """The one file/folder name made from an id: percent-encoding of everything but letters,
    digits and - _ . (so no separators, no control characters), a leading '.' encoded too (no
    '.', '..' or hidden names), reversible by `from_path_component`. Names that would be over
    200 bytes are cut and end in a hash of the whole id (then not reversible)."""
    name = quote(ident, safe="-_.")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if not name:
        raise InvalidInput("an empty id cannot name a file")
    if len(name) > _MAX_COMPONENT:
        digest = hashlib.blake2b(ident.encode("utf-8"), digest_size=8).hexdigest()
        cut = _MAX_COMPONENT - 18
        escape = name.rfind("%", cut - 2, cut)  # never cut a %XX escape in two
        name = name[:escape if escape != -1 else cut] + "~" + digest
    return name


def from_path_component(name: str) -> str:
    return unquote(name)
