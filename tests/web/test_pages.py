"""Every page of `histstore serve` answers with HTML that shows what the store holds."""
from __future__ import annotations

from urllib.parse import quote


def _html(client, url, status=200):
    r = client.get(url)
    assert r.status_code == status, (url, r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("text/html"), r.headers["content-type"]
    return r.text


def test_home_lists_counts_cohorts_runs_and_running_jobs(client, web):
    text = _html(client, "/")
    assert "syn6" in text and "real" in text
    assert f'href="/runs/{web.running}"' in text and "Running now" in text
    assert "no progress recorded" in text or "<progress" in text


def test_cohorts_page_shows_failed_slides_and_why(client, web):
    text = _html(client, "/cohorts")
    assert "syn6" in text and web.failed in text
    assert "unsupported or unreadable slide format" in text


def test_cohort_page_label_balance_and_slides(client, web):
    text = _html(client, "/cohorts/syn6")
    assert "Label balance" in text and "tumor" in text and "normal" in text
    for sid in web.truth["slides"]:
        assert f'href="/slides/{quote(sid, safe="")}"' in text


def test_slide_page_metadata_tilings_runs(client, web):
    text = _html(client, f"/slides/{web.tumour}")
    assert "generic-tiff" in text
    assert f"/slides/{web.tumour}/qc/" in text
    assert f'href="/runs/{web.run_id}"' in text and f'href="/runs/{web.genes["TP53"]}"' in text
    assert f"/slides/{web.tumour}/view?run={web.run_id}&amp;fold=0" in text


def test_run_page_and_its_report(client, web):
    text = _html(client, f"/runs/{web.run_id}")
    assert "gated-attention" in text and f"/runs/{web.run_id}/report/" in text
    report = _html(client, f"/runs/{web.run_id}/report/")
    assert "ROC" in report and "data:image/png;base64," in report
    fig = client.get(f"/runs/{web.run_id}/report/roc.png")
    assert fig.status_code == 200 and fig.headers["content-type"] == "image/png"
    assert fig.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_gene_run_page_lists_children_and_scatter(client, web):
    text = _html(client, f"/runs/{web.gene_run}")
    assert "de:TP53" in text and "de:EGFR" in text
    report = _html(client, f"/runs/{web.gene_run}/report/")
    assert "Gene runs" in report


def test_runs_page_and_compare(client, web):
    text = _html(client, "/runs")
    assert f'value="{web.run_id}"' in text
    cmp = _html(client, f"/compare?run={web.run_id}&run={web.genes['TP53']}")
    assert "auc" in cmp and f"run {web.run_id}" in cmp
    assert _html(client, f"/compare?run={web.run_id}", status=400)


def test_viewer_page_carries_its_config(client, web):
    text = _html(client, f"/slides/{web.tumour}/view?run={web.gene_run}&gene={web.genes['EGFR']}&fold=0")
    assert 'id="viewer-config"' in text and "/vendor/openseadragon/openseadragon.min.js" in text
    assert '"genes": [{"run_id": %d' % web.genes["TP53"] in text


def test_sql_page_table_and_downloads(client, web):
    q = "SELECT slide_id, status FROM slides ORDER BY slide_id"
    text = _html(client, "/sql?q=" + quote(q))
    assert web.tumour in text and "download" in text
    csv = client.get("/sql/download.csv?q=" + quote(q))
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0] == "slide_id,status"
    pq = client.get("/sql/download.parquet?q=" + quote(q))
    assert pq.status_code == 200 and pq.content[:4] == b"PAR1"
    import io

    import pyarrow.parquet as pqm

    assert pqm.read_table(io.BytesIO(pq.content)).column_names == ["slide_id", "status"]


def test_web_process_never_imports_torch(web):
    """Pages, the viewer's overlay and tiles: all without torch (fast start, small memory beside
    the jobs; the report's drawing code is the torch-free `histstore report`'s)."""
    import subprocess
    import sys

    code = f"""
import sys
from starlette.testclient import TestClient
from histstore.store import Store
from histstore.web.app import create_app
app = create_app(Store({str(web.store.root)!r}), {str(web.viewer_dir)!r}, allowed_hosts=["testserver"])
with TestClient(app) as c:
    for url in ["/", "/runs/{web.run_id}", "/slides/{web.tumour}/view",
                "/api/slides/{web.tumour}/attention/overlay.png?run={web.run_id}&fold=0",
                "/dzi/{web.tumour}_files/11/1_1.jpeg", "/sql?q=select%201"]:
        assert c.get(url).status_code == 200, url
assert "torch" not in sys.modules, [m for m in sys.modules if m.startswith("torch")][:5]
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
