"""Schema revisions: upgrade/downgrade round trips keep data; mismatches are refused."""
import pytest

from histstore.catalog import migrate
from histstore.errors import SchemaMismatch
from histstore.migrate_store import migrate_store
from histstore.store import Store


def _fill(store):
    with store.write() as conn:
        conn.exec_driver_sql("INSERT INTO cases (case_id) VALUES ('TCGA-AA-0001')")
        conn.exec_driver_sql(
            "INSERT INTO slides (slide_id, case_id, status) VALUES ('s1', 'TCGA-AA-0001', 'registered')")
        conn.exec_driver_sql("INSERT INTO cohorts (name) VALUES ('c')")
        conn.exec_driver_sql("INSERT INTO cohort_slides (cohort, slide_id) VALUES ('c', 's1')")


def _count_slides(store):
    with store.read() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM slides").scalar()


def test_every_revision_round_trips_with_data(tmp_path):
    revisions = list(reversed(migrate.known_revisions()))  # oldest first
    for i, rev in enumerate(revisions):
        store = Store(tmp_path / f"s{i}")
        store.root.mkdir()
        with store.admin() as conn:
            with conn.begin():
                migrate.upgrade(conn, rev)
        with store.admin() as conn:
            with conn.begin():
                conn.exec_driver_sql("INSERT INTO cases (case_id) VALUES ('TCGA-AA-0001')")
                conn.exec_driver_sql("INSERT INTO slides (slide_id, case_id, status) "
                                     "VALUES ('s1', 'TCGA-AA-0001', 'registered')")
        before, after = migrate_store(store, "head")
        assert (before, after) == (rev, migrate.head_revision())
        assert _count_slides(store) == 1  # data survives the upgrade
        migrate_store(store, rev)  # and the downgrade back
        with store.admin() as conn:
            assert migrate.current_revision(conn) == rev
            assert conn.exec_driver_sql("SELECT count(*) FROM slides").scalar() == 1


def test_downgrade_to_base_and_up_again(store):
    _fill(store)
    migrate_store(store, "base")
    with store.admin() as conn:
        assert migrate.current_revision(conn) is None
        tables = conn.exec_driver_sql(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'slides'").scalar()
        assert tables == 0
    migrate_store(store, "head")
    assert _count_slides(store) == 0


def test_init_on_existing_store_is_harmless(store):
    _fill(store)
    again, created = Store.init(store.root)
    assert not created
    assert _count_slides(again) == 1


@pytest.mark.parametrize("older, words", [(True, "this histstore needs"),
                                          (False, "newer than this histstore")])
def test_schema_mismatch_is_refused(store, cli, older, words):
    _fill(store)
    if older:
        migrate_store(store, migrate.known_revisions()[1])
    else:
        with store.admin() as conn:
            with conn.begin():
                conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999zz'")
    with pytest.raises(SchemaMismatch, match=words):
        with store.read():
            pass
    result = cli("status")
    assert result.exit_code != 0
    assert words in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    if older:
        assert "histstore migrate" in result.output
