"""Start-up time of the light commands (`histstore status`, `histstore sql`), which import no
torch, against `python -c "import torch"` - the least any command that imports torch pays -
in fresh processes, taken in turn (ABAB...), medians. Also records which heavy modules the
light commands load (none of torch, matplotlib, sklearn is expected).

    python -m benchmarks.bench_startup [--quick]
"""
from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Row, interleaved, main, median

HEAVY = ("torch", "matplotlib", "sklearn", "zarr")
_PROBE = ("import sys\nfrom histstore.cli.main import main\ntry:\n    main({args!r}, standalone_mode=False)\n"
          "finally:\n    print('HEAVY', sorted(m for m in {heavy!r} if m in sys.modules))")


def _cli(store: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "histstore.cli.main", "--store", str(store), *args]


def run(quick: bool = False) -> list[dict]:
    repeats = 5 if quick else 15
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        subprocess.run(_cli(store, "init"), check=True, capture_output=True)
        light = {"status": ["status"], "sql": ["sql", "SELECT count(*) AS n FROM slides"]}
        commands = {name: _cli(store, *args) for name, args in light.items()}
        commands["import torch"] = [sys.executable, "-c", "import torch"]
        loaded = {}
        for name, args in light.items():
            probe = _PROBE.format(args=["--store", str(store), *args], heavy=HEAVY)
            out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
            loaded[name] = ast.literal_eval(out.rsplit("HEAVY", 1)[1].strip())
        fns = {name: (lambda cmd=cmd: subprocess.run(cmd, check=True, capture_output=True))
               for name, cmd in commands.items()}
        for fn in fns.values():
            fn()  # warm-up: page cache
        times = interleaved(fns, repeats)
    return [{"command": name, "seconds": median(t), "all": t, "repeats": repeats,
             "heavy_modules": loaded.get(name)} for name, t in times.items()]


def rows(results: list[dict]) -> list[Row]:
    by = {r["command"]: r for r in results}
    torch_s = by["import torch"]["seconds"]
    out = []
    for name in ("status", "sql"):
        r = by[name]
        heavy = ", ".join(r["heavy_modules"]) or "none of " + ", ".join(HEAVY)
        out.append(Row(f"startup: histstore {name}", f"{r['seconds']:.2f} s in a fresh process (loads {heavy})",
                       f"python -c 'import torch': {torch_s:.2f} s (median of {r['repeats']}, taken in turn)",
                       torch_s / r["seconds"], "torch import time / command time"))
    return out


if __name__ == "__main__":
    main(run, rows)
