"""JSON Schemas of the public topics (package data)."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

#: Schema name of each decisions schema version (``load_schema`` argument).
DECISIONS_SCHEMAS: dict[int, str] = {1: "decisions", 2: "decisions.v2", 3: "decisions.v3"}


def load_schema(name: str) -> dict[str, Any]:
    """Load ``<name>.schema.json`` (``telemetry``, ``dlq``, ``decisions`` = v1, ``decisions.v2``, ``decisions.v3``,
    ``routes``, ``compression_profile`` = the ``BWP_COMPRESSION_PROFILE`` file format)."""
    return json.loads(files(__name__).joinpath(f"{name}.schema.json").read_text())


def decisions_schema(version: int) -> dict[str, Any]:
    """The decisions schema of ``version`` (1, 2 or 3); raises :class:`ValueError` for another one."""
    if version not in DECISIONS_SCHEMAS:
        raise ValueError(f"decisions schema version must be one of {sorted(DECISIONS_SCHEMAS)}, got {version!r}")
    return load_schema(DECISIONS_SCHEMAS[version])
