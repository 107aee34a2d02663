"""Which benchmarks exist: every module benchmarks/bench_<name>.py (see benchmarks/README.md).

Adding a benchmark is adding that file; nothing here needs editing.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
PREFIX = "bench_"


def names() -> list[str]:
    """Benchmark names, alphabetical (bench_embed.py -> 'embed')."""
    return sorted(p.stem[len(PREFIX):] for p in HERE.glob(f"{PREFIX}*.py"))


def load(name: str) -> ModuleType:
    """The benchmark's module; it must define run(quick) and rows(results)."""
    if name not in names():
        raise KeyError(f"no benchmark {name!r} (benchmarks/{PREFIX}{name}.py); known: {', '.join(names())}")
    mod = importlib.import_module(f"benchmarks.{PREFIX}{name}")
    for attr in ("run", "rows"):
        if not callable(getattr(mod, attr, None)):
            raise TypeError(f"benchmarks/{PREFIX}{name}.py has no {attr}() (see benchmarks/README.md)")
    return mod
