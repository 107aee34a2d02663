"""benchmarks/RESULTS.md is generated: it must be exactly the rendering of benchmarks/results.json,
every benchmark module follows the convention in benchmarks/README.md, and a partial re-run
replaces only its own sections."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_results_md_is_the_rendering_of_results_json():
    from benchmarks import render

    data = render.load(ROOT / "benchmarks" / "results.json")
    assert data["benchmarks"], "benchmarks/results.json holds no results"
    assert (ROOT / "benchmarks" / "RESULTS.md").read_text() == render.render(data), \
        "benchmarks/RESULTS.md is not the rendering of results.json: run `python -m benchmarks.render`"


def test_every_section_is_stamped():
    from benchmarks import registry, render

    for name, sec in render.load(ROOT / "benchmarks" / "results.json")["benchmarks"].items():
        assert name in registry.names(), f"results.json has a section for unknown benchmark {name!r}"
        for key in ("commit", "dirty", "date", "quick", "command", "machine", "seconds"):
            assert key in sec, f"section {name} lacks {key}"
        assert sec["machine"].get("cpu") and sec["machine"].get("cores")
        assert (sec["results"] is None) == bool(sec["error"])


def test_every_benchmark_follows_the_convention():
    import inspect

    from benchmarks import registry

    assert {"bags", "catalog", "embed", "ingest"} <= set(registry.names())
    for name in registry.names():
        mod = registry.load(name)
        params = inspect.signature(mod.run).parameters
        assert "quick" in params, f"bench_{name}.run has no quick parameter"
        others = [p for p in list(params.values())[1:] if p.default is inspect.Parameter.empty
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        assert not others, f"bench_{name}.run needs {others} beyond quick"


def test_partial_rerun_replaces_only_its_sections(monkeypatch):
    from benchmarks import run_all

    old = {"format": 1, "benchmarks": {"bags": {"results": [1], "commit": "a"},
                                       "embed": {"results": [2], "commit": "a"}}}
    new = run_all.merge(old, {"embed": {"results": [3], "commit": "b"}})
    assert new["benchmarks"]["bags"] == {"results": [1], "commit": "a"}
    assert new["benchmarks"]["embed"] == {"results": [3], "commit": "b"}
    assert old["benchmarks"]["embed"]["commit"] == "a"  # the input is not changed


def test_run_all_writes_a_stamped_section_and_renders(tmp_path, monkeypatch):
    """End to end with a stand-in benchmark: its section is stamped, the others are kept,
    and RESULTS.md is the rendering of the file written."""
    import json
    import types

    from benchmarks import registry, render, run_all
    from benchmarks.common import Row

    fake = types.ModuleType("benchmarks.bench_fake")
    fake.run = lambda quick=False: [{"ours_s": 1.0, "theirs_s": 3.0, "quick": quick}]
    fake.rows = lambda r: [Row("fake", f"{r[0]['ours_s']} s", f"{r[0]['theirs_s']} s", 3.0, "theirs / ours"),
                           Row("fake: absolute", "x", "y", None, "-")]
    monkeypatch.setattr(registry, "names", lambda: ["bags", "fake"])
    monkeypatch.setattr(registry, "load", lambda name: fake if name == "fake" else pytest.fail(name))
    monkeypatch.setattr(render, "RESULTS_JSON", tmp_path / "results.json")
    monkeypatch.setattr(render, "RESULTS_MD", tmp_path / "RESULTS.md")
    (tmp_path / "results.json").write_text(json.dumps(
        {"format": 1, "benchmarks": {"bags": {"error": "Boom: old", "results": None, "quick": False,
                                              "commit": "abc", "dirty": False, "date": "d", "command": "c",
                                              "seconds": 1, "machine": {"cpu": "x", "cores": 2}}}}))
    assert run_all.main(["--quick", "--only", "fake"]) == 0
    data = render.load(tmp_path / "results.json")
    assert data["benchmarks"]["bags"]["error"] == "Boom: old"
    sec = data["benchmarks"]["fake"]
    assert sec["quick"] is True and sec["results"][0]["quick"] is True and sec["machine"]["cores"]
    assert len(sec["commit"] or "") in (0, 40) and sec["command"].endswith("--quick --only fake")
    text = (tmp_path / "RESULTS.md").read_text()
    assert text == render.render(data)
    assert "| fake | 1.0 s | 3.0 s | 3.00 | theirs / ours |" in text and "| - | - |" in text
    assert "**quick run**" in text and "FAILED: Boom: old" in text
