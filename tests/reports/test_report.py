"""`histstore report`: figures and one HTML page whose every link and image resolves; gene and
regression runs; one-line errors."""
from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import pytest

from histstore.errors import InvalidInput, MissingStep, NotFound
from histstore.reports.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _q(store, sql, *params):
    with store.read() as conn:
        return conn.exec_driver_sql(sql, params).all()


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        self.tables += tag == "table"
        for name, value in attrs:
            if name in ("href", "src"):
                self.refs.append((tag, value))


def _check_links(html_path: Path) -> _Refs:
    """Every href/src is an embedded PNG or a relative file that exists beside the page."""
    parser = _Refs()
    parser.feed(html_path.read_text(encoding="utf-8"))
    assert parser.refs
    for tag, ref in parser.refs:
        if ref.startswith("data:"):
            head, data = ref.split(",", 1)
            assert head == "data:image/png;base64"
            assert base64.b64decode(data).startswith(PNG)
        else:
            assert "://" not in ref and not ref.startswith("/"), ref
            target = html_path.parent / ref
            assert target.is_file(), ref
            assert target.read_bytes().startswith(PNG)
    return parser


def test_report_of_a_classification_run(trained):
    store, rid = trained.store, trained.run_id
    r = write_report(store, rid)
    assert r.out_dir == store.artifacts_dir / "reports" / f"run{rid}"
    assert set(r.figures) == {"roc", "confusion", "curves"}
    for p in r.paths:
        assert p.is_file() and p.stat().st_size > 1000
    refs = _check_links(r.html)
    assert refs.tables >= 3  # run, test summary, per-fold
    text = r.html.read_text()
    for f in r.figures.values():  # each figure both embedded and linked
        assert f'href="{f.name}"' in text
    # the legend's mean AUC is the catalog's
    (auc,) = _q(store, "SELECT mean FROM run_summary WHERE run_id = ? AND subset = 'test' AND metric = 'auc'", rid)[0]
    assert r.mean_auc == pytest.approx(auc, abs=1e-9) and f"{auc:.3f}" in text
    assert "selected epoch" in text
    # registered once, even when written again
    write_report(store, rid)
    rows = _q(store, "SELECT kind, path FROM artifacts WHERE run_id = ? AND kind LIKE 'report-%' ORDER BY kind", rid)
    assert rows == sorted([("report-confusion", f"artifacts/reports/run{rid}/confusion.png"),
                           ("report-curves", f"artifacts/reports/run{rid}/curves.png"),
                           ("report-html", f"artifacts/reports/run{rid}/report.html"),
                           ("report-roc", f"artifacts/reports/run{rid}/roc.png")])


def test_report_cli_into_a_folder(trained, tmp_path):
    from click.testing import CliRunner

    from histstore.cli.main import main

    out = tmp_path / "rep"
    res = CliRunner().invoke(main, ["--store", str(trained.store.root), "report", str(trained.run_id),
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out / "report.html") in res.output.splitlines()
    _check_links(out / "report.html")
    # a report outside the store is registered by its absolute path
    assert _q(trained.store, "SELECT count(*) FROM artifacts WHERE path = ?", str(out / "report.html")) == [(1,)]


def test_gene_and_regression_runs(trained):
    from histstore.train import TrainSettings, train

    store = trained.store
    base = dict(cohort="syn20", folds=2, epochs=2, patience=None, lr=5e-4, device="cpu")
    genes = train(store, TrainSettings(task="de", genes=("TP53", "MYC", "STK11"), threshold=0.5, **base),
                  show_progress=False)
    r = write_report(store, genes.run_id)
    assert set(r.figures) == {"genes"}
    _check_links(r.html)
    stored = _q(store, "SELECT value FROM metrics WHERE run_id = ? AND name = 'spearman_metric_vs_mean_abs_log2fc'",
                genes.run_id)
    if stored:  # the scatter's rho is the one the train job stored
        assert r.spearman_rho == pytest.approx(stored[0][0])
    text = r.html.read_text()
    for child in genes.children:
        assert child.task in text
    # a gene's own run is an ordinary classification report, naming its parent
    child = write_report(store, genes.children[0].run_id)
    assert {"roc", "confusion", "curves"} <= set(child.figures)
    assert f"gene run {genes.run_id}" in child.html.read_text()
    # regression: predicted versus true instead of ROC
    fc = train(store, TrainSettings(task="fc:TP53", **base), show_progress=False)
    r = write_report(store, fc.run_id)
    assert set(r.figures) == {"regression", "curves"}
    _check_links(r.html)


def test_report_errors_are_one_line(trained):
    from histstore.runs import create_run

    store = trained.store
    with pytest.raises(NotFound, match="no run 999"):
        write_report(store, 999)
    with store.write() as conn:
        pending = create_run(conn, kind="train", settings={}, cohort="syn20", task="tumor", model="mean")
        embed_run = create_run(conn, kind="embed", settings={})
    with pytest.raises(MissingStep) as e:
        write_report(store, pending)
    assert "no test predictions yet (status running)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InvalidInput, match=f"run {embed_run} is an embed run"):
        write_report(store, embed_run)
