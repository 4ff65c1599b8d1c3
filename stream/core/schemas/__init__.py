"""JSON Schemas of the public topics (package data)."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any


def load_schema(name: str) -> dict[str, Any]:
    """Load ``<name>.schema.json`` (``telemetry``, ``decisions``)."""
    return json.loads(files(__name__).joinpath(f"{name}.schema.json").read_text())
