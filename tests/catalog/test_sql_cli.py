"""`histstore sql`: read-only by default, every output format, one-line errors."""
import json

import pyarrow.parquet as pq
import pytest


@pytest.fixture
def filled(store):
    with store.write() as conn:
        conn.exec_driver_sql("INSERT INTO cases (case_id) VALUES ('c1'), ('c2')")
    return store


def _case_count(store):
    with store.read() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM cases").scalar()


def test_table_format(filled, cli):
    r = cli("sql", "SELECT case_id FROM cases ORDER BY case_id")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0].strip() == "case_id" and lines[2].strip() == "c1" and "(2 rows)" in r.output


def test_csv_json_parquet(filled, cli, tmp_path):
    r = cli("sql", "SELECT case_id FROM cases ORDER BY 1", "--format", "csv")
    assert r.output.splitlines() == ["case_id", "c1", "c2"]
    r = cli("sql", "SELECT case_id, 1.5 AS x FROM cases ORDER BY 1", "--format", "json")
    assert json.loads(r.output) == [{"case_id": "c1", "x": 1.5}, {"case_id": "c2", "x": 1.5}]
    out = tmp_path / "rows.parquet"
    r = cli("sql", "SELECT case_id FROM cases ORDER BY 1", "--format", "parquet", "-o", out)
    assert r.exit_code == 0
    assert pq.read_table(out).column("case_id").to_pylist() == ["c1", "c2"]
    r = cli("sql", "SELECT 1", "--format", "parquet")
    assert r.exit_code != 0 and "-o FILE" in r.output


def test_csv_quotes_only_where_needed(store, cli):
    """Plain fields stay bare so `cut -d, -f2` reads them; a comma, quote or line break is
    quoted as RFC 4180 says; NULL is empty and an empty string is "" (DuckDB's output)."""
    import csv
    import io

    sql = ("SELECT * FROM (VALUES (1, 'plain', 1.5, DATE '2024-01-02', true), (2, 'a,b', NULL, NULL, false), "
           "(3, 'say \"hi\"', 2.0, NULL, NULL), (4, 'two' || chr(10) || 'lines', -0.25, NULL, true), "
           "(5, '', 0.0, NULL, NULL), (6, NULL, 3.0, NULL, NULL)) t(id, txt, x, day, flag) ORDER BY id")
    sql = f"SELECT id, txt, x::DOUBLE AS x, day, flag FROM ({sql})"
    r = cli("sql", sql, "--format", "csv")
    assert r.exit_code == 0, r.output
    assert r.output == ('id,txt,x,day,flag\n1,plain,1.5,2024-01-02,true\n2,"a,b",,,false\n'
                        '3,"say ""hi""",2,,\n4,"two\nlines",-0.25,,true\n5,"",0,,\n6,,3,,\n')
    # what the shell pipeline sees, and what a CSV reader gets back
    assert [line.split(",")[1] for line in r.output.splitlines()[:2]] == ["txt", "plain"]
    rows = list(csv.reader(io.StringIO(r.output)))
    assert [row[1] for row in rows[1:]] == ["plain", "a,b", 'say "hi"', "two\nlines", "", ""]


def test_file_and_stdin(filled, cli, tmp_path):
    f = tmp_path / "q.sql"
    f.write_text("SELECT count(*) AS n FROM cases")
    assert "2" in cli("sql", "-f", f, "--format", "csv").output
    assert cli("sql", "--format", "csv", input="SELECT 7 AS n").output.splitlines()[-1] == "7"


@pytest.mark.parametrize("stmt", [
    "INSERT INTO cases (case_id) VALUES ('c3')",
    "DELETE FROM cases",
    "DROP TABLE fold_changes",
    "UPDATE cases SET project = 'x'",
    "CREATE TABLE scratch (a INT)",
])
def test_writes_refused_without_flag(filled, cli, stmt):
    r = cli("sql", stmt)
    assert r.exit_code != 0
    assert "read-only" in r.output and "--write" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert _case_count(filled) == 2


