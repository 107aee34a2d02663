"""attention without foreign keys: the per-tile rows of a run stay small at paper scale.

A train run writes one attention row per test tile: every tile of the cohort once per run,
20M rows for a 1,000-slide TCGA cohort, times every gene of a sweep. DuckDB backs each foreign
key with an ART index on the referencing column, and with the keys on run_id and tile_id each
run grew the catalog by ~71 bytes a row (0.4M rows: 29 MB, benchmarks/bench_attention_scale.py
--quick) against 9.2 without them; at 20M rows a run adds 85 MB (4.2 bytes a row: constant
run_id and fold, bit-packed tile ids, ALP-compressed scores) and a slide's tile_attention rows
come back in ~0.1 s (the full benchmark). The rows are written only by
`histstore train`, in the fold's transaction, with tile ids read from the catalog, so the keys
guarded nothing a user can break; the view tile_attention and every per-tile query work as
before. DuckDB cannot drop a constraint, so the table is rebuilt (rows kept, sorted by run,
fold and tile) and the view made again.

Revision ID: 0008
Revises: 0007
"""
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

VIEW = """CREATE VIEW tile_attention AS
        SELECT a.run_id, a.fold, t.slide_id, a.tile_id, t.idx, t.x, t.y, t.size_l0, a.score,
               rank() OVER (PARTITION BY a.run_id, a.fold, t.slide_id ORDER BY a.score DESC)
                   AS rank_in_slide
        FROM attention a JOIN tiles t ON t.tile_id = a.tile_id"""


def _copy_rows(source: str, target: str) -> None:
    op.execute(f"INSERT INTO {target} SELECT run_id, fold, tile_id, score FROM {source} "
               "ORDER BY run_id, fold, tile_id")


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS tile_attention")
    op.execute("CREATE TABLE attention_rebuilt (run_id BIGINT NOT NULL, fold INTEGER NOT NULL, "
               "tile_id BIGINT NOT NULL, score FLOAT NOT NULL)")
    _copy_rows("attention", "attention_rebuilt")
    op.execute("DROP TABLE attention")
    op.execute("ALTER TABLE attention_rebuilt RENAME TO attention")
    op.execute(VIEW)


def downgrade() -> None:
    # a table with foreign keys is made under its final name: DuckDB keeps the name a key was
    # declared under, so a renamed one would block dropping runs and tiles later
    op.execute("DROP VIEW IF EXISTS tile_attention")
    op.execute("ALTER TABLE attention RENAME TO attention_compact")
    op.execute("CREATE TABLE attention (run_id BIGINT NOT NULL REFERENCES runs (run_id), "
               "fold INTEGER NOT NULL, tile_id BIGINT NOT NULL REFERENCES tiles (tile_id), "
               "score FLOAT NOT NULL)")
    _copy_rows("attention_compact", "attention")
    op.execute("DROP TABLE attention_compact")
    op.execute(VIEW)
