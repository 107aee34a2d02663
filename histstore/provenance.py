"""What produced a result: code version, host, time. Recorded on every run and embedding set."""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

from histstore import __version__


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`histstore <version>`, plus the git commit (and `-dirty`) when run from a checkout."""
    repo = Path(__file__).resolve().parent.parent
    if (repo / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"],
                capture_output=True, text=True, timeout=5, check=True)
            return f"{__version__}+g{out.stdout.strip()}"
        except (OSError, subprocess.SubprocessError):
            pass
    return __version__


def host() -> str:
    return platform.node()
