"""Named fault points: a testing hook for the crash-safety tests (tests/faults).

`fault_point("embed.after_array_write")` kills the process with SIGKILL - no cleanup, no
exception handlers, like a power cut or the OOM killer - when the environment variable
HISTSTORE_FAULT names that point, optionally with the hit on which to fire:

    HISTSTORE_FAULT=embed.mid_commit        first time the point is reached
    HISTSTORE_FAULT=embed.mid_commit:3      third time

Unset (always, outside those tests) a point costs one function call and a comparison. Points
sit where a crash is most likely to leave a store inconsistent: between writing a file and
registering it, inside a commit's transaction, in the middle of an array. The list of points
is in docs/architecture.md.
"""
from __future__ import annotations

import os
import signal

_SPEC: str | None = None
_NAME = ""
_HITS_WANTED = 1
_hits = 0
_ONCE: str | None = None  # configure_once's marker file


def configure(spec: str | None) -> None:
    """Arm the point named by `spec` ('name' or 'name:N'; None disarms). Read from
    HISTSTORE_FAULT at import; tests that fork a process call it in the child."""
    global _SPEC, _NAME, _HITS_WANTED, _hits, _ONCE
    _SPEC, _ONCE = spec or None, None
    name, _, at = (spec or "").partition(":")
    _NAME, _HITS_WANTED, _hits = name, int(at) if at else 1, 0


def fault_point(name: str) -> None:
    global _hits
    if _SPEC is None or name != _NAME:
        return
    _hits += 1
    if _hits >= _HITS_WANTED and _first_time():
        os.kill(os.getpid(), signal.SIGKILL)


def active(name: str) -> bool:
    """Is the point `name` armed? For simulated conditions that are not a crash (a worker
    that cannot see the store)."""
    return _SPEC is not None and name == _NAME


def configure_once(spec: str | None, marker: str) -> None:
    """Arm `spec` in this process so that it fires at most once across all processes armed
    with the same `marker` file (a Dask worker killed on a slide must not be killed again when
    the slide is retried on another worker)."""
    global _ONCE
    configure(spec)
    _ONCE = marker


def _first_time() -> bool:
    if _ONCE is None:
        return True
    try:
        os.close(os.open(_ONCE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


configure(os.environ.get("HISTSTORE_FAULT"))
