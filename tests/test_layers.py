"""The layering of docs/architecture.md, checked on the source: imports only go down, the
subpackages never call the library API, and no module imports itself back through others.

Every import counts, also those inside functions (they are how cycles hide)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = {"catalog", "wsi", "embeddings", "encoders", "mil", "reports", "interop", "evaluation"}
# helpers every layer may use ("" is histstore/__init__.py: the version); they import only each
# other, and the catalog (Store opens and migrates it)
SHARED = {"", "errors", "store", "keys", "progress", "cluster", "provenance", "tabular", "hashing", "devices", "barcodes",
          "migrations", "ids", "fsops", "liveness", "faults"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted((ROOT / "histstore").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "cli").glob("*.py")):  # installed as histstore.cli
        stem = path.stem
        mods["histstore.cli" if stem == "__init__" else f"histstore.cli.{stem}"] = path
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> histstore modules it imports (a `from pkg import sub` counts as pkg.sub)."""
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "histstore":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "histstore"}
        graph[name] = deps - {name}
    return graph


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = _imports(_modules())


def test_subpackages_never_import_the_library_api_or_the_cli():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() if _top(m) in SUBPACKAGES
           for d in deps if _top(d) not in SUBPACKAGES | SHARED]
    assert bad == []


def test_shared_helpers_import_only_shared_helpers():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() if _top(m) in SHARED
           for d in deps if _top(d) not in SHARED | {"catalog"}]
    assert bad == []


def test_the_library_never_imports_the_cli():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() if _top(m) not in ("cli", "__main__")
           for d in deps if _top(d) == "cli"]
    assert bad == []


def test_backbones_is_the_leaf_of_encoders():
    assert {d for d in GRAPH["histstore.encoders.backbones"] if d.startswith("histstore.encoders")} == set()


def test_no_import_cycles():
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH.get(m, ())):
            if d not in GRAPH:
                continue
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [])
    assert cycles == []


def test_cli_choices_are_the_registries_and_need_no_torch_at_import():
    import subprocess
    import sys

    code = ("import sys, histstore.cli.main as m; assert 'torch' not in sys.modules, 'torch at CLI import'; "
            "opts = {p.name: p for c in (m.main.commands['train'], m.main.commands['pretrain']) for p in c.params}; "
            "print(list(opts['model'].type.choices), list(opts['method'].type.choices), "
            "list(opts['arch'].type.choices))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    from histstore.encoders.backbones import ARCHS
    from histstore.encoders.methods import METHODS
    from histstore.mil.models import model_names

    assert out.strip() == f"{model_names()} {list(METHODS)} {list(ARCHS)}"
