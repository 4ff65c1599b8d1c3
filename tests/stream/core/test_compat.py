"""stream/core/compat.py: release parsing and tested-range checks shared by the compat modules."""

from __future__ import annotations

import pytest

from stream.core import compat
from stream.core.errors import ConfigError
from tests.helpers.compat import fake_version


@pytest.mark.parametrize(
    "version, release",
    [("0.15.3", (0, 15, 3)), ("9.1.2.post2", (9, 1, 2)), ("0.16.0rc1", (0, 16, 0)), ("v8.1.0", (8, 1, 0)),
     ("1.0+local", (1, 0)), ("dev", ())],
)  # fmt: skip
def test_release(version, release):
    assert compat.release(version) == release


@pytest.mark.parametrize(
    "version, ok",
    [("0.15.2", True), ("0.15.3", True), ("0.15.99", True), ("0.15.1", False), ("0.16", False),
     ("0.16.0rc1", False), ("dev", False), (None, False)],
)  # fmt: skip
def test_is_tested_is_half_open(version, ok):
    assert compat.is_tested(version, ((0, 15, 2), (0, 16))) is ok


def test_spec():
    assert compat.spec(((0, 15, 2), (0, 16))) == ">=0.15.2,<0.16"
    assert compat.spec(((5, 3), (9,))) == ">=5.3,<9"


def test_require_tested_names_library_versions_and_the_fix(monkeypatch):
    fake_version(monkeypatch, "faust-streaming", "0.17.1")
    with pytest.raises(ConfigError) as err:
        compat.require_tested("faust-streaming", "faust-streaming", ((0, 15, 2), (0, 16)), "m.py", "x 1", "does y")
    msg = str(err.value)
    for part in ("faust-streaming 0.17.1 is installed", ">=0.15.2,<0.16", "written against x 1", "does y",
                 "pip install 'faust-streaming>=0.15.2,<0.16'", "review m.py"):  # fmt: skip
        assert part in msg, part


def test_resolve_and_source_sha256():
    obj = compat.resolve("stream.core.compat:spec")
    assert obj is compat.spec and len(compat.source_sha256(obj)) == 64


def test_reviewed_ranges_pick_the_fingerprints_of_the_version():
    table = {((8, 1), (8, 2)): {"f": "a"}, ((8, 2), (8, 3)): {"f": "b"}}
    assert compat.reviewed_fingerprints(table, "8.1.4") == {"f": "a"}
    assert compat.reviewed_fingerprints(table, "8.2.0") == {"f": "b"}
    assert compat.reviewed_fingerprints(table, "8.3.0") is None and compat.reviewed_fingerprints(table, None) is None
    assert compat.newest_fingerprints(table) == (((8, 2), (8, 3)), {"f": "b"})
    assert compat.covering_range(table) == ((8, 1), (8, 3))
    with pytest.raises(ValueError, match="touch"):
        compat.covering_range({((8, 1), (8, 2)): {}, ((8, 3), (8, 4)): {}})
