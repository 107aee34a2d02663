"""slide_stain table: the stain normalisation each slide of an embedding set got.

One row per slide per embedding set made with stain normalisation: the per-slide Macenko fit
(stain matrix, 99th-percentile concentrations, tiles sampled) or, for per-tile fitting, only
the counts; how many tiles fell back to no normalisation, and why when the slide fit failed.

Revision ID: 0007
Revises: 0005
"""
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE slide_stain (
        embedding_set_id BIGINT NOT NULL REFERENCES embedding_sets (embedding_set_id),
        slide_id TEXT NOT NULL REFERENCES slides (slide_id),
        method TEXT NOT NULL,
        stain_matrix DOUBLE[][],
        max_concentrations DOUBLE[],
        tiles_sampled INTEGER,
        n_tiles INTEGER NOT NULL,
        tiles_fallback INTEGER NOT NULL,
        note TEXT,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (embedding_set_id, slide_id)
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE slide_stain")
