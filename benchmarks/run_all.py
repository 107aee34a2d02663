"""Run the benchmarks, record each one's raw results in benchmarks/results.json (stamped with its
own commit, date and machine) and render benchmarks/RESULTS.md from that file.

    python -m benchmarks.run_all [--quick] [--only NAME ...] [--no-write]

A run replaces only the sections of the benchmarks it ran; the others keep their own stamps.
Each benchmark prints its table as soon as it has measured it (the same rendering as
RESULTS.md). Benchmarks are the modules benchmarks/bench_<name>.py (see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback

from benchmarks import registry, render
from benchmarks.stamp import code_state, machine, now


def run_one(name: str, quick: bool, command: str) -> dict:
    """One benchmark's section: stamps + results (or the error that stopped it)."""
    code = code_state()
    sec = {"quick": quick, "command": command, "date": now(), **code, "results": None, "error": None}
    t0 = time.perf_counter()
    try:
        mod = registry.load(name)
        sec["results"] = mod.run(quick)
        # a section must render: find out now, not when RESULTS.md is written
        print("\n".join(render.section_body(name, sec["results"])), flush=True)
    except Exception as exc:  # one broken benchmark must not hide the others
        traceback.print_exc()
        sec["results"], sec["error"] = None, f"{type(exc).__name__}: {exc}"
    sec["seconds"] = round(time.perf_counter() - t0, 1)
    sec["machine"] = machine()
    return sec


def merge(data: dict, sections: dict[str, dict]) -> dict:
    """results.json content with `sections` replacing those benchmarks' sections only."""
    out = {"format": render.FORMAT, "benchmarks": dict(data.get("benchmarks", {}))}
    out["benchmarks"].update(sections)
    return out


# run only when named (--only): what they need is not what a full run on this machine has
ON_REQUEST = {
    "gpu": "measures a GPU (benchmarks/gpu_check.sh runs it)",
    "mil_scale": "~100 min and ~28 GB of disk at paper scale (--quick for the same code path)",
}


def main(argv=None) -> int:
    known = registry.names()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="each benchmark's small, fast mode")
    p.add_argument("--only", nargs="+", choices=known, metavar="NAME", help=f"some of: {', '.join(known)}")
    p.add_argument("--no-write", action="store_true", help="print only; leave results.json and RESULTS.md")
    a = p.parse_args(argv)
    names = a.only or [n for n in known if n not in ON_REQUEST]
    for name in ([] if a.only else sorted(ON_REQUEST)):
        print(f"== {name}: not run (ask with --only {name}): {ON_REQUEST[name]}", file=sys.stderr)
    command = "python -m benchmarks.run_all" + (" --quick" if a.quick else "") + (
        " --only " + " ".join(a.only) if a.only else "")
    sections = {}
    for name in names:
        print(f"\n== {name} ({'quick' if a.quick else 'full'})", file=sys.stderr, flush=True)
        sections[name] = run_one(name, a.quick, command)
        print(f"== {name}: {sections[name]['seconds']:.0f} s", file=sys.stderr, flush=True)
        if not a.no_write:  # after each benchmark: an interrupted run keeps what it measured
            render.dump(merge(render.load(), {name: sections[name]}))
            render.write(render.load())  # from the file, exactly as the check will read it
    failed = [n for n, s in sections.items() if s["error"]]
    for n in failed:
        print(f"FAILED {n}: {sections[n]['error']}", file=sys.stderr)
    if not a.no_write:
        print(f"wrote {render.RESULTS_JSON} and {render.RESULTS_MD}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
