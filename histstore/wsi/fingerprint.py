"""Cheap slide fingerprint: file size + SHA-256 of the first and last MiB.

Whole-slide files are gigabytes; hashing them all would dominate an ingest. The header holds
the TIFF directory and the first tiles, the tail the last tiles (and, in SVS, the label and
macro images), so a re-scan, a truncated copy or a different slide under the same name almost
always changes the fingerprint. It is not a content hash: an edit in the middle of a large file
with the same size goes unnoticed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from histstore.errors import SlideReadError

CHUNK = 1 << 20
_VERSION = b"histstore-fingerprint-v1"


def slide_fingerprint(path: str | Path, chunk: int = CHUNK) -> str:
    """64 hex chars: sha256(version, size, first `chunk` bytes, last `chunk` bytes)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        h = hashlib.sha256(_VERSION)
        h.update(size.to_bytes(8, "little"))
        with path.open("rb") as f:
            h.update(f.read(chunk))
            if size > chunk:
                f.seek(max(chunk, size - chunk))
                h.update(f.read(chunk))
    except FileNotFoundError:
        raise SlideReadError(f"slide file not found: {path}") from None
    except OSError as e:
        raise SlideReadError(f"cannot read {path}: {e.strerror or e}") from None
    return h.hexdigest()
