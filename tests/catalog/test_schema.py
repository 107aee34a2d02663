"""The ORM models mirror the hand-written migrations exactly."""
import sqlalchemy as sa

from histstore.catalog.models import Base

# DuckDB's information_schema type names for the SQLAlchemy types we use.
_TYPE_NAMES = {
    "BIG_INTEGER": "BIGINT", "INTEGER": "INTEGER", "TEXT": "VARCHAR", "DOUBLE": "DOUBLE", "DATE_TIME": "TIMESTAMP",
    "FLOAT": "FLOAT", "BOOLEAN": "BOOLEAN", "DATETIME": "TIMESTAMP", "JSON": "JSON",
}


def _sa_type_name(col: sa.Column) -> str:
    t = col.type
    if isinstance(t, sa.ARRAY):  # DuckDB lists: DOUBLE[], DOUBLE[][]
        inner = sa.Column("inner", t.item_type)
        return _sa_type_name(inner) + "[]" * (t.dimensions or 1)
    if isinstance(t, sa.JSON):
        return "JSON"
    if isinstance(t, sa.Double):
        return "DOUBLE"
    if isinstance(t, sa.Float):
        return "FLOAT"
    return _TYPE_NAMES[t.__visit_name__.upper()]


def test_models_match_migrated_schema(store):
    with store.read() as conn:
        rows = conn.exec_driver_sql(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name IN "
            "(SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE')"
        ).all()
    db = {}
    for table, column, dtype, nullable in rows:
        db.setdefault(table, {})[column] = (dtype, nullable == "YES")
    db.pop("alembic_version")
    models = {t.name: t for t in Base.metadata.sorted_tables}
    assert set(db) == set(models)
    for name, table in models.items():
        assert set(db[name]) == {c.name for c in table.columns}, name
        for col in table.columns:
            dtype, nullable = db[name][col.name]
            assert dtype == _sa_type_name(col), (name, col.name)
            assert nullable == (col.nullable and not col.primary_key), (name, col.name)


def test_orm_insert_gets_sequence_ids(store):
    from sqlalchemy.orm import Session

    from histstore.catalog.models import Encoder

    with store.write() as conn:
        with Session(bind=conn) as session:
            enc = Encoder(name="e1", method="random", architecture="resnet18", dim=512, settings={"a": 1})
            session.add(enc)
            session.flush()
            assert enc.encoder_id == 1
    with store.read() as conn:
        assert conn.exec_driver_sql("SELECT settings FROM encoders").scalar() in ({"a": 1}, '{"a": 1}', '{"a":1}')


def test_bulk_insert_fills_defaults_and_rolls_back(store):
    import pytest

    from histstore.catalog.bulk import insert_frame, query_numpy

    with store.write() as conn:
        insert_frame(conn, "cases", {"case_id": ["c1", "c2"]})
    with pytest.raises(RuntimeError):
        with store.write() as conn:
            insert_frame(conn, "cases", {"case_id": ["c3"]})
            raise RuntimeError("boom")
    with store.read() as conn:
        got = query_numpy(conn, "SELECT case_id FROM cases ORDER BY case_id")
    assert list(got["case_id"]) == ["c1", "c2"]
