"""SQLAlchemy models of the catalog.

The migrations (migrations/versions) are the source of truth for the on-disk schema; these
models mirror them for ORM use, and tests/catalog/test_schema.py checks that the two agree.

DuckDB facts that shaped this schema (see ../shared/docs/stack-notes.md):
- integer keys come from a Sequence with a server default, so rows inserted by DuckDB itself
  (bulk inserts from Arrow frames) get ids too;
- foreign keys and CHECKs can only be declared in CREATE TABLE, so every link the whole
  mission needs is declared here from the start; ON DELETE actions are not supported;
- sa.Float is 32-bit: metrics, fold changes and mpp use Double.
Readable text keys (cohort name, slide_id, case_id, gene symbol) are the primary keys where
people will type them in SQL; internal integer keys elsewhere.
"""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


def _id_column(seq_name: str):
    seq = sa.Sequence(seq_name)
    return mapped_column(sa.BigInteger, seq, server_default=seq.next_value(), primary_key=True)


def _created():
    return mapped_column(sa.DateTime, server_default=sa.func.current_timestamp(), nullable=False)


class Cohort(Base):
    __tablename__ = "cohorts"
    name: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    description: Mapped[str | None] = mapped_column(sa.Text)
    definition: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = _created()


class Case(Base):
    __tablename__ = "cases"
    case_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    project: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = _created()


class Slide(Base):
    __tablename__ = "slides"
    slide_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    case_id: Mapped[str] = mapped_column(sa.Text, sa.ForeignKey("cases.case_id"), nullable=False)
    path: Mapped[str | None] = mapped_column(sa.Text)
    fingerprint: Mapped[str | None] = mapped_column(sa.Text)
    file_size: Mapped[int | None] = mapped_column(sa.BigInteger)
    vendor: Mapped[str | None] = mapped_column(sa.Text)
    width: Mapped[int | None] = mapped_column(sa.BigInteger)
    height: Mapped[int | None] = mapped_column(sa.BigInteger)
    level_count: Mapped[int | None] = mapped_column(sa.Integer)
    mpp: Mapped[float | None] = mapped_column(sa.Double)
    mpp_source: Mapped[str | None] = mapped_column(sa.Text)
    objective_power: Mapped[float | None] = mapped_column(sa.Double)
    sample_id: Mapped[str | None] = mapped_column(sa.Text)
    sample_type: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.Text, nullable=False)
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    case_id_source: Mapped[str | None] = mapped_column(sa.Text)  # 0003


class CohortSlide(Base):
    __tablename__ = "cohort_slides"
    cohort: Mapped[str] = mapped_column(sa.Text, sa.ForeignKey("cohorts.name"), primary_key=True)
    slide_id: Mapped[str] = mapped_column(sa.Text, sa.ForeignKey("slides.slide_id"), primary_key=True)
    added_at: Mapped[datetime] = _created()


class Tiling(Base):
    __tablename__ = "tilings"
    tiling_id: Mapped[int] = _id_column("tilings_id_seq")
    slide_id: Mapped[str] = mapped_column(sa.Text, sa.ForeignKey("slides.slide_id"), nullable=False)
    kind: Mapped[str] = mapped_column(sa.Text, nullable=False)
    settings_key: Mapped[str] = mapped_column(sa.Text, nullable=False)
    settings: Mapped[dict] = mapped_column(sa.JSON, nullable=False)
    target_mpp: Mapped[float | None] = mapped_column(sa.Double)
    tile_size: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    overlap: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    min_tissue: Mapped[float | None] = mapped_column(sa.Double)
    tissue_method: Mapped[str | None] = mapped_column(sa.Text)
    read_level: Mapped[int | None] = mapped_column(sa.Integer)
    read_size: Mapped[int | None] = mapped_column(sa.Integer)
    size_l0: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    n_tiles: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    tissue_area_mm2: Mapped[float | None] = mapped_column(sa.Double)
    qc_path: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = _created()
    __table_args__ = (sa.UniqueConstraint("slide_id", "settings_key"),)


class Tile(Base):
    __tablename__ = "tiles"
    tile_id: Mapped[int] = _id_column("tiles_id_seq")
    tiling_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("tilings.tiling_id"), nullable=False)
    slide_id: Mapped[str] = mapped_column(sa.Text, sa.ForeignKey("slides.slide_id"), nullable=False)
    idx: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    x: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    y: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    size_l0: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    tissue_fraction: Mapped[float | None] = mapped_column(sa.Float)


