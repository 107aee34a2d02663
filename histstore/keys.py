"""Stable keys for settings: equal settings -> equal key, whatever the dict order."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)


def settings_key(settings: dict[str, Any], length: int = 16) -> str:
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:length]
