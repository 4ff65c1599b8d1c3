"""Helpers shared by the tests (fixtures live in the conftest.py files)."""

from pathlib import Path

#: The repository root.
REPO = Path(__file__).resolve().parents[2]
#: The real traces beside the project (absent on machines without ../shared).
TRACES = REPO.parent / "shared" / "data" / "traces"
