"""Whether two embedding sets describe tiles the same way, so that a model trained on one can
be applied to the other (`histstore predict`). No torch here.

Sets are keyed by their settings (embeddings/sets.py), so two cohorts embedded with the same
encoder, tiling and stain normalisation share ONE set; two different sets differ in at least
one of these. What must agree: the encoder (its name and weights' sha256; an imported set
matches only itself, as its features' origin is not known), the tiling settings (tile size,
magnification, overlap, tissue rule), the stain normalisation (method and fit settings) and
the feature dimension. The stored dtype (float16/float32) may differ: models read float32.
"""
from __future__ import annotations

import sqlalchemy as sa

from histstore.embeddings.sets import EmbeddingSetInfo


def _encoder_name(conn: sa.Connection, info: EmbeddingSetInfo) -> str:
    if info.encoder_id is None:
        return f"imported {info.name}"
    name = conn.exec_driver_sql("SELECT name FROM encoders WHERE encoder_id = ?", (info.encoder_id,)).scalar()
    return str(name)


def encoder_of(conn: sa.Connection, info: EmbeddingSetInfo) -> str:
    """The encoder's name (for messages and `histstore embed --encoder`)."""
    return _encoder_name(conn, info)


def _tiling_text(info: EmbeddingSetInfo) -> str:
    t = info.tiling_settings or {}
    keys = ("tile_size", "target_mpp", "overlap", "tile_rule", "min_tissue")
    shown = ", ".join(f"{k} {t[k]}" for k in keys if t.get(k) is not None)
    return shown or f"key {str(info.tiling_key)[:8]}"


def set_differences(conn: sa.Connection, trained: EmbeddingSetInfo, other: EmbeddingSetInfo) -> list[str]:
    """What differs between the set a model was trained on and another set, one phrase each
    ("encoder resnet18 vs vit-s"); empty when the model applies to the other set."""
    if trained.embedding_set_id == other.embedding_set_id:
        return []
    out = []
    if trained.kind == "imported" or other.kind == "imported":
        out.append(f"imported features: set {other.name!r} is not the run's set {trained.name!r} "
                   "and where imported features come from cannot be checked")
        return out
    a, b = trained.settings or {}, other.settings or {}
    ea, eb = _encoder_name(conn, trained), _encoder_name(conn, other)
    if trained.encoder_id != other.encoder_id or a.get("encoder_sha256") != b.get("encoder_sha256"):
        out.append(f"encoder {ea} vs {eb}" if ea != eb else f"encoder {ea}'s weights (sha256) differ")
    if trained.tiling_key != other.tiling_key:
        out.append(f"tiling ({_tiling_text(trained)}) vs ({_tiling_text(other)})")
    if trained.stain_norm != other.stain_norm:
        out.append(f"stain normalisation {trained.stain_norm} vs {other.stain_norm}")
    elif a.get("stain_fit") != b.get("stain_fit"):
        out.append(f"stain fit settings {a.get('stain_fit')} vs {b.get('stain_fit')}")
    if trained.dim != other.dim:
        out.append(f"feature dimension {trained.dim} vs {other.dim}")
    known = {"encoder", "encoder_sha256", "tiling_key", "stain_norm", "stain_fit", "dtype"}
    rest = sorted(k for k in set(a) | set(b) if k not in known and a.get(k) != b.get(k))
    if rest and not out:
        out.append("settings " + ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in rest))
    return out
