"""Artifacts table: files a job wrote (QC thumbnails, heatmaps, reports), findable in SQL.

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE artifacts_id_seq START 1")
    op.execute("""CREATE TABLE artifacts (
        artifact_id BIGINT PRIMARY KEY DEFAULT nextval('artifacts_id_seq'),
        kind TEXT NOT NULL,
        path TEXT NOT NULL,
        run_id BIGINT REFERENCES runs (run_id),
        slide_id TEXT REFERENCES slides (slide_id),
        fold INTEGER,
        description TEXT,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE artifacts")
    op.execute("DROP SEQUENCE artifacts_id_seq")
