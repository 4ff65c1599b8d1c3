"""aiokafka internals the worker relies on, in one place.

Written against aiokafka 0.14.0; ``AIOKafkaConsumer._fetch_max_wait_ms`` is set in
``__init__`` and read by ``start()`` (handed to the ``Fetcher``) in the same way at every
upstream tag from v0.10.0 to v0.14.0, which is :data:`TESTED` (``pyproject.toml`` pins the
same range).

Private thing used, and why the public API is not enough:

* ``AIOKafkaConsumer._fetch_max_wait_ms`` is written on a consumer that is built but not
  started yet (:func:`set_fetch_max_wait_ms`); ``start()`` hands it to the consumer's
  ``Fetcher``. The public way is the ``fetch_max_wait_ms`` constructor argument, but Faust
  builds the worker's consumer itself, with a hard-coded 1500 ms. The hook that calls this
  function wraps a private method of Faust, so it lives in
  :mod:`stream.pipeline._faust_compat` (:func:`~stream.pipeline._faust_compat._patch_fetch_wait`):
  each library's private use is in that library's module.

:func:`check_version` (called when the patch is installed, i.e. when the worker's app is
built) refuses any other aiokafka release with a :class:`~stream.core.errors.ConfigError`:
falling back to Faust's 1500 ms would quietly turn the broker's fetch wait into end-to-end
latency (docs/pipeline.md, Performance). ``UPSTREAM_SHA256`` fingerprints the upstream code
(tests/stream/pipeline/test_aiokafka_compat.py).
"""

from __future__ import annotations

from typing import Any

from stream.core.compat import (
    Range,
    Release,
    require_tested,
    spec,
    upstream_fingerprints,
)
from stream.core.errors import ConfigError

DIST = "aiokafka"
WRITTEN_FOR = "aiokafka 0.14.0"
#: Releases reviewed and tested: [lowest, first untested).
TESTED: tuple[Release, Release] = ((0, 10), (0, 15))

#: sha256 of the upstream source that sets (``__init__``) and reads (``start``) the attribute.
UPSTREAM_SHA256: dict[Range, dict[str, str]] = {
    TESTED: {
        "aiokafka.consumer.consumer:AIOKafkaConsumer.__init__":
            "01506f316191f7c99c785bec915756d1560029a6fad75cba6f4da71e343a8163",
        "aiokafka.consumer.consumer:AIOKafkaConsumer.start":
            "2f1ba70443327538800d348e61042cdedd5a5e6306f40ebe1a06dddba7494c45",
    },
}  # fmt: skip
FETCH_WAIT_ATTR = "_fetch_max_wait_ms"


def check_version() -> str:
    """The installed aiokafka version; :class:`ConfigError` when it is not in :data:`TESTED`."""
    return require_tested(
        "aiokafka", DIST, TESTED, "stream/pipeline/_aiokafka_compat.py", WRITTEN_FOR,
        "sets the private AIOKafkaConsumer._fetch_max_wait_ms of the consumer Faust builds",
    )  # fmt: skip


def fingerprints() -> dict[str, str]:
    """sha256 of the installed upstream source of every function :data:`UPSTREAM_SHA256` records."""
    return upstream_fingerprints(UPSTREAM_SHA256)


def set_fetch_max_wait_ms(consumer: Any, wait_ms: int) -> None:
    """Make ``consumer`` (an ``AIOKafkaConsumer`` not started yet) let the broker hold a
    fetch for at most ``wait_ms`` when no data is there."""
    # Checked, not assumed: writing a renamed attribute would silently change nothing.
    if not hasattr(consumer, FETCH_WAIT_ATTR):
        raise ConfigError(
            f"aiokafka: {type(consumer).__name__} has no {FETCH_WAIT_ATTR} attribute, so bwp cannot set "
            f"fetch_max_wait_ms; review stream/pipeline/_aiokafka_compat.py (tested: {DIST}{spec(TESTED)})"
        )
    setattr(consumer, FETCH_WAIT_ATTR, wait_ms)  # read by AIOKafkaConsumer.start() for its Fetcher
