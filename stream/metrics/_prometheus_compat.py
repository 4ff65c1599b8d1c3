"""prometheus-client internals the worker's metrics rely on, in one place.

Written against prometheus_client 0.26.0; ``Histogram._metric_init`` and
``Histogram.observe`` are byte-identical at the upstream tags v0.17.0 and v0.19.0 to
v0.25.0 and in 0.26.0. :data:`TESTED` is the range reviewed and run (``pyproject.toml``
pins the same range).

Private things used, and why the public API is not enough:

* ``Histogram._upper_bounds`` (the bucket bounds, +Inf last), ``Histogram._buckets`` (one
  counter value per bucket, not cumulative) and ``Histogram._sum``, by :func:`observe_many`.
  The public API observes one value per ``observe()`` call (a lock and a bucket scan
  each); the worker observes thousands of values per micro-batch (latency, live errors),
  and one call each cost more than computing the values. There is no public bulk update.

Fallback: :func:`check_version` (called when the worker's metrics are created, and by the
first :func:`observe_many` otherwise) decides once per process. On an untested release,
or when a probe histogram does not behave as expected, it logs a warning and
:func:`observe_many` becomes a loop of the public ``observe()``: the same buckets, sum and
count, only slower. ``UPSTREAM_SHA256`` fingerprints the upstream code
(tests/stream/metrics/test_prometheus_compat.py).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from stream.core.compat import (
    Range,
    Release,
    installed_version,
    is_tested,
    untested_message,
    upstream_fingerprints,
)

log = logging.getLogger(__name__)

DIST = "prometheus-client"
WRITTEN_FOR = "prometheus_client 0.26.0"
#: Releases reviewed and tested: [lowest, first untested).
TESTED: tuple[Release, Release] = ((0, 20), (0, 27))

#: sha256 of the upstream source that creates (``_metric_init``) and updates (``observe``)
#: the private bucket counters.
UPSTREAM_SHA256: dict[Range, dict[str, str]] = {
    TESTED: {
        "prometheus_client.metrics:Histogram._metric_init":
            "61aeac1b768d4786bed708a86af53b14af8c549ed208ad348c96083ce97e38bc",
        "prometheus_client.metrics:Histogram.observe":
            "38beca3be1d1595b61a274180f55537000e15133ead54fa07e303a86d9ceca39",
    },
}  # fmt: skip
HISTOGRAM_ATTRS = ("_upper_bounds", "_buckets", "_sum")

# None until check_version() has run; then whether observe_many uses the bucket counters.
_fast: bool | None = None


def check_version() -> bool:
    """Decide (again) whether :func:`observe_many` may use the private bucket counters:
    True for a tested release whose probe histogram behaves; else log a warning and use the
    public ``observe()`` loop."""
    global _fast
    version = installed_version(DIST)
    if not is_tested(version, TESTED):
        log.warning(
            "%s Until then bwp observes each value with the public Histogram.observe() (slower).",
            untested_message("prometheus-client", DIST, version, TESTED, "stream/metrics/_prometheus_compat.py",
                             WRITTEN_FOR, "updates Histogram._buckets/_sum in bulk"),
        )  # fmt: skip
        _fast = False
        return _fast
    _fast = _probe_ok()
    if not _fast:
        log.warning(
            "prometheus-client %s: a probe histogram's private bucket counters do not behave as in %s; "
            "bwp observes each value with the public Histogram.observe() (slower). "
            "Review stream/metrics/_prometheus_compat.py.", version, WRITTEN_FOR,
        )  # fmt: skip
    return _fast


def _probe_ok() -> bool:
    """Bulk-update a throw-away histogram and compare what the public ``collect()`` reports."""
    from prometheus_client import CollectorRegistry, Histogram  # prometheus-client: only where metrics are made

    try:
        h = Histogram("bwp_compat_probe", "probe", buckets=(1.0, 2.0), registry=CollectorRegistry())
        _observe_fast(h, np.array([0.5, 1.0, 1.5, 3.0, math.nan]))
        samples = {(s.name, s.labels.get("le")): s.value for s in next(iter(h.collect())).samples}
    except Exception:  # any surprise means: do not use the private path
        log.debug("prometheus-client probe failed", exc_info=True)
        return False
    expected = {
        ("bwp_compat_probe_bucket", "1.0"): 2.0, ("bwp_compat_probe_bucket", "2.0"): 3.0,
        ("bwp_compat_probe_bucket", "+Inf"): 4.0, ("bwp_compat_probe_count", None): 4.0,
    }  # fmt: skip
    return all(samples.get(k) == v for k, v in expected.items()) and math.isnan(
        samples.get(("bwp_compat_probe_sum", None), 0.0)
    )


def fingerprints() -> dict[str, str]:
    """sha256 of the installed upstream source of every function :data:`UPSTREAM_SHA256` records."""
    return upstream_fingerprints(UPSTREAM_SHA256)


def observe_many(child: Any, values: Any) -> None:
    """``child.observe(v)`` for every ``v`` of ``values``, in a few numpy operations.

    ``child`` is a labelled (or label-less) ``Histogram``. Same buckets (a value lands in
    the first bucket whose bound is >= it; NaN in none), same sum and count as a loop of
    ``observe`` (a test compares them). Uses the client's private bucket counters when
    :func:`check_version` allowed it, else that loop.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if not v.size:
        return
    if _fast is None:
        check_version()
    if _fast:
        _observe_fast(child, v)
    else:
        observe = child.observe
        for x in v.tolist():
            observe(x)


def _observe_fast(child: Any, v: np.ndarray) -> None:
    """The bulk update on ``child``'s ``_upper_bounds`` / ``_buckets`` / ``_sum`` (``v``: 1-D float64)."""
    bounds = child._upper_bounds  # private: see the module docstring
    idx = np.searchsorted(np.asarray(bounds, dtype=np.float64), v, side="left")  # NaN -> len: no bucket
    counts = np.bincount(idx, minlength=len(bounds) + 1)[: len(bounds)]
    buckets = child._buckets
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))
    with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf is NaN, silently, as in the loop
        total = float(v.sum())
    child._sum.inc(total)
