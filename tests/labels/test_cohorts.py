import pytest

from histstore.cohorts import create_cohort, show_cohort
from histstore.errors import EmptyCohort, InvalidInput

from .conftest import SLIDES, snapshot


def _members(store, name):
    with store.read() as conn:
        return [r[0] for r in conn.exec_driver_sql(
            "SELECT slide_id FROM cohort_slides WHERE cohort = ? ORDER BY 1", (name,)).all()]


def test_create_from_sql_file_and_filter(catalog, tmp_path, cli):
    r = cli("cohort", "create", "all_tcga", "--sql", "SELECT slide_id FROM slides WHERE slide_id LIKE 'TCGA%'")
    assert r.exit_code == 0, r.output
    assert "8 slides from 4 cases" in r.output
    r = cli("cohort", "create", "tumours", "--from", "all_tcga", "--where", "slide_id LIKE '%-01Z-%'")
    assert r.exit_code == 0, r.output
    assert len(_members(catalog, "tumours")) == 4
    f = tmp_path / "list.txt"
    f.write_text("TCGA-AA-0001-01Z-00-DX1\nlocal_slide_7\n")
    assert cli("cohort", "create", "two", "--slides", f).exit_code == 0
    assert _members(catalog, "two") == ["TCGA-AA-0001-01Z-00-DX1", "local_slide_7"]
    r = cli("cohort", "list", "--format", "csv")
    assert "all_tcga,8,4" in r.output.replace('"', "")


def test_membership_is_a_snapshot(catalog):
    create_cohort(catalog, "c", sql="SELECT slide_id FROM slides WHERE slide_id LIKE 'TCGA%'")
    with catalog.write() as conn:
        conn.exec_driver_sql("INSERT INTO cases (case_id) VALUES ('TCGA-AA-0009')")
        conn.exec_driver_sql("INSERT INTO slides (slide_id, case_id, status) "
                             "VALUES ('TCGA-AA-0009-01Z-00-DX1', 'TCGA-AA-0009', 'registered')")
    assert len(_members(catalog, "c")) == 8  # the new slide does not leak in


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(sql="SELECT slide_id FROM slides WHERE false"), EmptyCohort, "would be empty"),
    (dict(sql="DELETE FROM slides"), Exception, "exactly one SELECT statement; found DELETE"),
    (dict(sql="SELECT case_id FROM cases"), Exception, "slide_id"),
    (dict(), InvalidInput, "exactly one"),
    (dict(from_cohort="nope"), Exception, "no cohort 'nope'"),
])
def test_bad_cohorts_change_nothing(catalog, kwargs, error, words):
    before = snapshot(catalog)
    with pytest.raises(error, match=words):
        create_cohort(catalog, "x", **kwargs)
    assert snapshot(catalog) == before


def test_unknown_slides_in_list(catalog, tmp_path):
    f = tmp_path / "list.csv"
    f.write_text("slide_id\nTCGA-AA-0001-01Z-00-DX1\nghost\n")
    with pytest.raises(InvalidInput, match="line 3"):
        create_cohort(catalog, "x", slides_file=f)


def test_duplicate_name_refused(catalog):
    create_cohort(catalog, "c", sql="SELECT slide_id FROM slides")
    with pytest.raises(InvalidInput, match="already exists"):
        create_cohort(catalog, "c", sql="SELECT slide_id FROM slides")


def test_show_reports_balance_and_single_class(catalog, cli, tmp_path):
    create_cohort(catalog, "tum", sql="SELECT slide_id FROM slides WHERE slide_id LIKE '%-01Z-%'")
    cli("labels", "from-barcodes")
    r = cli("cohort", "show", "tum")
    assert r.exit_code == 0, r.output
    assert "4 slides, 4 cases" in r.output
    assert "tumor" in r.output and "single class" in r.output
    rep = show_cohort(catalog, "tum")
    assert rep.label_balance.to_pylist() == [{"task": "tumor", "value": "tumor", "n_slides": 4, "n_cases": 4}]


@pytest.mark.parametrize("args", [
    # issue 13: the user's SQL ran inside the write transaction, only wrapped in a SELECT
    ["--sql", "select slide_id from slides); DELETE FROM labels; SELECT slide_id FROM (select slide_id from slides"],
    ["--sql", "SELECT slide_id FROM slides; DELETE FROM labels"],
    ["--sql", "UPDATE labels SET value = 'x' RETURNING slide_id"],
    ["--sql", "SELECT slide_id FROM read_csv('/etc/passwd')"],
    ["--from", "all", "--where", "true) OR (true); DELETE FROM labels; SELECT 1 WHERE (true"],
    ["--from", "all", "--where", "slide_id IN (SELECT slide_id FROM labels); COPY labels TO '/tmp/x.csv'"],
])
def test_cohort_sql_cannot_change_the_catalog(catalog, cli, args):
    with catalog.write() as conn:
        conn.exec_driver_sql("INSERT INTO labels (task, level, slide_id, value) "
                             "SELECT 'tumor', 'slide', slide_id, 'tumor' FROM slides")
    assert cli("cohort", "create", "all", "--sql", "SELECT slide_id FROM slides").exit_code == 0
    before = snapshot(catalog)
    r = cli("cohort", "create", "evil", *args)
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1, r.output
    assert "Traceback" not in r.output
    assert snapshot(catalog) == before  # labels intact, no cohort 'evil'
