"""Initial catalog schema: the whole mission's tables, keys and views.

Written by hand (DuckDB reflection does not work, so autogenerate cannot). DuckDB can add
neither foreign keys nor CHECK constraints after CREATE TABLE, so every link is here.

Revision ID: 0001
Revises:
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SEQUENCES = ["tilings_id_seq", "tiles_id_seq", "labels_id_seq", "encoders_id_seq",
             "embedding_sets_id_seq", "runs_id_seq"]

TABLES = [
    """CREATE TABLE cohorts (
        name TEXT PRIMARY KEY,
        description TEXT,
        definition TEXT,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    )""",
    """CREATE TABLE cases (
        case_id TEXT PRIMARY KEY,
        project TEXT,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    )""",
    """CREATE TABLE slides (
        slide_id TEXT PRIMARY KEY,
        case_id TEXT NOT NULL REFERENCES cases (case_id),
        path TEXT,
        fingerprint TEXT,
        file_size BIGINT,
        vendor TEXT,
        width BIGINT,
        height BIGINT,
        level_count INTEGER,
        mpp DOUBLE,
        mpp_source TEXT,
        objective_power DOUBLE,
        sample_id TEXT,
        sample_type TEXT,
        status TEXT NOT NULL CHECK (status IN ('ingested', 'failed', 'registered')),
        error TEXT,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
        updated_at TIMESTAMP
    )""",
    """CREATE TABLE cohort_slides (
        cohort TEXT NOT NULL REFERENCES cohorts (name),
        slide_id TEXT NOT NULL REFERENCES slides (slide_id),
        added_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (cohort, slide_id)
    )""",
    """CREATE TABLE tilings (
        tiling_id BIGINT PRIMARY KEY DEFAULT nextval('tilings_id_seq'),
        slide_id TEXT NOT NULL REFERENCES slides (slide_id),
        kind TEXT NOT NULL CHECK (kind IN ('grid', 'imported')),
        settings_key TEXT NOT NULL,
        settings JSON NOT NULL,
        target_mpp DOUBLE,
        tile_size INTEGER NOT NULL,
        overlap INTEGER NOT NULL,
        min_tissue DOUBLE,
        tissue_method TEXT,
        read_level INTEGER,
        read_size INTEGER,
        size_l0 INTEGER NOT NULL,
        n_tiles BIGINT NOT NULL,
        tissue_area_mm2 DOUBLE,
        qc_path TEXT,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
        UNIQUE (slide_id, settings_key)
    )""",
    """CREATE TABLE tiles (
        tile_id BIGINT PRIMARY KEY DEFAULT nextval('tiles_id_seq'),
        tiling_id BIGINT NOT NULL REFERENCES tilings (tiling_id),
        slide_id TEXT NOT NULL REFERENCES slides (slide_id),
        idx INTEGER NOT NULL,
        x BIGINT NOT NULL,
        y BIGINT NOT NULL,
        size_l0 INTEGER NOT NULL,
        tissue_fraction FLOAT
    )""",
    """CREATE TABLE labels (
        label_id BIGINT PRIMARY KEY DEFAULT nextval('labels_id_seq'),
        task TEXT NOT NULL,
        level TEXT NOT NULL CHECK (level IN ('slide', 'case')),
        slide_id TEXT REFERENCES slides (slide_id),
        case_id TEXT REFERENCES cases (case_id),
        value TEXT NOT NULL,
        source TEXT,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
        CHECK ((level = 'slide' AND slide_id IS NOT NULL AND case_id IS NULL)
               OR (level = 'case' AND case_id IS NOT NULL AND slide_id IS NULL))
    )""",
    """CREATE TABLE genes (
        symbol TEXT PRIMARY KEY,
        is_driver BOOLEAN NOT NULL,
        source TEXT,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    )""",
    """CREATE TABLE fold_changes (
        case_id TEXT NOT NULL REFERENCES cases (case_id),
        gene TEXT NOT NULL REFERENCES genes (symbol),
        source TEXT NOT NULL,
        log2_fold_change DOUBLE NOT NULL,
        p_adj DOUBLE,
        PRIMARY KEY (case_id, gene, source)
    )""",
    """CREATE TABLE encoders (
        encoder_id BIGINT PRIMARY KEY DEFAULT nextval('encoders_id_seq'),
        name TEXT NOT NULL UNIQUE,
        method TEXT NOT NULL,
        architecture TEXT NOT NULL,
        dim INTEGER NOT NULL,
        settings JSON NOT NULL,
        checkpoint_path TEXT,
        checkpoint_sha256 TEXT,
        pretrain_run_id BIGINT,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    )""",
    """CREATE TABLE embedding_sets (
        embedding_set_id BIGINT PRIMARY KEY DEFAULT nextval('embedding_sets_id_seq'),
        name TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL CHECK (kind IN ('computed', 'imported')),
        encoder_id BIGINT REFERENCES encoders (encoder_id),
        settings_key TEXT NOT NULL UNIQUE,
        tiling_key TEXT,
        tiling_settings JSON,
        stain_norm TEXT,
        dim INTEGER NOT NULL,
        dtype TEXT NOT NULL,
        zarr_path TEXT NOT NULL,
        settings JSON NOT NULL,
        source_format TEXT,
        attributes JSON,
        code_version TEXT,
        status TEXT NOT NULL,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
        finished_at TIMESTAMP
    )""",
    """CREATE TABLE embedding_arrays (
        embedding_set_id BIGINT NOT NULL REFERENCES embedding_sets (embedding_set_id),
        slide_id TEXT NOT NULL REFERENCES slides (slide_id),
        tiling_id BIGINT NOT NULL REFERENCES tilings (tiling_id),
        n_rows BIGINT NOT NULL,
        dim INTEGER NOT NULL,
        status TEXT NOT NULL,
        checksum TEXT NOT NULL,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (embedding_set_id, slide_id)
    )""",
    """CREATE TABLE runs (
        run_id BIGINT PRIMARY KEY DEFAULT nextval('runs_id_seq'),
        parent_run_id BIGINT REFERENCES runs (run_id),
        kind TEXT NOT NULL CHECK (kind IN ('pretrain', 'embed', 'train', 'evaluate')),
        name TEXT,
        cohort TEXT REFERENCES cohorts (name),
        task TEXT,
        model TEXT,
        embedding_set_id BIGINT REFERENCES embedding_sets (embedding_set_id),
        encoder_id BIGINT REFERENCES encoders (encoder_id),
        settings JSON NOT NULL,
        seed BIGINT,
        code_version TEXT,
        host TEXT,
        status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'interrupted')),
        started_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
        finished_at TIMESTAMP,
        error TEXT
    )""",
    """CREATE TABLE splits (
        run_id BIGINT NOT NULL REFERENCES runs (run_id),
        fold INTEGER NOT NULL,
        slide_id TEXT NOT NULL REFERENCES slides (slide_id),
        case_id TEXT NOT NULL REFERENCES cases (case_id),
        subset TEXT NOT NULL CHECK (subset IN ('train', 'val', 'test')),
        PRIMARY KEY (run_id, fold, slide_id)
    )""",
    """CREATE TABLE predictions (
        run_id BIGINT NOT NULL REFERENCES runs (run_id),
        fold INTEGER NOT NULL,
        slide_id TEXT NOT NULL REFERENCES slides (slide_id),
        subset TEXT NOT NULL CHECK (subset IN ('train', 'val', 'test')),
        label TEXT,
        target DOUBLE,
        score DOUBLE,
        predicted TEXT,
        PRIMARY KEY (run_id, fold, slide_id, subset)
    )""",
    """CREATE TABLE attention (
        run_id BIGINT NOT NULL REFERENCES runs (run_id),
        fold INTEGER NOT NULL,
        tile_id BIGINT NOT NULL REFERENCES tiles (tile_id),
        score FLOAT NOT NULL
    )""",
    """CREATE TABLE metrics (
        run_id BIGINT NOT NULL REFERENCES runs (run_id),
        fold INTEGER,
        subset TEXT,
        name TEXT NOT NULL,
        step BIGINT,
        value DOUBLE
    )""",
]

INDEXES = [
    "CREATE INDEX tiles_tiling_idx ON tiles (tiling_id)",
]

# Views: common questions in one line of SQL. Replaced wholesale by later migrations.
VIEWS = {
    "slide_labels": """
        SELECT l.task, s.slide_id, s.case_id, l.value, l.level, l.source
        FROM labels l JOIN slides s ON s.slide_id = l.slide_id
        WHERE l.level = 'slide'
        UNION ALL
        SELECT l.task, s.slide_id, s.case_id, l.value, l.level, l.source
        FROM labels l JOIN slides s ON s.case_id = l.case_id
        WHERE l.level = 'case'
    """,
    "cohort_overview": """
        SELECT c.name AS cohort, count(cs.slide_id) AS n_slides,
               count(DISTINCT s.case_id) AS n_cases,
               count(*) FILTER (WHERE s.status = 'failed') AS n_failed
        FROM cohorts c
        LEFT JOIN cohort_slides cs ON cs.cohort = c.name
        LEFT JOIN slides s ON s.slide_id = cs.slide_id
        GROUP BY c.name
    """,
    "run_summary": """
        SELECT r.run_id, r.parent_run_id, r.kind, r.cohort, r.task, r.model, r.status,
               m.subset, m.name AS metric, count(*) AS n_folds,
               avg(m.value) AS mean, stddev_samp(m.value) AS sd,
               min(m.value) AS min, max(m.value) AS max
        FROM runs r JOIN metrics m ON m.run_id = r.run_id
        WHERE m.fold IS NOT NULL AND m.step IS NULL AND NOT isnan(m.value)
        GROUP BY ALL
    """,
    "tile_attention": """
        SELECT a.run_id, a.fold, t.slide_id, a.tile_id, t.idx, t.x, t.y, t.size_l0, a.score,
               rank() OVER (PARTITION BY a.run_id, a.fold, t.slide_id ORDER BY a.score DESC)
                   AS rank_in_slide
        FROM attention a JOIN tiles t ON t.tile_id = a.tile_id
    """,
}


def upgrade() -> None:
    for name in SEQUENCES:
        op.execute(f"CREATE SEQUENCE {name} START 1")
    for ddl in TABLES:
        op.execute(ddl)
    for ddl in INDEXES:
        op.execute(ddl)
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for ddl in reversed(TABLES):
        table = ddl.split()[2]
        op.execute(f"DROP TABLE IF EXISTS {table}")
    for name in SEQUENCES:
        op.execute(f"DROP SEQUENCE IF EXISTS {name}")
