"""run_summary says how many folds each mean rests on and which folds left a metric undefined.

Before: folds where a metric was undefined (NaN/NULL, e.g. AUC of a test fold with one class)
were dropped silently, and a metric undefined in every fold had no row at all. Now every final
per-fold metric has a row: n_folds (folds where it is defined; mean/sd/min/max over those),
n_undefined and undefined_folds (the fold numbers, ascending).

Revision ID: 0005
Revises: 0002
"""
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None

_DEFINED = "m.value IS NOT NULL AND NOT isnan(m.value)"

RUN_SUMMARY = f"""
    SELECT r.run_id, r.parent_run_id, r.kind, r.cohort, r.task, r.model, r.status,
           m.subset, m.name AS metric,
           count(*) FILTER (WHERE {_DEFINED}) AS n_folds,
           avg(m.value) FILTER (WHERE {_DEFINED}) AS mean,
           stddev_samp(m.value) FILTER (WHERE {_DEFINED}) AS sd,
           min(m.value) FILTER (WHERE {_DEFINED}) AS min,
           max(m.value) FILTER (WHERE {_DEFINED}) AS max,
           count(*) FILTER (WHERE NOT ({_DEFINED})) AS n_undefined,
           coalesce(list(m.fold ORDER BY m.fold) FILTER (WHERE NOT ({_DEFINED})), []::INTEGER[])
               AS undefined_folds
    FROM runs r JOIN metrics m ON m.run_id = r.run_id
    WHERE m.fold IS NOT NULL AND m.step IS NULL
    GROUP BY ALL
"""

# 0001's definition, restored on downgrade
OLD_RUN_SUMMARY = """
    SELECT r.run_id, r.parent_run_id, r.kind, r.cohort, r.task, r.model, r.status,
           m.subset, m.name AS metric, count(*) AS n_folds,
           avg(m.value) AS mean, stddev_samp(m.value) AS sd,
           min(m.value) AS min, max(m.value) AS max
    FROM runs r JOIN metrics m ON m.run_id = r.run_id
    WHERE m.fold IS NOT NULL AND m.step IS NULL AND NOT isnan(m.value)
    GROUP BY ALL
"""


def upgrade() -> None:
    op.execute(f"CREATE OR REPLACE VIEW run_summary AS {RUN_SUMMARY}")


def downgrade() -> None:
    op.execute(f"CREATE OR REPLACE VIEW run_summary AS {OLD_RUN_SUMMARY}")
