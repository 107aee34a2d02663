"""`histstore serve`: binds loopback by default, warns when told otherwise, one-line error
without OpenSeadragon, and really serves the store from the command line."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from click.testing import CliRunner

from histstore.cli.main import main


def _invoke(store, *args, env=None):
    return CliRunner().invoke(main, ["--store", str(store.root), "serve", *args], env=env)


def test_defaults_to_loopback_and_warns_otherwise(web, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    r = _invoke(web.store)
    assert r.exit_code == 0, r.output
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == 8765
    assert "http://127.0.0.1:8765/" in r.output and "warning" not in r.output
    r = _invoke(web.store, "--host", "0.0.0.0", "--port", "9000")
    assert r.exit_code == 0, r.output
    assert calls[-1]["host"] == "0.0.0.0" and calls[-1]["port"] == 9000
    assert "warning: serving on 0.0.0.0" in r.output and "no authentication" in r.output


def test_missing_viewer_library_is_one_line(web, tmp_path, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)  # never reached
    monkeypatch.setenv("HISTSTORE_OPENSEADRAGON", str(tmp_path))  # a folder without it
    r = _invoke(web.store)
    assert r.exit_code != 0
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert "npm install openseadragon@" in lines[0] and "HISTSTORE_OPENSEADRAGON" in lines[0]


def test_serve_command_answers_until_interrupted(web, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HISTSTORE_OPENSEADRAGON": str(web.viewer_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "histstore", "--store", str(web.store.root), "serve",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs", timeout=5) as r:
                    assert r.status == 200 and b'"jobs"' in r.read()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "histstore serve did not answer within 60 s"
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/slides/{web.tumour}", timeout=20) as r:
            assert r.status == 200 and web.tumour.encode() in r.read()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out.decode()
