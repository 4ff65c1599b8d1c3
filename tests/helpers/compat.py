"""Helpers of the third-party compatibility tests (tests/stream/**/test_*_compat.py)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from types import ModuleType

import pytest

from stream.core.compat import covering_range, installed_version, is_tested, reviewed_fingerprints
from stream.core.errors import ConfigError
from tests.helpers import REPO


def pyproject_spec(dist: str) -> str:
    """The version specifier of ``dist`` in ``pyproject.toml`` ``[project] dependencies``
    (``">=0.15.2,<0.16"``), with the spaces removed."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    want = re.sub(r"[-_.]+", "-", dist).lower()
    for dep in deps:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)", dep)
        if m and re.sub(r"[-_.]+", "-", m.group(1)).lower() == want:
            return "".join(m.group(2).split(";")[0].split())
    raise AssertionError(f"{dist} is not a dependency in pyproject.toml")


def fake_version(monkeypatch: pytest.MonkeyPatch, dist: str, version: str | None) -> None:
    """Make ``importlib.metadata.version(dist)`` report ``version`` (None: not installed);
    other distributions keep their real versions."""
    real = metadata.version

    def version_of(name: str) -> str:
        if re.sub(r"[-_.]+", "-", name).lower() == re.sub(r"[-_.]+", "-", dist).lower():
            if version is None:
                raise metadata.PackageNotFoundError(name)
            return version
        return real(name)

    monkeypatch.setattr(metadata, "version", version_of)


def fingerprint_failure(module: str, expected: dict[str, str], found: dict[str, str], version: str | None) -> str:
    """The message of a fingerprint mismatch: what changed and what to do."""
    changed = sorted(k for k in expected if expected[k] != found.get(k))
    return (
        f"upstream code used by {module} changed (installed version {version}): {changed}. Review the change "
        f"against {module} (copied / wrapped / relied-on code and private attributes), adapt it, then record the "
        f"new sha256 in its UPSTREAM_SHA256 and, for a new release, widen TESTED and the pyproject.toml bound "
        f"(docs/architecture.md, Taking an upgrade)."
    )


def takes_private_path(compat: ModuleType) -> bool:
    """Whether a compat module's start-up check lets bwp use the library's internals: True, or the
    version string (faust, aiokafka); False or a :class:`ConfigError` refusal mean it does not."""
    try:
        ok = compat.check_version()
    except ConfigError:
        return False
    return ok is True or isinstance(ok, str)


def assert_reviewed(compat: ModuleType, module: str) -> None:
    """A compat module's fingerprint check. Its reviewed ranges tile ``TESTED``. Inside
    ``TESTED`` the installed upstream code must be the code recorded for the range that holds
    the version (a mismatch is a failure that says what changed); outside, the module must not
    use the internals at all (its fallback or refusal), which is not a failure: that release
    awaits review (``make upgrade-check`` lists what changed)."""
    assert covering_range(compat.UPSTREAM_SHA256) == compat.TESTED
    version = installed_version(compat.DIST)
    if is_tested(version, compat.TESTED):
        expected = reviewed_fingerprints(compat.UPSTREAM_SHA256, version)
        assert expected is not None
        found = compat.fingerprints()
        assert found == expected, fingerprint_failure(module, expected, found, version)
    else:
        assert not takes_private_path(compat), f"{compat.DIST} {version} is outside TESTED but its internals are used"