class Label(Base):
    __tablename__ = "labels"
    label_id: Mapped[int] = _id_column("labels_id_seq")
    task: Mapped[str] = mapped_column(sa.Text, nullable=False)
    level: Mapped[str] = mapped_column(sa.Text, nullable=False)
    slide_id: Mapped[str | None] = mapped_column(sa.Text, sa.ForeignKey("slides.slide_id"))
    case_id: Mapped[str | None] = mapped_column(sa.Text, sa.ForeignKey("cases.case_id"))
    value: Mapped[str] = mapped_column(sa.Text, nullable=False)
    source: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = _created()


class Gene(Base):
    __tablename__ = "genes"
    symbol: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    is_driver: Mapped[bool] = mapped_column(sa.Boolean, nullable=False)
    source: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = _created()


class FoldChange(Base):
    __tablename__ = "fold_changes"
    case_id: Mapped[str] = mapped_column(sa.Text, sa.ForeignKey("cases.case_id"), primary_key=True)
    gene: Mapped[str] = mapped_column(sa.Text, sa.ForeignKey("genes.symbol"), primary_key=True)
    source: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    log2_fold_change: Mapped[float] = mapped_column(sa.Double, nullable=False)
    p_adj: Mapped[float | None] = mapped_column(sa.Double)


class Encoder(Base):
    __tablename__ = "encoders"
    encoder_id: Mapped[int] = _id_column("encoders_id_seq")
    name: Mapped[str] = mapped_column(sa.Text, nullable=False, unique=True)
    method: Mapped[str] = mapped_column(sa.Text, nullable=False)
    architecture: Mapped[str] = mapped_column(sa.Text, nullable=False)
    dim: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    settings: Mapped[dict] = mapped_column(sa.JSON, nullable=False)
    checkpoint_path: Mapped[str | None] = mapped_column(sa.Text)
    checkpoint_sha256: Mapped[str | None] = mapped_column(sa.Text)
    pretrain_run_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = _created()


class EmbeddingSet(Base):
    __tablename__ = "embedding_sets"
    embedding_set_id: Mapped[int] = _id_column("embedding_sets_id_seq")
    name: Mapped[str] = mapped_column(sa.Text, nullable=False, unique=True)
    kind: Mapped[str] = mapped_column(sa.Text, nullable=False)
    encoder_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("encoders.encoder_id"))
    settings_key: Mapped[str] = mapped_column(sa.Text, nullable=False, unique=True)
    tiling_key: Mapped[str | None] = mapped_column(sa.Text)
    tiling_settings: Mapped[dict | None] = mapped_column(sa.JSON)
    stain_norm: Mapped[str | None] = mapped_column(sa.Text)
    dim: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    dtype: Mapped[str] = mapped_column(sa.Text, nullable=False)
    zarr_path: Mapped[str] = mapped_column(sa.Text, nullable=False)
    settings: Mapped[dict] = mapped_column(sa.JSON, nullable=False)
    source_format: Mapped[str | None] = mapped_column(sa.Text)
    attributes: Mapped[dict | None] = mapped_column(sa.JSON)
    code_version: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.Text, nullable=False)
    created_at: Mapped[datetime] = _created()
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime)


class EmbeddingArray(Base):
    __tablename__ = "embedding_arrays"
    embedding_set_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("embedding_sets.embedding_set_id"), primary_key=True)
    slide_id: Mapped[str] = mapped_column(sa.Text, sa.ForeignKey("slides.slide_id"), primary_key=True)
    tiling_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("tilings.tiling_id"), nullable=False)
    n_rows: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    dim: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    status: Mapped[str] = mapped_column(sa.Text, nullable=False)
    checksum: Mapped[str] = mapped_column(sa.Text, nullable=False)
    created_at: Mapped[datetime] = _created()


class SlideStain(Base):
    """Stain normalisation of one slide in one embedding set (migration 0007)."""
    __tablename__ = "slide_stain"
    embedding_set_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("embedding_sets.embedding_set_id"), primary_key=True)
    slide_id: Mapped[str] = mapped_column(sa.Text, sa.ForeignKey("slides.slide_id"), primary_key=True)
    method: Mapped[str] = mapped_column(sa.Text, nullable=False)
    stain_matrix: Mapped[list | None] = mapped_column(sa.ARRAY(sa.Double, dimensions=2))  # [H, E] x [R, G, B]
    max_concentrations: Mapped[list | None] = mapped_column(sa.ARRAY(sa.Double))  # [H, E]
    tiles_sampled: Mapped[int | None] = mapped_column(sa.Integer)
    n_tiles: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    tiles_fallback: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    note: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = _created()

