"""Files the web app sends as they are: its own CSS/JS, and the OpenSeadragon viewer library.

OpenSeadragon arrives from the npm registry, never copied into this repository: `package.json`
pins it and `scripts/setup.sh` runs `npm ci`, which puts it in `node_modules/` (git-ignored).
`find_openseadragon` looks, in order, at $HISTSTORE_OPENSEADRAGON, the checkout's
`node_modules/` (editable installs), and `./node_modules/` (a pip user who ran
`npm install openseadragon@VERSION` where they start `histstore serve`).

Files are served from a manifest made once at start-up (relative name -> file): a URL is looked
up in it, never joined onto a folder, so no URL can reach another file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from histstore.errors import MissingStep

OPENSEADRAGON_VERSION = "6.1.1"   # as pinned in package.json
ENV_VAR = "HISTSTORE_OPENSEADRAGON"
_BUILD = Path("node_modules") / "openseadragon" / "build" / "openseadragon"
_ENTRY = "openseadragon.min.js"
HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent      # the repository root when installed in editable mode

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png",
          ".svg": "image/svg+xml", ".map": "application/json", ".json": "application/json"}


def install_hint() -> str:
    return (f"run `npm install openseadragon@{OPENSEADRAGON_VERSION}` in the folder where you start "
            f"`histstore serve` (in a histstore checkout: `bash scripts/setup.sh`), or set {ENV_VAR} to "
            f"its build/openseadragon folder")


def _candidates() -> list[Path]:
    if os.environ.get(ENV_VAR):  # the user's choice, and only it
        return [Path(os.environ[ENV_VAR]).expanduser()]
    return [CHECKOUT / _BUILD, Path.cwd() / _BUILD]


def find_openseadragon() -> Path:
    """The folder holding openseadragon.min.js and its images/, or MissingStep saying how to
    install it (one line)."""
    tried = _candidates()
    for folder in tried:
        if (folder / _ENTRY).is_file() and (folder / "images").is_dir():
            return folder.resolve()
    if os.environ.get(ENV_VAR):
        raise MissingStep(f"{ENV_VAR}={os.environ[ENV_VAR]} holds no {_ENTRY} with an images/ folder",
                          hint=install_hint())
    raise MissingStep(f"the slide viewer needs OpenSeadragon {OPENSEADRAGON_VERSION} (npm package "
                      f"`openseadragon`), which is not installed", hint=install_hint())


def openseadragon_version(folder: Path) -> str | None:
    """The installed package's version (its package.json two folders up), if it says."""
    meta = Path(folder).parent.parent / "package.json"
    try:
        return str(json.loads(meta.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


@dataclass(frozen=True)
class Manifest:
    """Regular files under a folder, by their relative POSIX name (symbolic links left out)."""

    files: dict[str, Path]

    @classmethod
    def of(cls, folder: Path, suffixes: tuple[str, ...] | None = None) -> "Manifest":
        folder = Path(folder).resolve()
        files = {}
        for dirpath, dirnames, names in os.walk(folder, followlinks=False):
            for name in names:
                p = Path(dirpath) / name
                if p.is_symlink() or not p.is_file():
                    continue
                if suffixes and p.suffix not in suffixes:
                    continue
                files[p.relative_to(folder).as_posix()] = p
        return cls(files)

    def get(self, name: str) -> tuple[Path, str] | None:
        p = self.files.get(name)
        if p is None:
            return None
        return p, _TYPES.get(p.suffix, "application/octet-stream")


def own_static() -> Manifest:
    return Manifest.of(HERE / "static")


def viewer_static(folder: Path) -> Manifest:
    return Manifest.of(folder, suffixes=(".js", ".png", ".svg"))
