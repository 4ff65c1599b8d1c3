"""requirements.lock: every dependency pinned with hashes, inside pyproject.toml's ranges, and the
compat libraries inside the ranges their compatibility modules were reviewed for."""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from stream.core.compat import is_tested
from stream.ops.compat_report import COMPAT_MODULES
from tests.helpers import REPO

LOCK = REPO / "requirements.lock"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every pin in the lock."""
    out: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text()):
        m = re.match(r"([A-Za-z0-9._-]+)==([^\s\\;]+)", block)
        if m:
            out[_norm(m.group(1))] = (m.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return out


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(d) for d in project["dependencies"] + extras["test"] + extras["lint"]]


def test_every_dependency_is_pinned_inside_its_pyproject_range():
    locked = _locked()
    for req in _requirements():
        assert _norm(req.name) in locked, f"{req.name} is in pyproject.toml but not in requirements.lock: make lock"
        version = locked[_norm(req.name)][0]
        assert req.specifier.contains(Version(version), prereleases=True), (
            f"requirements.lock pins {req.name}=={version}, outside pyproject.toml's {req.specifier}: make lock"
        )


def test_every_pin_has_hashes():
    locked = _locked()
    assert len(locked) > 50  # transitive dependencies included (tensorflow alone brings dozens)
    for name, (_, hashes) in locked.items():
        assert hashes, f"{name} has no --hash in requirements.lock"


@pytest.mark.parametrize("module", COMPAT_MODULES)
def test_the_lock_pins_a_reviewed_release_of_each_compat_library(module):
    import importlib

    compat = importlib.import_module(module)
    version = _locked()[_norm(compat.DIST)][0]
    assert is_tested(version, compat.TESTED), (
        f"requirements.lock pins {compat.DIST}=={version}, outside {module}.TESTED"
    )


@pytest.mark.skipif(os.environ.get("BWP_UPGRADE_CHECK") == "1", reason="make upgrade-check installs newer releases")
def test_the_installed_packages_are_the_locked_ones():
    differ = {}
    for name, (version, _) in _locked().items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            found = None
        if found is None or Version(found) != Version(version):
            differ[name] = (version, found)
    assert not differ, f"installed != requirements.lock (locked, installed): {differ}; run make install"
