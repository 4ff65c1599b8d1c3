"""Garbage-collector pauses in the worker: freeze the start-up heap, time every collection.

TensorFlow, Keras, Faust and the loaded model leave about 400,000 long-lived Python
objects in a worker. CPython's full (generation 2) collection walks all of them with the
GIL held: 200 to 270 ms on the 2-core reference machine, during which no thread of the
worker runs (fetch, Redis, model, produce). Left alone, it ran twice in a 30 s
``bwp bench pipeline --rate 5000`` and put 1 to 2 % of the states 100 to 250 ms late,
which is the p99 (docs/pipeline.md, Performance).

:meth:`HeapGuard.freeze` moves everything alive after start-up into the permanent
generation (``gc.freeze()``), which collections skip; what the pipeline allocates per
record is short-lived and stays cheap to collect. Frozen objects are never collected as
cyclic garbage, so after a model swap :meth:`HeapGuard.refreeze` unfreezes, runs one
full collection (the old model goes) and freezes again: one pause per reload, counted
in ``bwp_gc_pause_seconds`` like every other.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from prometheus_client import Histogram

log = logging.getLogger("bwp.heap")


class HeapGuard:
    """Times every collection into ``pauses`` (a Histogram labelled by ``generation``) and,
    when ``enabled`` (``BWP_GC_FREEZE``), freezes the heap on request; disabled,
    :meth:`freeze` and :meth:`refreeze` do nothing and return 0. :meth:`close` removes
    the callback."""

    def __init__(self, pauses: Histogram, enabled: bool = True) -> None:
        self.enabled = enabled
        self._children = [pauses.labels(str(g)) for g in range(3)]
        self._started: float | None = None
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector, in whichever thread triggered it: no allocation-heavy work.
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self._children[info["generation"]].observe(time.perf_counter() - self._started)
            self._started = None

    def freeze(self) -> int:
        """Collect once, then move every surviving object to the permanent generation.
        Returns the number of frozen objects."""
        if not self.enabled:
            return 0
        gc.collect()
        gc.freeze()
        n = gc.get_freeze_count()
        log.info("heap frozen: %d objects are skipped by the garbage collector from now on", n)
        return n

    def refreeze(self) -> int:
        """After a model swap: let the collector see the frozen heap again (the old model is
        in it), collect it, freeze what is left. One full-collection pause."""
        if not self.enabled:
            return 0
        t0 = time.perf_counter()
        gc.unfreeze()
        n = self.freeze()
        log.warning("heap re-frozen after a model swap: %d objects, %.0f ms", n, 1000 * (time.perf_counter() - t0))
        return n

    def close(self) -> None:
        """Stop timing collections."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
