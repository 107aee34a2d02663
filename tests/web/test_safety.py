"""Safety of `histstore serve`: every URL parameter that names a slide, cohort, run, tiling,
artifact or file is resolved through the catalog (or a manifest), so traversal and injection get
a 4xx and touch nothing; SQL is read-only; the store is not written; only loopback Host headers
are answered."""
from __future__ import annotations

import hashlib
import http.client
from pathlib import Path
from urllib.parse import urlsplit

import pytest

# path segments as they travel in a URL (percent-encoded where a client would encode them)
ATTACKS = [
    "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%252e%252e%252fetc%252fpasswd",
    "%2Fetc%2Fpasswd",
    "x%00y",
    "'%20OR%20'1'%3D'1",
    "1%3B%20DROP%20TABLE%20slides",
    "-1",
]

SLIDE_URLS = ["/slides/{a}", "/slides/{a}/view", "/slides/{a}/qc/1.png", "/dzi/{a}.dzi", "/dzi/{a}_files/0/0_0.jpeg",
              "/api/slides/{a}/attention?run=1&fold=0", "/api/slides/{a}/attention/overlay.png?run=1&fold=0",
              "/api/slides/{a}/tilings/1/overlay.png", "/api/slides/{a}/tile-at?x=1&y=1"]
OTHER_URLS = ["/cohorts/{a}", "/runs/{a}", "/runs/{a}/report/", "/runs/{run}/report/{a}", "/compare?run={a}&run={run}",
              "/artifacts/{a}", "/static/{a}", "/static/..%2F{a}", "/vendor/openseadragon/{a}",
              "/vendor/openseadragon/..%2F..%2Fpackage.json",
              "/api/slides/{slide}/attention?run={a}&fold=0", "/api/slides/{slide}/attention?run={run}&fold={a}",
              "/api/slides/{slide}/attention?run={run}&fold=0&k={a}",
              "/api/slides/{slide}/attention/overlay.png?run={run}&fold=0&norm={a}",
              "/api/slides/{slide}/tile-at?x={a}&y=1", "/api/slides/{slide}/tile-at?x=1&y=1&run={a}&fold=0",
              "/api/slides/{slide}/tile-at?x=1&y=1&tiling={a}", "/slides/{slide}/view?run={a}",
              "/sql/download.{a}?q=select%201"]


def _store_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _check(r, url):
    if "/tile-at?" in url and r.status_code == 200:
        assert r.json() == {"tile": None}, url  # -1 or 1e23 is a point on no tile, not an attack
        return
    if "/view?run=" in url and r.status_code == 200:
        # a whole number is only the run the menu starts on: one that did not test the slide is ignored
        assert url.rsplit("=", 1)[1].lstrip("-").isdigit(), url
        assert 'id="viewer-config"' in r.text
        return
    assert r.status_code in (400, 403, 404), (url, r.status_code, r.text[:300])
    assert b"root:" not in r.content and b"[extensions]" not in r.content, url


def test_traversal_and_injection_in_every_parameter(client, web):
    before = _store_digest(web.store.root)
    n = 0
    for template in SLIDE_URLS + OTHER_URLS:
        for a in ATTACKS:
            url = template.format(a=a, run=web.run_id, slide=web.tumour)
            _check(client.get(url), url)
            n += 1
    assert n > 200
    with web.store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM slides").scalar() == 8
    assert _store_digest(web.store.root) == before


def test_raw_paths_on_the_real_server(web):
    """What a browser or curl sends unnormalised reaches uvicorn as it is: still nothing."""
    from histstore.web.app import create_app
    from histstore.web.server import serve_in_thread

    app = create_app(web.store, web.viewer_dir)
    raw = ["/static/../../../../etc/passwd", "/vendor/openseadragon/../../../package.json",
           "/vendor/openseadragon/../openseadragon.js", "/slides/../../etc/passwd", "/dzi/../../etc/passwd.dzi",
           "/static//etc/passwd", "/static/%2e%2e/%2e%2e/app.py", "/runs/1/report/../../../etc/passwd",
           "/artifacts/../catalog.duckdb", "/static/style.css%00.png"]
    with serve_in_thread(app) as base:
        host = urlsplit(base)
        for path in raw:
            conn = http.client.HTTPConnection(host.hostname, host.port, timeout=20)
            conn.putrequest("GET", path, skip_host=True)
            conn.putheader("Host", host.netloc)
            conn.endheaders()
            r = conn.getresponse()
            body = r.read()
            conn.close()
            assert r.status in (400, 404), (path, r.status, body[:200])
            assert b"root:" not in body and b"DUCK" not in body, path


def test_sql_box_is_read_only(client, web):
    for q, code in [("DELETE FROM labels", 403), ("DROP TABLE slides", 403),
                    ("SELECT 1; DELETE FROM labels", 403), ("UPDATE slides SET status = 'x'", 403),
                    ("SELEC nonsense", 400)]:
        r = client.post("/sql", data={"q": q})
        assert r.status_code == code, (q, r.status_code)
        assert r.headers["content-type"].startswith("text/html")
        assert 'class="error"' in r.text
        d = client.get("/sql/download.csv", params={"q": q})
        assert d.status_code == code and d.headers["content-type"] == "application/json"
    with web.store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM labels").scalar() == 6


def test_sql_box_cannot_touch_files(client, web, tmp_path):
    """Read-only SQL may read the catalog and nothing else: no file is written or read."""
    target = tmp_path / "out.csv"
    for q in [f"COPY (SELECT 1) TO '{target}'", f"SELECT * FROM read_csv('{web.store.root / 'catalog.duckdb'}')",
              "ATTACH ':memory:' AS m", "INSTALL httpfs"]:
        r = client.post("/sql", data={"q": q})
        assert r.status_code in (400, 403), (q, r.status_code)
    assert not target.exists()


def test_only_loopback_host_names_are_answered(web):
    from starlette.testclient import TestClient

    from histstore.web.app import create_app

    app = create_app(web.store, web.viewer_dir)  # default: loopback names only
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        ok = c.get("/api/jobs")
        assert ok.status_code == 200
        assert ok.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in ok.headers["content-security-policy"]
        assert c.get("/api/jobs", headers={"host": "localhost:8765"}).status_code == 200
        # DNS rebinding: a page on another name must not read the store through the browser
        assert c.get("/api/jobs", headers={"host": "evil.example"}).status_code == 400


def test_pages_never_write_the_store_and_leave_it_unlocked(client, web):
    before = _store_digest(web.store.root)
    for url in ["/", "/cohorts", "/cohorts/syn6", f"/slides/{web.tumour}", f"/slides/{web.tumour}/view",
                f"/runs/{web.run_id}", f"/runs/{web.run_id}/report/", f"/runs/{web.gene_run}/report/",
                f"/compare?run={web.run_id}&run={web.genes['TP53']}", "/runs", "/sql?q=select%201"]:
        assert client.get(url).status_code == 200, url
    assert _store_digest(web.store.root) == before
    # between requests the app holds no connection: a job can take the write lock
    with web.store.write() as conn:
        conn.exec_driver_sql("SELECT 1")


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                           ("::1", True), ("0.0.0.0", False), ("192.168.1.10", False)])
def test_loopback_detection(host, loopback):
    from histstore.web.server import is_loopback

    assert is_loopback(host) is loopback
