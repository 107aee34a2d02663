"""What a benchmark section is stamped with: the code (commit + dirty flag), the date and the
machine (CPU, cores, RAM, GPU, and the versions of the libraries that set the pace)."""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the results files change with every run; they do not make the measured code dirty
RESULT_FILES = ("benchmarks/results.json", "benchmarks/RESULTS.md")
VERSIONS = ("torch", "duckdb", "zarr", "numpy", "openslide-python", "opencv-python-headless")


def code_state() -> dict:
    """{'commit': full hash or None, 'dirty': bool or None} of the repository the code is in."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--", ".", *(f":(exclude){p}" for p in RESULT_FILES))
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    ram_gb = None
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        ram_gb = round(kb / 1e6, 1)
    except (OSError, StopIteration, ValueError):
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram_gb, "gpu": None,
           "python": platform.python_version(), "torch_threads": None}
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    for pkg in VERSIONS:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def describe_machine(m: dict) -> str:
    """One line for RESULTS.md."""
    ram = f", {m['ram_gb']:g} GB RAM" if m.get("ram_gb") else ""
    libs = ", ".join(f"{k} {m[k]}" for k in VERSIONS if m.get(k))
    threads = f"; {m['torch_threads']} torch threads" if m.get("torch_threads") else ""
    return (f"{m.get('cpu')}, {m.get('cores')} cores{ram}, {m.get('gpu') or 'no GPU'}; "
            f"Python {m.get('python')}, {libs}{threads}")
