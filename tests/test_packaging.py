"""`pip install .` (not editable) gives a working histstore with its migrations, and the
distribution claims no generic top-level names such as `cli` or `migrations`."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_regular_install_works_and_claims_only_histstore(tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    top = {p.name for p in target.iterdir() if not p.name.endswith((".dist-info", "__pycache__")) and p.name != "bin"}
    assert top == {"histstore"}, top
    assert (target / "histstore" / "migrations" / "versions" / "0001_initial.py").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import histstore, sys; assert histstore.__file__.startswith(sys.argv[1]), histstore.__file__;"
            "from histstore.store import Store; s, created = Store.init(sys.argv[2]); assert created;"
            "from histstore.catalog.migrate import head_revision; print(head_revision())")
    r = subprocess.run([sys.executable, "-c", code, str(target), str(tmp_path / "store")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "histstore", "--store", str(tmp_path / "store"), "status"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "schema:" in r.stdout, r.stderr
    # the web app's files are installed; the viewer library is not (npm), and saying so is one line
    assert (target / "histstore" / "web" / "templates" / "viewer.html").is_file()
    assert (target / "histstore" / "web" / "static" / "viewer.js").is_file()
    env.pop("HISTSTORE_OPENSEADRAGON", None)
    r = subprocess.run([sys.executable, "-m", "histstore", "--store", str(tmp_path / "store"), "serve"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "npm install openseadragon@" in r.stderr, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
