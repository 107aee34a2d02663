"""`histstore demo --quick` end to end in a temporary store: the printed table and every file
it names exist."""
import re
from pathlib import Path

from click.testing import CliRunner


def test_demo_quick(tmp_path):
    from histstore.cli.main import main

    store = tmp_path / "demo-store"
    r = CliRunner().invoke(main, ["demo", "--store", str(store), "--quick"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = r.output
    for step in ("synthesise", "ingest", "labels", "pretrain", "embed", "train", "genes", "report"):
        assert step in out
    # the metrics table: gated attention vs mean and max pooling, with mean ± sd
    table = out.split("5-fold CV (test folds, mean ± sd):")[1]
    header = table.strip().splitlines()[0]
    assert "gated-attention (tumor)" in header and "mean (tumor)" in header and "max (tumor)" in header
    auc_line = next(line for line in table.splitlines() if line.startswith("auc"))
    aucs = [float(v) for v in re.findall(r"(\d\.\d{3}) ±", auc_line)]
    assert len(aucs) == 3 and aucs[0] >= 0.8, auc_line  # planted tumour found by gated attention
    # every picture it names exists
    pictures = out.split("pictures:")[1].split("try next:")[0].split()
    assert any(p.endswith(".html") for p in pictures) and any(p.endswith(".png") for p in pictures)
    for p in pictures:
        assert Path(p).is_file(), p
    # the SQL it suggests runs
    queries = re.findall(r'sql "(.*)"', out)
    assert len(queries) == 3
    again = CliRunner().invoke(main, ["--store", str(store), "sql", queries[0]])
    assert again.exit_code == 0 and "gated-attention" in again.output
    # it ends with the command that opens the store in the browser
    assert f"histstore --store {store.absolute()} serve" in out.split("demo finished in")[1]
    # a second demo into the same store is refused, not mixed in
    r = CliRunner().invoke(main, ["demo", "--store", str(store), "--quick"])
    assert r.exit_code != 0 and "already holds a store" in r.output
