"""Removing files safely: every removal names the folder that owns the target, and is refused
unless the target lies strictly inside it (after resolving symlinks of its parents). One
helper for every rmtree/unlink in histstore, so an id or a recorded path can never make
histstore delete something outside its own folders."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from histstore.errors import UnsafeRemoval


def check_inside(target: Path | str, owner: Path | str) -> Path:
    """`target` with its parent folders resolved; raises UnsafeRemoval unless it lies strictly
    inside `owner`."""
    target = Path(os.path.abspath(target))
    owner_real = Path(os.path.realpath(owner))
    if target.name in ("", ".", ".."):
        raise UnsafeRemoval(f"refused to remove {target}: not a plain name inside {owner_real}")
    real = Path(os.path.realpath(target.parent)) / target.name
    if owner_real not in real.parents:
        raise UnsafeRemoval(f"refused to remove {real}: it is not inside {owner_real}")
    return real


def remove_tree(target: Path | str, owner: Path | str) -> bool:
    """Remove a folder (or file) inside `owner`; True if something was removed."""
    real = check_inside(target, owner)
    if real.is_symlink() or real.is_file():
        real.unlink()
        return True
    if not real.exists():
        return False
    shutil.rmtree(real)
    return True


def remove_file(target: Path | str, owner: Path | str) -> bool:
    """Remove a file inside `owner`; True if it existed."""
    real = check_inside(target, owner)
    try:
        real.unlink()
        return True
    except FileNotFoundError:
        return False
