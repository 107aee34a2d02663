"""Docs cannot drift: the CLI reference is generated from --help, every command has help
text and appears in the README, and every SQL recipe in the docs runs on a real store."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_current():
    from histstore.cli.docgen import render

    assert (ROOT / "docs" / "cli.md").read_text() == render(), \
        "docs/cli.md is stale: run `python -m histstore.cli.docgen > docs/cli.md`"


def test_every_command_has_help_and_is_in_the_readme():
    from histstore.cli.docgen import all_commands

    readme = (ROOT / "README.md").read_text()
    for path, cmd in all_commands():
        assert (cmd.help or "").strip(), f"{' '.join(path)} has no help text"
        if len(path) == 2:
            assert f"`{path[1]}`" in readme, f"README does not mention `{path[1]}`"


def _sql_blocks(text: str) -> list[str]:
    stmts = []
    for block in re.findall(r"```sql\n(.*?)```", text, re.S):
        stmts += [s.strip() for s in block.split(";") if s.strip()]
    return stmts


@pytest.mark.parametrize("doc", ["README.md", "docs/catalog.md"])
def test_sql_recipes_run(embedded, doc):
    from histstore.sql import run_sql
    from histstore.train import TrainSettings, train

    train(embedded, TrainSettings(cohort="syn20", task="tumor", folds=2, epochs=2, device="cpu"),
          show_progress=False)
    stmts = _sql_blocks((ROOT / doc).read_text())
    assert stmts
    for stmt in stmts:
        run_sql(embedded, stmt)  # raises SQLError on any mistake


def test_demo_sql_runs(embedded):
    from histstore.demo import EXAMPLE_SQL
    from histstore.sql import run_sql

    for _, sql in EXAMPLE_SQL:
        run_sql(embedded, sql.format(run=1, gene_run=1))
