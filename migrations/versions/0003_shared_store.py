"""A store shared by several processes: run heartbeats and progress, where case ids came from,
checksums of MIL checkpoints.

- runs.updated_at: the job's heartbeat (set at every commit and at least every ~30 s while it
  runs); runs.pid: its process id on runs.host; progress_done / progress_total /
  progress_unit: units of work committed (slides, steps, folds). A 'running' run whose process
  is gone or whose heartbeat is stale is shown as interrupted (histstore.liveness).
- slides.case_id_source: 'manifest', 'gdc', 'tcga-barcode' or 'slide' (--case-id slide: each
  slide its own case); NULL for slides catalogued before this revision.
- artifacts.sha256: checksum of the file (MIL fold checkpoints), checked by `histstore verify`.

DuckDB cannot drop a column of a table that foreign keys point at (runs, slides), so the
downgrade leaves those columns in place (older code ignores them) and upgrade adds them only
when missing.

Revision ID: 0003
Revises: 0002
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = [
    ("runs", "updated_at", "TIMESTAMP"),
    ("runs", "pid", "BIGINT"),
    ("runs", "progress_done", "BIGINT"),
    ("runs", "progress_total", "BIGINT"),
    ("runs", "progress_unit", "TEXT"),
    ("slides", "case_id_source", "TEXT"),
    ("artifacts", "sha256", "TEXT"),
]


def upgrade() -> None:
    for table, column, sql_type in COLUMNS:
        op.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {sql_type}")


def downgrade() -> None:
    op.execute("ALTER TABLE artifacts DROP COLUMN sha256")
