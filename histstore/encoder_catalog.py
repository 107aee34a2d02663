"""Encoders in the catalog: register one, resolve a user's reference to it. No torch here."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from histstore.errors import NotFound


@dataclass(frozen=True)
class EncoderInfo:
    encoder_id: int
    name: str
    method: str
    architecture: str
    dim: int
    settings: Any
    checkpoint_path: str | None
    checkpoint_sha256: str | None


_COLS = "encoder_id, name, method, architecture, dim, settings, checkpoint_path, checkpoint_sha256"


def _info(row) -> EncoderInfo:
    vals = list(row)
    if isinstance(vals[5], str):
        vals[5] = json.loads(vals[5])
    return EncoderInfo(*vals)


def find_encoder(conn: sa.Connection, ref: str) -> EncoderInfo | None:
    if str(ref).isdigit():
        row = conn.exec_driver_sql(f"SELECT {_COLS} FROM encoders WHERE encoder_id = ?", (int(ref),)).first()
    else:
        row = conn.exec_driver_sql(f"SELECT {_COLS} FROM encoders WHERE name = ?", (str(ref),)).first()
    return _info(row) if row else None


def require_encoder(conn: sa.Connection, ref: str) -> EncoderInfo:
    info = find_encoder(conn, ref)
    if info is None:
        names = [r[0] for r in conn.exec_driver_sql("SELECT name FROM encoders ORDER BY 1").all()]
        raise NotFound(f"no encoder {ref!r}" + (f" (encoders: {', '.join(names)})" if names else ""),
                       hint="run `histstore pretrain`, or name an architecture (resnet18, "
                            "resnet50-layer3) with --weights FILE")
    return info


def register_encoder(conn: sa.Connection, *, name: str, method: str, architecture: str, dim: int,
                     settings: dict, checkpoint_path: str | None = None,
                     checkpoint_sha256: str | None = None, pretrain_run_id: int | None = None) -> EncoderInfo:
    conn.exec_driver_sql(
        "INSERT INTO encoders (name, method, architecture, dim, settings, checkpoint_path, "
        "checkpoint_sha256, pretrain_run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (name, method, architecture, dim, json.dumps(settings), checkpoint_path, checkpoint_sha256,
         pretrain_run_id))
    return find_encoder(conn, name)


def list_encoders_sql() -> str:
    return ("SELECT encoder_id AS id, name, method, architecture, dim, checkpoint_sha256[:12] AS sha256, "
            "pretrain_run_id, created_at FROM encoders ORDER BY 1")
