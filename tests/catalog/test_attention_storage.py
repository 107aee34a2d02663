"""Revision 0008: attention rows lose their foreign keys (each one an index as large as the
rows), keep every row through upgrade and downgrade, and stay readable per tile."""
from histstore.catalog import migrate
from histstore.migrate_store import migrate_store
from histstore.store import Store


def _rows(store, sql):
    with store.admin() as conn:
        return conn.exec_driver_sql(sql).all()


def test_attention_rows_survive_0008_both_ways(tmp_path):
    store = Store(tmp_path / "s")
    store.root.mkdir()
    with store.admin() as conn:
        with conn.begin():
            migrate.upgrade(conn, "0002")
            for sql in (
                "INSERT INTO cases (case_id) VALUES ('TCGA-AA-0001')",
                "INSERT INTO slides (slide_id, case_id, status) VALUES ('s1', 'TCGA-AA-0001', 'registered')",
                "INSERT INTO tilings (slide_id, kind, settings_key, settings, tile_size, overlap, size_l0, "
                "n_tiles) VALUES ('s1', 'imported', 'k', '{}', 256, 0, 256, 3)",
                "INSERT INTO tiles (tiling_id, slide_id, idx, x, y, size_l0) SELECT 1, 's1', i, i * 256, 0, 256 "
                "FROM range(3) r(i)",
                "INSERT INTO runs (kind, status, settings) VALUES ('train', 'finished', '{}')",
                "INSERT INTO attention SELECT 1, 0, tile_id, 1.0 / (idx + 1) FROM tiles",
            ):
                conn.exec_driver_sql(sql)
    view = "SELECT slide_id, idx, score, rank_in_slide FROM tile_attention ORDER BY idx"
    before = _rows(store, view)
    assert len(before) == 3 and before[0][3] == 1
    migrate_store(store, "0008")  # (after 0003, 0005 and 0007)
    assert _rows(store, view) == before
    fks = "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'attention' AND constraint_type = 'FOREIGN KEY'"
    assert _rows(store, fks) == [(0,)]
    migrate_store(store, "0002")
    assert _rows(store, view) == before and _rows(store, fks) == [(2,)]
    migrate_store(store, "base")  # the rebuilt table's keys do not block dropping runs and tiles
