"""One progress-bar factory for every long job (tqdm on stderr, quiet when not a terminal
unless HISTSTORE_PROGRESS=1)."""
from __future__ import annotations

import os
import sys


def progress_bar(total=None, desc: str = "", unit: str = "it", disable: bool = False, **kw):
    from tqdm.auto import tqdm

    forced = os.environ.get("HISTSTORE_PROGRESS")
    if forced is not None:
        disable = disable or forced == "0"
    else:
        disable = disable or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                mininterval=0.5, file=sys.stderr, **kw)