class Run(Base):
    __tablename__ = "runs"
    run_id: Mapped[int] = _id_column("runs_id_seq")
    parent_run_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("runs.run_id"))
    kind: Mapped[str] = mapped_column(sa.Text, nullable=False)
    name: Mapped[str | None] = mapped_column(sa.Text)
    cohort: Mapped[str | None] = mapped_column(sa.Text, sa.ForeignKey("cohorts.name"))
    task: Mapped[str | None] = mapped_column(sa.Text)
    model: Mapped[str | None] = mapped_column(sa.Text)
    embedding_set_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("embedding_sets.embedding_set_id"))
    encoder_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("encoders.encoder_id"))
    settings: Mapped[dict] = mapped_column(sa.JSON, nullable=False)
    seed: Mapped[int | None] = mapped_column(sa.BigInteger)
    code_version: Mapped[str | None] = mapped_column(sa.Text)
    host: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.Text, nullable=False)
    started_at: Mapped[datetime] = _created()
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    error: Mapped[str | None] = mapped_column(sa.Text)
    # 0003: heartbeat and progress of a running job
    updated_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    pid: Mapped[int | None] = mapped_column(sa.BigInteger)
    progress_done: Mapped[int | None] = mapped_column(sa.BigInteger)
    progress_total: Mapped[int | None] = mapped_column(sa.BigInteger)
    progress_unit: Mapped[str | None] = mapped_column(sa.Text)


class Split(Base):
    __tablename__ = "splits"
    run_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("runs.run_id"), primary_key=True)
    fold: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    slide_id: Mapped[str] = mapped_column(sa.Text, sa.ForeignKey("slides.slide_id"), primary_key=True)
    case_id: Mapped[str] = mapped_column(sa.Text, sa.ForeignKey("cases.case_id"), nullable=False)
    subset: Mapped[str] = mapped_column(sa.Text, nullable=False)


class Prediction(Base):
    __tablename__ = "predictions"
    run_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("runs.run_id"), primary_key=True)
    fold: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    slide_id: Mapped[str] = mapped_column(sa.Text, sa.ForeignKey("slides.slide_id"), primary_key=True)
    subset: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    label: Mapped[str | None] = mapped_column(sa.Text)
    target: Mapped[float | None] = mapped_column(sa.Double)
    score: Mapped[float | None] = mapped_column(sa.Double)
    predicted: Mapped[str | None] = mapped_column(sa.Text)


class Attention(Base):
    __tablename__ = "attention"
    # No primary key and no foreign keys (revision 0008): tens of millions of rows per run at
    # paper scale, and DuckDB backs every key with an index (~71 against 4-9 bytes a row,
    # benchmarks/bench_attention_scale.py).
    # (run_id, fold, tile_id) is unique by construction (each tile is scored once per fold it
    # is tested in); run_id is a run and tile_id a tile, written only by `histstore train`.
    __mapper_args__ = {"primary_key": ["run_id", "fold", "tile_id"]}
    run_id: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    fold: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    tile_id: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    score: Mapped[float] = mapped_column(sa.Float, nullable=False)


class Metric(Base):
    __tablename__ = "metrics"
    __mapper_args__ = {"primary_key": ["run_id", "fold", "subset", "name", "step"]}
    run_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("runs.run_id"), nullable=False)
    fold: Mapped[int | None] = mapped_column(sa.Integer)
    subset: Mapped[str | None] = mapped_column(sa.Text)
    name: Mapped[str] = mapped_column(sa.Text, nullable=False)
    step: Mapped[int | None] = mapped_column(sa.BigInteger)
    value: Mapped[float | None] = mapped_column(sa.Double)


class Artifact(Base):
    __tablename__ = "artifacts"
    artifact_id: Mapped[int] = _id_column("artifacts_id_seq")
    kind: Mapped[str] = mapped_column(sa.Text, nullable=False)
    path: Mapped[str] = mapped_column(sa.Text, nullable=False)
    run_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("runs.run_id"))
    slide_id: Mapped[str | None] = mapped_column(sa.Text, sa.ForeignKey("slides.slide_id"))
    fold: Mapped[int | None] = mapped_column(sa.Integer)
    description: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = _created()
    sha256: Mapped[str | None] = mapped_column(sa.Text)  # 0003