def test_write_flag_allows_and_is_atomic(filled, cli):
    r = cli("sql", "--write", "INSERT INTO cases (case_id) VALUES ('c3')")
    assert r.exit_code == 0 and _case_count(filled) == 3
    # second statement fails: the first is rolled back with it
    r = cli("sql", "--write", "INSERT INTO cases (case_id) VALUES ('c4'); SELECT * FROM nope")
    assert r.exit_code != 0 and _case_count(filled) == 3


def test_sql_error_is_one_line(filled, cli):
    r = cli("sql", "SELEC 1")
    assert r.exit_code != 0
    assert "syntax error" in r.output.lower()
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_missing_store_is_one_line(tmp_path):
    from click.testing import CliRunner

    from histstore.cli.main import main

    r = CliRunner().invoke(main, ["--store", str(tmp_path / "nope"), "status"])
    assert r.exit_code != 0 and "no histstore store" in r.output and "histstore" in r.output
    assert not (tmp_path / "nope").exists()


def test_status_counts(filled, cli):
    r = cli("status")
    assert r.exit_code == 0
    assert "cases:" in r.output and " 2" in r.output


@pytest.mark.parametrize("stmt", [
    "COPY (SELECT 1 AS x) TO '{d}/out.csv'",
    "COPY cases TO '{d}/out.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{d}/dump'",
    "ATTACH '{d}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT * FROM read_csv('{d}/secret.csv')",
    "SELECT * FROM '{d}/secret.csv'",
    "SET enable_external_access = true",
    "RESET lock_configuration",
])
def test_read_only_sql_cannot_touch_files_or_settings(filled, cli, tmp_path, stmt):
    (tmp_path / "secret.csv").write_text("a\n1\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = cli("sql", stmt.format(d=tmp_path))
    assert r.exit_code != 0
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    # (EXPORT DATABASE is refused earlier by DuckDB itself: the catalog has a self-referencing key)
    assert r.output.startswith("Error: refused") or "EXPORT" in stmt, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_output_option_writes_and_never_overwrites_silently(filled, cli, tmp_path):
    out = tmp_path / "cases.csv"
    assert cli("sql", "SELECT case_id FROM cases ORDER BY 1", "--format", "csv", "-o", out).exit_code == 0
    first = out.read_text()
    r = cli("sql", "SELECT 1 AS x", "--format", "csv", "-o", out)
    assert r.exit_code != 0 and "exists" in r.output and "--force" in r.output
    assert out.read_text() == first
    assert cli("sql", "SELECT 1 AS x", "--format", "csv", "-o", out, "--force").exit_code == 0
    assert out.read_text().splitlines() == ["x", "1"]


def test_write_mode_keeps_full_power(filled, cli, tmp_path):
    r = cli("sql", "--write", f"COPY (SELECT case_id FROM cases ORDER BY 1) TO '{tmp_path}/c.csv'")
    assert r.exit_code == 0 and (tmp_path / "c.csv").read_text().split() == ["case_id", "c1", "c2"]


def test_library_reads_work_in_the_sandbox(filled):
    """Arrow and numpy results, registered Arrow frames and temp tables all work read-only."""
    import pyarrow as pa

    from histstore.catalog.bulk import duckdb_connection, query_arrow, query_numpy

    with filled.read() as conn:
        assert query_arrow(conn, "SELECT case_id FROM cases ORDER BY 1").column(0).to_pylist() == ["c1", "c2"]
        assert query_numpy(conn, "SELECT count(*) AS n FROM cases")["n"][0] == 2
        raw = duckdb_connection(conn)
        raw.register("frame", pa.table({"case_id": ["c2", "c3"]}))
        assert raw.execute("SELECT count(*) FROM cases JOIN frame USING (case_id)").fetchone() == (1,)
        assert raw.execute("SELECT current_setting('enable_external_access')").fetchone() == (False,)
